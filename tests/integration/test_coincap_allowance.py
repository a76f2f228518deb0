"""What CoinCap's refusals mean for the credit ledger: a rate limit is waited out, only
an answer about the monthly allowance marks it spent — on the fake CoinCap on loopback
and the real ledger file."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from cryptostream.credits import CreditBudget, Ledger
from cryptostream.metrics import Metrics
from cryptostream.source.coincap import CoinCapSource
from tests.conftest import ConfigFactory
from tests.integration.test_backfill import cli_backfill
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


# -- backfill after CoinCap's "spent" answer -------------------------------------------------


def spent_mark(data_dir: Path, seconds_ago: float) -> None:
    """CoinCap said the allowance is spent ``seconds_ago`` (as the service would record it)."""
    then = time.time() - seconds_ago
    ledger = Ledger(data_dir, clock=lambda: then, fsync=False)
    ledger.mark_spent()


async def test_backfill_sends_the_hourly_probe_once_it_is_due(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    args = ("--assets", "bitcoin", "--interval", "h1")
    data_dir = tmp_path / "marked-lately"
    # Marked 10 minutes ago: no probe due, nothing is sent.
    spent_mark(data_dir, 600)
    code, _, err = await cli_backfill(fake_coincap, data_dir, *args)
    assert code == 2, err
    assert "next hourly probe is due at" in err.strip().splitlines()[-1]
    assert fake_coincap.calls() == 0

    # An hour since the mark: the backfill's first request is the probe. CoinCap still
    # says spent: that one request, then the run stops.
    data_dir = tmp_path / "marked-an-hour-ago"
    spent_mark(data_dir, 3700)
    fake_coincap.spend_allowance()
    code, _, err = await cli_backfill(fake_coincap, data_dir, *args)
    assert code == 1, err
    assert "allowance is spent" in err.strip().splitlines()[-1]
    assert fake_coincap.calls() == 1, "one probe, as the service sends"
    assert Ledger(data_dir).current().probed_at is not None, "the probe is remembered"
    code, _, err = await cli_backfill(fake_coincap, data_dir, *args)
    assert code == 2 and fake_coincap.calls() == 1, "no second probe within the hour"

    # CoinCap answers again (a bigger plan): the probe clears the mark and the run goes on.
    data_dir = tmp_path / "marked-and-probed-long-ago"
    spent_mark(data_dir, 7300)
    fake_coincap.renew_allowance()
    before = fake_coincap.calls()
    code, out, err = await cli_backfill(fake_coincap, data_dir, *args)
    assert code == 0, err
    assert "1/1 windows done" in out
    assert fake_coincap.calls() - before == 1 + 1
    assert Ledger(data_dir).current().spent_at is None
