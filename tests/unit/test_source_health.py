"""Each real source reports its health per request, which is what failover reads."""

from __future__ import annotations

import aiohttp

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
