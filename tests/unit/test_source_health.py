"""Each real source reports its health per request, which is what failover reads."""

from __future__ import annotations

import aiohttp
import structlog

from cryptostream.metrics import Metrics
from cryptostream.source import make_source
from cryptostream.source.base import SourceHealth
from cryptostream.source.coincap import CoinCapSource
from cryptostream.source.failover import FailoverSource
from tests.conftest import ConfigFactory
from tests.support.fake_coincap import FakeCoinCap, Fault


def test_health_measures_a_failure_episode_from_its_first_failure() -> None:
    now = [100.0]
    health = SourceHealth(clock=lambda: now[0])
    assert not health.healthy and health.failing_for() == 0
    health.ok()
    assert health.healthy
    health.failed("503")
    now[0] = 105.0
    health.failed("timeout")  # still the same episode
    assert health.failing_for() == 5.0 and health.last_error == "timeout"
    health.ok()
    assert health.healthy and health.failing_for() == 0
    health.reset()
    assert not health.healthy


async def test_coincap_source_health_follows_each_request(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    config = make_config(
        base_url=fake_coincap.base_url, env={"CRYPTOSTREAM_COINCAP__RETRY_DEADLINE": "0.3"}
    )
    async with aiohttp.ClientSession() as session:
        source = CoinCapSource(config, session, Metrics())
        fake_coincap.inject(Fault.status(503, times=None))
        assert await source.poll_once() == []
        assert not source.health.healthy
        assert source.health.last_error.startswith("503")
        fake_coincap.clear_faults()
        assert len(await source.poll_once()) == 6
        assert source.health.healthy


async def test_make_source_builds_the_chain(make_config: ConfigFactory) -> None:
    config = make_config(
        env={"CRYPTOSTREAM_SOURCE__NAME": "auto", "CRYPTOSTREAM_SOURCE__FALLBACKS": "kraken"}
    )
    async with aiohttp.ClientSession() as session:
        source = make_source(config, session, Metrics())
    assert isinstance(source, FailoverSource)
    # The test config has COINCAP_API_KEY set: auto starts with CoinCap.
    assert source.names == ["coincap", "kraken"]
    assert source.name == "coincap>kraken"


async def test_an_implicit_fallback_that_prices_nothing_is_left_out_and_said_once(
    make_config: ConfigFactory,
) -> None:
    # With a key and auto: CoinCap prices bitcoin; the exchanges, mapped to another
    # coin only, price none of the assets, so auto leaves them out (said, counted).
    config = make_config(
        env={
            "CRYPTOSTREAM_SOURCE__NAME": "auto",
            "CRYPTOSTREAM_SOURCE__ASSETS": "bitcoin",
            "CRYPTOSTREAM_BINANCE__SYMBOLS": "dogecoin=DOGEUSDT",
            "CRYPTOSTREAM_KRAKEN__PAIRS": "dogecoin=XDGUSD",
        }
    )
    metrics = Metrics()
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            source = make_source(config, session, metrics)
    assert isinstance(source, FailoverSource)
    assert source.names == ["coincap"]
    skipped = [e for e in logs if e["event"] == "source_skipped"]
    assert [e["source"] for e in skipped] == ["binance", "kraken"]
    assert "Binance symbol" in skipped[0]["reason"] and skipped[0]["assets"] == ["bitcoin"]
    exposition = metrics.render().decode()
    assert 'cryptostream_assets_unknown{asset="bitcoin",source="binance"} 1.0' in exposition
