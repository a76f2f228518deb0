"""What CoinCap's refusals mean for the credit ledger: a rate limit is waited out, only
an answer about the monthly allowance marks it spent — on the fake CoinCap on loopback
and the real ledger file."""

from __future__ import annotations

import time

import aiohttp
import pytest

from cryptostream.credits import CreditBudget, Ledger
from cryptostream.metrics import Metrics
from cryptostream.source.coincap import CoinCapSource
from tests.conftest import ConfigFactory
from tests.support.fake_coincap import FakeCoinCap, Fault

pytestmark = pytest.mark.integration

RATE_LIMITS = [
    ('{"error":"Rate limit exceeded"}', "application/json"),
    ("<html><body><h1>429</h1><p>limit: 10 r/s</p></body></html>", "text/html"),
    ("", "text/plain"),
]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("body", "content_type"), RATE_LIMITS)
async def test_a_plain_rate_limit_is_waited_out_not_taken_for_a_spent_allowance(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, body: str, content_type: str
) -> None:
    config = make_config(
        base_url=fake_coincap.base_url, env={"CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "2500"}
    )
    budget = CreditBudget(config, Metrics())
    fake_coincap.inject(
        Fault.status(429, body=body, content_type=content_type, path_prefix="/v3/assets", times=2)
    )
    async with aiohttp.ClientSession() as session:
        source = CoinCapSource(config, session, Metrics(), budget)
        ticks = await source.poll_once()
    budget.close()
    assert len(ticks) == len(config.source.assets), "the poll went through after the backoff"
    assert fake_coincap.answered(200, "/v3/assets") == 1
    assert budget.exhausted is None and budget.refusal("poll") is None
    on_file = Ledger(config.storage.data_dir).current()
    assert on_file.spent_at is None, "no spent mark in the ledger file"
    assert on_file.credits == fake_coincap.credits_served


async def test_the_real_spent_answer_still_stops_coincap_with_one_probe_an_hour(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    config = make_config(
        base_url=fake_coincap.base_url, env={"CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "2500"}
    )
    fake_coincap.spend_allowance()  # 429, no Retry-After, "Monthly credit limit ... plan"
    clock = Clock(time.time())
    budget = CreditBudget(config, Metrics(), clock=clock)
    async with aiohttp.ClientSession() as session:
        source = CoinCapSource(config, session, Metrics(), budget)
        assert await source.poll_once() == []
        assert source.health.exhausted, "the failover hands over at once"
        assert len(fake_coincap.requests) == 1, "a spent answer is not retried"
        clock.now += 1800
        assert await source.poll_once() == []
        assert len(fake_coincap.requests) == 1, "no request before the hourly probe"
        clock.now += 1801
        assert await source.poll_once() == []
        assert len(fake_coincap.requests) == 2, "one probe"
    budget.close()
    assert Ledger(config.storage.data_dir, clock=clock).current().spent_at is not None
