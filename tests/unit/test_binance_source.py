"""The Binance source against a local fake of its API: mapping, weights, 429/418."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from cryptostream.config import Config
from cryptostream.metrics import Metrics
from cryptostream.source.binance import BinanceSource, request_weight
from tests.conftest import ConfigFactory
from tests.support.fake_binance import WEIGHT_HEADER, FakeBinance
from tests.support.fake_coincap import Fault

CLOSE_MS = 1741381815467


class VirtualClock:
    """Wall time that starts where the test says and runs at real speed."""

    def __init__(self, start: float) -> None:
        self._offset = start - time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() + self._offset

    def ms(self) -> int:
        return int(self() * 1000)


def near_minute_end(seconds_left: float) -> VirtualClock:
    minute = (int(time.time()) // 60 + 10) * 60
    return VirtualClock(minute - seconds_left)


@pytest.fixture
async def fake_binance() -> AsyncIterator[FakeBinance]:
    async with FakeBinance() as fake:
        yield fake


@pytest.fixture
def binance_config(make_config: ConfigFactory, fake_binance: FakeBinance) -> Callable[..., Config]:
    def build(**env: str) -> Config:
        return make_config(
            env={
                "CRYPTOSTREAM_SOURCE__NAME": "binance",
                "CRYPTOSTREAM_BINANCE__BASE_URL": fake_binance.base_url,
                "CRYPTOSTREAM_BINANCE__TIMEOUT": "2",
                "CRYPTOSTREAM_BINANCE__MAX_BACKOFF": "0.2",
                **{f"CRYPTOSTREAM_BINANCE__{k.upper()}": v for k, v in env.items()},
            }
        )

    return build


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name + "_total", labels) or 0.0


async def test_ticker_fields_map_exactly(
    binance_config: Callable[..., Config], fake_binance: FakeBinance
) -> None:
    fake_binance.clock = lambda: CLOSE_MS
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        source = BinanceSource(binance_config(), session, metrics)
        ticks = await source.poll_once()
    assert source.unpriced == ("tether",)  # Binance has no tether/USD market
    assert [t.id for t in ticks] == ["bitcoin", "ethereum", "xrp", "binance-coin", "solana"]
    btc = ticks[0]
    assert btc.price_usd == "86466.98000000"  # exact text, never a float
    assert btc.change_percent_24h == "-2.728"
    assert btc.vwap_24h == "88301.41236512"
    assert btc.timestamp == CLOSE_MS / 1000  # the statistics' closeTime
    assert (btc.symbol, btc.name, btc.source) == ("BTC", "Bitcoin", "binance")
    assert btc.first_value is None
    request = fake_binance.requests[-1]
    assert request.path == "/api/v3/ticker/24hr"
    assert request.query["symbols"] == '["BTCUSDT","ETHUSDT","XRPUSDT","BNBUSDT","SOLUSDT"]'
    assert source.health.healthy
    assert counter(metrics, "cryptostream_source_requests", source="binance", outcome="200") == 1


def test_request_weight_follows_binances_table() -> None:
    assert [request_weight(n) for n in (1, 20, 21, 100, 101)] == [2, 2, 40, 40, 80]


async def test_weight_budget_waits_for_the_next_minute(
    binance_config: Callable[..., Config], fake_binance: FakeBinance
) -> None:
    clock = near_minute_end(seconds_left=1.0)
    fake_binance.clock = clock.ms
    fake_binance.set_used_weight(7)  # other programs on this IP used 7 this minute
    async with aiohttp.ClientSession() as session:
        source = BinanceSource(binance_config(max_weight="10"), session, Metrics(), clock=clock)
        assert len(await source.poll_once()) == 5  # used 9 of 10
        first_minute = clock() // 60
        assert len(await source.poll_once()) == 5  # 9 + 2 > 10: waits for the next minute
    first, second = fake_binance.requests_to("/api/v3")
    assert first.status == second.status == 200
    assert second.monotonic - first.monotonic >= 0.9, "the second request waited"
    assert clock() // 60 == first_minute + 1
    assert fake_binance.used_weight == 2, "the new minute started from zero"


async def test_429_retry_after_is_honoured_so_no_ban_follows(
    binance_config: Callable[..., Config], fake_binance: FakeBinance
) -> None:
    clock = near_minute_end(seconds_left=1.2)
    fake_binance.clock = clock.ms
    fake_binance.weight_limit = 3  # the second request of the minute is over the limit
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        source = BinanceSource(binance_config(), session, metrics, clock=clock)
        assert len(await source.poll_once()) == 5
        assert len(await source.poll_once()) == 5  # a 429 on the way, then success
    calls = fake_binance.requests_to("/api/v3")
    assert [c.status for c in calls] == [200, 429, 200], "never a 418"
    retry_after = 2  # the fake's Retry-After: whole seconds to the next minute
    assert calls[2].monotonic - calls[1].monotonic >= retry_after - 0.05
    assert counter(metrics, "cryptostream_source_requests", source="binance", outcome="429") == 1


async def test_418_ban_is_waited_out_even_across_polls(
    binance_config: Callable[..., Config], fake_binance: FakeBinance
) -> None:
    ban = json.dumps({"code": -1003, "msg": "Way too much request weight used; IP banned"})
    fake_binance.inject(Fault.status(418, body=ban, headers={"Retry-After": "1"}, times=2))
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        # The poll retries once after the ban's 1 s, is banned again and gives up
        # (retry_deadline 0.3 s); the next poll must still wait the second ban out.
        source = BinanceSource(binance_config(retry_deadline="0.3"), session, metrics)
        assert await source.poll_once() == []
        assert not source.health.healthy
        assert "418" in source.health.last_error
        assert len(await source.poll_once()) == 5
    first, second, after = fake_binance.requests_to("/api/v3")
    assert (first.status, second.status, after.status) == (418, 418, 200)
    assert second.monotonic - first.monotonic >= 0.95
    assert after.monotonic - second.monotonic >= 0.95, "the ban held across polls"
    assert counter(metrics, "cryptostream_source_requests", source="binance", outcome="418") == 2
    assert source.health.healthy


async def test_bad_records_are_skipped_and_counted_good_ones_kept(
    binance_config: Callable[..., Config], fake_binance: FakeBinance
) -> None:
    good = {
        "symbol": "BTCUSDT",
        "lastPrice": "7.25",
        "priceChangePercent": "-1.5",
        "weightedAvgPrice": "7.3",
        "closeTime": CLOSE_MS,
    }
    fake_binance.inject(
        Fault.body(
            json.dumps(
                [
                    good,
                    {**good, "symbol": "ETHUSDT", "lastPrice": "NaN"},
                    {**good, "symbol": "XRPUSDT", "lastPrice": None},
                    {**good, "symbol": "SOLUSDT", "weightedAvgPrice": "-3"},
                    {**good, "symbol": "DOGEUSDT"},
                    "not an object",
                ]
            ),
            headers={WEIGHT_HEADER: "2"},
        )
    )
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        ticks = await BinanceSource(binance_config(), session, metrics).poll_once()
    assert [(t.id, t.price_usd) for t in ticks] == [("bitcoin", "7.25")]
    for reason, n in [
        ("non_finite_price", 1),
        ("missing_price", 1),
        ("negative_vwap", 1),
        ("unexpected_asset", 2),
    ]:
        assert counter(metrics, "cryptostream_ticks_invalid", reason=reason) == n, reason


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(502, body="<html>bad gateway</html>", content_type="text/html"),
        Fault.body("<html>captive portal</html>", content_type="text/html"),
        Fault.body('[{"symbol": "BTCUSDT", "lastPr'),
        Fault.body('{"code": 0}'),
        Fault.disconnect(times=2),
    ],
    ids=["502-html", "200-html", "truncated", "not-a-ticker", "disconnect"],
)
async def test_transient_faults_are_retried(
    binance_config: Callable[..., Config], fake_binance: FakeBinance, fault: Fault
) -> None:
    fake_binance.inject(fault)
    async with aiohttp.ClientSession() as session:
        source = BinanceSource(binance_config(), session, Metrics())
        assert len(await source.poll_once()) == 5
    assert source.health.healthy


async def test_unknown_symbol_is_a_clear_client_error(
    binance_config: Callable[..., Config], fake_binance: FakeBinance
) -> None:
    config = binance_config(symbols="bitcoin=BTCUSDT,ethereum=NOPEUSDT", retry_deadline="0.5")
    async with aiohttp.ClientSession() as session:
        source = BinanceSource(config, session, Metrics())
        assert await source.poll_once() == []
    assert "Invalid symbol" in source.health.last_error
    assert "check binance.symbols" in source.health.last_error
    calls = fake_binance.requests_to("/api/v3")
    assert all(c.status == 400 for c in calls)
    # A configuration error is retried every max_backoff (0.2 s), not in a tight loop.
    for earlier, later in itertools.pairwise(calls):
        assert later.monotonic - earlier.monotonic >= 0.19


class SteppingClock(VirtualClock):
    """A :class:`VirtualClock` the test can step back, as NTP or a restored VM does."""

    def step(self, seconds: float) -> None:
        self._offset += seconds


async def test_a_ban_is_waited_out_on_the_monotonic_clock_when_the_wall_clock_steps_back(
    binance_config: Callable[..., Config], fake_binance: FakeBinance
) -> None:
    """A 418 asks for 1 s of silence; then this machine's clock steps back an hour.
    The wait stays 1 s (before: the ban was a wall-clock time, an hour away again)."""
    ban = json.dumps({"code": -1003, "msg": "Way too much request weight used; IP banned"})
    fake_binance.inject(Fault.status(418, body=ban, headers={"Retry-After": "1"}, times=2))
    clock = SteppingClock(time.time())
    async with aiohttp.ClientSession() as session:
        source = BinanceSource(
            binance_config(retry_deadline="0.3"), session, Metrics(), clock=clock
        )
        assert await source.poll_once() == []  # banned twice; the retry deadline ends it
        clock.step(-3600)
        async with asyncio.timeout(10):
            assert len(await source.poll_once()) == 5
    _, banned, after = fake_binance.requests_to("/api/v3")
    assert (banned.status, after.status) == (418, 200)
    assert 0.95 <= after.monotonic - banned.monotonic < 5
