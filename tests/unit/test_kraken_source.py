"""The Kraken source against a local fake of its API: mapping, pair names, errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from cryptostream import clocks
from cryptostream.config import Config
from cryptostream.metrics import Metrics
from cryptostream.source.failover import FailoverSource
from cryptostream.source.kraken import KrakenSource, pair_alias
from cryptostream.tick import Tick
from tests.conftest import ConfigFactory, wait_until
from tests.support.fake_coincap import Fault
from tests.support.fake_kraken import RATE_LIMITED, UNAVAILABLE, FakeKraken


@pytest.fixture
async def fake_kraken() -> AsyncIterator[FakeKraken]:
    async with FakeKraken() as fake:
        yield fake


@pytest.fixture
def kraken_config(make_config: ConfigFactory, fake_kraken: FakeKraken) -> Callable[..., Config]:
    def build(**env: str) -> Config:
        return make_config(
            env={
                "CRYPTOSTREAM_SOURCE__NAME": "kraken",
                "CRYPTOSTREAM_KRAKEN__BASE_URL": fake_kraken.base_url,
                "CRYPTOSTREAM_KRAKEN__TIMEOUT": "2",
                "CRYPTOSTREAM_KRAKEN__MAX_BACKOFF": "0.2",
                **{f"CRYPTOSTREAM_KRAKEN__{k.upper()}": v for k, v in env.items()},
            }
        )

    return build


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name + "_total", labels) or 0.0


async def test_ticker_fields_map_exactly_and_change_stays_empty(
    kraken_config: Callable[..., Config], fake_kraken: FakeKraken
) -> None:
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        source = KrakenSource(kraken_config(), session, metrics)
        before = time.time()
        ticks = await source.poll_once()
        after = time.time()
    assert source.unpriced == ("binance-coin",)  # no BNB market on Kraken
    assert [t.id for t in ticks] == ["bitcoin", "ethereum", "tether", "xrp", "solana"]
    btc = ticks[0]
    assert btc.price_usd == "86466.90000"  # c[0], the last trade, exact text
    assert btc.vwap_24h == "88298.54321"  # p[1], the last 24 hours (not p[0], today)
    assert btc.change_percent_24h is None  # Kraken has no 24 h change: left empty
    assert (btc.symbol, btc.name, btc.source) == ("BTC", "Bitcoin", "kraken")
    assert before <= btc.timestamp <= after  # no time in the ticker: arrival time
    assert fake_kraken.requests[-1].query["pair"] == "XXBTZUSD,XETHZUSD,USDTZUSD,XXRPZUSD,SOLUSD"
    assert source.health.healthy
    assert counter(metrics, "cryptostream_source_requests", source="kraken", outcome="200") == 1


def test_pair_spellings_meet() -> None:
    assert pair_alias("XXBTZUSD") == pair_alias("XBTUSD") == pair_alias("BTCUSD") == "BTCUSD"
    assert pair_alias("USDTZUSD") == pair_alias("USDTUSD") == "USDTUSD"
    assert pair_alias("XETHZUSD") == pair_alias("ethusd") == "ETHUSD"
    assert pair_alias("SOLUSD") == "SOLUSD"


async def test_altnames_in_the_mapping_match_kraken_canonical_answers(
    kraken_config: Callable[..., Config],
) -> None:
    config = kraken_config(pairs="bitcoin=XBTUSD,ethereum=ETHUSD,xrp=XRPUSD")
    async with aiohttp.ClientSession() as session:
        ticks = await KrakenSource(config, session, Metrics()).poll_once()
    assert {t.id: t.price_usd for t in ticks} == {
        "bitcoin": "86466.90000",
        "ethereum": "2141.17000",
        "xrp": "2.43010000",
    }


async def test_rate_limit_and_service_errors_in_the_body_are_retried(
    kraken_config: Callable[..., Config], fake_kraken: FakeKraken
) -> None:
    fake_kraken.inject(Fault.body(RATE_LIMITED), Fault.body(UNAVAILABLE), Fault.status(520))
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        source = KrakenSource(kraken_config(), session, metrics)
        assert len(await source.poll_once()) == 5
    assert [r.status for r in fake_kraken.requests] == [200, 200, 520, 200]
    assert fake_kraken.steps == 1, "the faulted answers moved no market"
    assert source.health.healthy


async def test_unknown_pair_fails_the_request_and_says_which_key_to_check(
    kraken_config: Callable[..., Config], fake_kraken: FakeKraken
) -> None:
    config = kraken_config(pairs="bitcoin=XXBTZUSD,ethereum=NOPEUSD", retry_deadline="0.5")
    async with aiohttp.ClientSession() as session:
        source = KrakenSource(config, session, Metrics())
        assert await source.poll_once() == []
    assert "EQuery:Unknown asset pair" in source.health.last_error
    assert "check kraken.pairs" in source.health.last_error
    calls = fake_kraken.requests
    assert len(calls) >= 2
    for earlier, later in itertools.pairwise(calls):
        assert later.monotonic - earlier.monotonic >= 0.19, "retried slowly"


async def test_bad_records_are_skipped_and_counted(
    kraken_config: Callable[..., Config], fake_kraken: FakeKraken
) -> None:
    record = {"c": ["5.5", "1"], "p": ["5.4", "5.3"]}
    body = {
        "error": [],
        "result": {
            "XXBTZUSD": record,
            "XETHZUSD": {**record, "c": ["Infinity", "1"]},
            "USDTZUSD": {**record, "c": []},
            "XXRPZUSD": {**record, "p": ["1", "abc"]},
            "SOLUSD": "nope",
            "XLTCZUSD": record,
        },
    }
    fake_kraken.inject(Fault.body(json.dumps(body)))
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        ticks = await KrakenSource(kraken_config(), session, metrics).poll_once()
    assert [(t.id, t.price_usd, t.vwap_24h) for t in ticks] == [("bitcoin", "5.5", "5.3")]
    for reason, n in [
        ("non_finite_price", 1),
        ("missing_price", 1),
        ("non_numeric_vwap", 1),
        ("not_an_object", 1),
        ("unexpected_asset", 1),
    ]:
        assert counter(metrics, "cryptostream_ticks_invalid", reason=reason) == n, reason


async def test_after_a_clock_step_back_kraken_prices_go_on_through_the_failover(
    kraken_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kraken's answers carry no time: ticks are stamped with this machine's clock.
    After it steps back an hour, the failover's repeat filter took every new tick for
    a repeat of an older one, for the whole hour; now the prices go on, with the
    corrected time, and nothing counts as repeated."""
    offset = [0.0]
    monkeypatch.setattr(clocks, "wall", clocks.StepWatch(lambda: time.time() + offset[0]))
    metrics = Metrics()
    out: list[Tick] = []
    async with aiohttp.ClientSession() as session:
        config = kraken_config()
        failover = FailoverSource([KrakenSource(config, session, metrics)], 5.0, metrics)
        task = asyncio.create_task(failover.run(out.extend))
        try:
            await wait_until(lambda: len(out) >= 10, what="two polls")
            offset[0] = -3600.0
            stepped = len(out)
            await wait_until(lambda: len(out) >= stepped + 10, timeout=10, what="polls after")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    for tick in out[stepped:]:
        assert abs(tick.timestamp - (time.time() - 3600)) < 30
    assert counter(metrics, "cryptostream_ticks_repeated", source="kraken") == 0
