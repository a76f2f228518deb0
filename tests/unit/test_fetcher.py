"""The fetcher against a real HTTP server (the fake CoinCap), faults included."""

from __future__ import annotations

import aiohttp
import pytest

from cryptostream.config import Config
from cryptostream.fetcher import Fetcher
from cryptostream.metrics import Metrics
from cryptostream.queue import TickQueue
from cryptostream.source.coincap import CoinCapSource
from cryptostream.source.http import parse_retry_after
from tests.conftest import API_KEY, ConfigFactory
from tests.support.fake_coincap import FakeCoinCap, Fault


class Rig:
    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.metrics = Metrics()
        self.queue = TickQueue(1000, self.metrics)
        self.source = CoinCapSource(config, session, self.metrics)
        self.fetcher = Fetcher(self.source, self.queue, self.metrics)

    async def poll_once(self) -> int:
        ticks = await self.source.poll_once()
        self.fetcher.emit(ticks)
        return len(ticks)

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name + "_total", labels or None)
        return value or 0.0


@pytest.fixture
async def rig(make_config: ConfigFactory, fake_coincap: FakeCoinCap):
    config = make_config(base_url=fake_coincap.base_url)
    async with aiohttp.ClientSession() as session:
        yield Rig(config, session)


async def test_one_poll_gives_a_tick_per_asset_with_bearer_key(
    rig: Rig, fake_coincap: FakeCoinCap
) -> None:
    fake_coincap.clock = lambda: 1741381815467
    assert await rig.poll_once() == 6
    ticks = await rig.queue.get_batch(100)
    assert {t.id for t in ticks} == {
        "bitcoin",
        "ethereum",
        "tether",
        "xrp",
        "binance-coin",
        "solana",
    }
    btc = next(t for t in ticks if t.id == "bitcoin")
    assert btc.price_usd == "86466.9872578656434844"  # exact digits from the fixture
    assert btc.timestamp == 1741381815.467  # event time = the response's timestamp
    assert btc.first_value is None  # decided after the queue (producer) and by the sink
    request = fake_coincap.requests[-1]
    assert request.header("Authorization") == f"Bearer {API_KEY}"
    assert "apiKey" not in request.query  # the key stays out of URLs


async def test_rate_limit_honours_retry_after(rig: Rig, fake_coincap: FakeCoinCap) -> None:
    fake_coincap.inject(Fault.status(429, headers={"Retry-After": "1"}))
    assert await rig.poll_once() == 6
    first, second = fake_coincap.requests_to("/v3/assets")[-2:]
    assert first.status == 429
    assert second.monotonic - first.monotonic >= 0.95
    assert rig.counter("cryptostream_api_requests", outcome="429") == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(500),
        Fault.status(503, body="<html>Bad gateway</html>", content_type="text/html"),
        Fault.body("<html>proxy login</html>", content_type="text/html"),
        Fault.body('{"data": [{"id": "bitc'),
        Fault.body(""),
        Fault.body('{"unexpected": true}'),
        Fault.disconnect(times=2),
    ],
    ids=["500", "503-html", "200-html", "truncated-json", "empty", "no-data", "disconnect"],
)
async def test_transient_faults_are_retried_and_nothing_is_lost(
    rig: Rig, fake_coincap: FakeCoinCap, fault: Fault
) -> None:
    fake_coincap.inject(fault)
    assert await rig.poll_once() == 6
    assert len(rig.queue) == 6


async def test_timeout_is_retried(make_config: ConfigFactory, fake_coincap: FakeCoinCap) -> None:
    config = make_config(
        base_url=fake_coincap.base_url, env={"CRYPTOSTREAM_COINCAP__TIMEOUT": "0.3"}
    )
    async with aiohttp.ClientSession() as session:
        rig = Rig(config, session)
        fake_coincap.inject(Fault.delay(2))
        assert await rig.poll_once() == 6
        assert rig.counter("cryptostream_api_requests", outcome="timeout") == 1


async def test_auth_failure_is_retried_slowly(rig: Rig, fake_coincap: FakeCoinCap) -> None:
    fake_coincap.inject(Fault.status(401, body='{"error": "Invalid API key"}', times=2))
    assert await rig.poll_once() == 6
    calls = fake_coincap.requests_to("/v3/assets")
    assert [c.status for c in calls[-3:]] == [401, 401, 200]
    # auth_retry_interval is 0.5 s in the test config: never hammered.
    assert calls[-2].monotonic - calls[-3].monotonic >= 0.45
    assert calls[-1].monotonic - calls[-2].monotonic >= 0.45


async def test_bad_records_are_skipped_counted_and_good_ones_kept(
    rig: Rig, fake_coincap: FakeCoinCap
) -> None:
    good = {
        "id": "bitcoin",
        "symbol": "BTC",
        "name": "Bitcoin",
        "priceUsd": "1.5",
        "changePercent24Hr": "-1",
        "vwap24Hr": None,
    }
    fake_coincap.inject(
        Fault.records(
            [
                good,
                {**good, "id": "ethereum", "priceUsd": "NaN"},
                {**good, "id": "tether", "priceUsd": "abc"},
                {**good, "id": "xrp", "priceUsd": "-5"},
                {**good, "id": None},
                {**good, "id": "solana", "priceUsd": None},
                {**good, "id": "binance-coin", "priceUsd": "Infinity"},
            ]
        )
    )
    assert await rig.poll_once() == 1
    ticks = await rig.queue.get_batch(10)
    assert [t.id for t in ticks] == ["bitcoin"]
    for reason, n in [
        ("non_finite_price", 2),
        ("non_numeric_price", 1),
        ("negative_price", 1),
        ("missing_id", 1),
        ("missing_price", 1),
    ]:
        assert rig.counter("cryptostream_ticks_invalid", reason=reason) == n, reason


def test_retry_after_forms() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("bogus") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("99999") == 600.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=0) == 10.0
