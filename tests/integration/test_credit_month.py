"""A simulated month of CoinCap credits: the polling source paced to the budget, a
backfill beside it with a billing day of its own, and the user moving ``billing_day``
in the middle — on a clock the test advances, the real ledger file, the fake CoinCap
on loopback, the dashboard's web API and ``cryptostream credits --json``.

Every billing period, as the billing day in force defines it, ends at or under the
budget by what the fake CoinCap billed, and the ledger counts every billed credit once.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from cryptostream.backfill import Backfill, plan
from cryptostream.config import Config
from cryptostream.credits import CreditBudget
from cryptostream.dashboard.hub import Dashboard
from cryptostream.metrics import Metrics
from cryptostream.source.coincap import CoinCapSource
from cryptostream.web import WebServer
from tests.conftest import API_KEY, ConfigFactory
from tests.support.fake_coincap import FakeCoinCap, bill

pytestmark = pytest.mark.integration

BUDGET = 2500
POLL = 60.0
DAY = 86400.0


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


class SimClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Truth:
    """What the fake CoinCap billed, and when (on the simulated clock)."""

    fake: FakeCoinCap
    clock: SimClock
    seen: int = 0
    bills: list[tuple[float, int]] = field(default_factory=list)

    def note(self) -> None:
        served = self.fake.credits_served
        if served > self.seen:
            self.bills.append((self.clock.now, served - self.seen))
            self.seen = served

    def spent(self, start: str, end: str) -> int:
        lo, hi = utc(start), utc(end)
        return sum(c for t, c in self.bills if lo <= t < hi)


@dataclass
class Service:
    """The service's CoinCap side: its budget, its polling source, its dashboard card."""

    config: Config
    budget: CreditBudget
    source: CoinCapSource
    web: WebServer


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CRYPTOSTREAM_CONFIG", raising=False)
    yield
    structlog.reset_defaults()  # main() pointed the logs at this test's stderr
    logging.getLogger().handlers.clear()


def credits_json(config: Config, clock: SimClock, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cryptostream credits --json`` for this configuration, run at the simulated time."""
    from cryptostream.cli import main

    env = {
        "COINCAP_API_KEY": API_KEY,
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(config.storage.data_dir),
        "CRYPTOSTREAM_SOURCE__NAME": config.source.name,
        "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": str(config.source.poll_interval),
        "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": str(config.coincap.monthly_credits),
        "CRYPTOSTREAM_COINCAP__BILLING_DAY": str(config.coincap.billing_day),
    }
    out = io.StringIO()
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.setattr(time, "time", clock)
        with redirect_stdout(out):
            assert main(["credits", "--json"]) == 0
    return json.loads(out.getvalue())


async def card(service: Service) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.web.port}/api/credits") as answer,
    ):
        assert answer.status == 200
        return await answer.json()


async def same_figures(service: Service, clock: SimClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a scenario: the card and ``credits --json`` show the same figures."""
    service.budget.close()  # what it spent is in the file, as at a shutdown
    shown = await card(service)
    report = credits_json(service.config, clock, monkeypatch)
    assert {k: shown[k] for k in report["plan"]} == report["plan"]
    assert shown["used"] == report["plan"]["used"] <= BUDGET


async def start_service(
    make_config: ConfigFactory, fake: FakeCoinCap, clock: SimClock, billing_day: int
) -> Service:
    config = make_config(
        base_url=fake.base_url,
        env={
            "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": str(BUDGET),
            "CRYPTOSTREAM_COINCAP__BILLING_DAY": str(billing_day),
            "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": str(POLL),
            "CRYPTOSTREAM_STORAGE__FSYNC": "false",
            "CRYPTOSTREAM_WEB__HOST": "127.0.0.1",
        },
    )
    metrics = Metrics()
    budget = CreditBudget(config, metrics, clock=clock)
    budget.ledger.load()
    session = aiohttp.ClientSession()
    source = CoinCapSource(config, session, metrics, budget)
    dashboard = Dashboard(config, metrics)
    dashboard.credits = budget.status
    web = WebServer(config.web, metrics, lambda: (True, {}), dashboard)
    await web.start()
    service = Service(config, budget, source, web)
    service.session = session  # type: ignore[attr-defined]
    return service


async def stop_service(service: Service) -> None:
    service.budget.close()
    await service.web.stop()
    await service.session.close()  # type: ignore[attr-defined]


async def run_until(service: Service, clock: SimClock, truth: Truth, until: str) -> int:
    """The polling source's slots every ``POLL`` seconds up to ``until``; its polls."""
    polls = 0
    end = utc(until)
    while clock.now < end:
        if service.source.due():
            if await service.source.poll_once():
                polls += 1
            truth.note()
        clock.now += POLL
    return polls


async def backfill_beside(
    service: Service, make_config: ConfigFactory, clock: SimClock, truth: Truth, days: int
) -> int:
    """A backfill on the host (billing day 15 in its own settings) while the service
    polls: the clock runs on a slot per request."""
    config = make_config(
        base_url=service.config.coincap.base_url,
        data_dir=service.config.storage.data_dir,
        env={
            "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": str(BUDGET),
            "CRYPTOSTREAM_COINCAP__BILLING_DAY": "15",
            "CRYPTOSTREAM_STORAGE__FSYNC": "false",
        },
    )
    job = Backfill(config, "h1")
    job.budget.clock = clock
    job.budget.ledger.load()
    end = dt.datetime.fromtimestamp(clock.now, tz=dt.UTC).replace(hour=0, minute=0, second=0)
    windows = plan(["bitcoin", "ethereum"], end - dt.timedelta(days=days), end, "h1")
    cost = job.estimate(windows)
    assert not cost.over, cost.refusal()
    requests_before = len(truth.fake.requests)
    real_get = aiohttp.ClientSession._request

    async def polled_beside(self: aiohttp.ClientSession, *args: Any, **kw: Any) -> Any:
        # Between two backfill requests the service's slots go on.
        if service.source.due():
            await service.source.poll_once()
        clock.now += POLL
        truth.note()
        return await real_get(self, *args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiohttp.ClientSession, "_request", polled_beside)
        result = await job.run(windows, progress=False)
    truth.note()
    assert result.incomplete == [] and result.stopped is None
    return sum(
        bill(r.body_bytes or 0)
        for r in truth.fake.requests[requests_before:]
        if r.path != "/v3/assets" and r.status == 200
    )


async def test_a_month_with_a_billing_day_change_and_a_backfill_stays_in_the_budget(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch, cli_env: None
) -> None:
    clock = SimClock(utc("2026-10-01T00:00:00"))
    async with FakeCoinCap(api_key=API_KEY, clock=lambda: int(clock.now * 1000)) as fake:
        truth = Truth(fake, clock)

        # 1-10 October on billing day 1 (a free key's budget, CoinCap alone: paced),
        # with a 90-day h1 backfill of two assets on the 3rd, beside the service.
        service = await start_service(make_config, fake, clock, billing_day=1)
        await run_until(service, clock, truth, "2026-10-03T12:00:00")
        backfilled = await backfill_beside(service, make_config, clock, truth, days=90)
        assert backfilled > 100
        await run_until(service, clock, truth, "2026-10-10T12:00:00")
        await same_figures(service, clock, monkeypatch)
        report = credits_json(service.config, clock, monkeypatch)
        assert report["plan"]["used"] == truth.spent("2026-10-01", "2026-11-01")
        by_kind = report["periods"]["2026-10-01T00:00:00Z"]["by_kind"]
        assert by_kind["backfill"] == backfilled
        await stop_service(service)

        # The user sets billing_day = 15 (a paid plan's renewal day) and restarts: the
        # period from 15 September holds all of October's spend so far.
        service = await start_service(make_config, fake, clock, billing_day=15)
        plan_ = service.budget.plan()
        assert plan_.used == truth.spent("2026-09-15", "2026-10-15") > 0
        await run_until(service, clock, truth, "2026-10-20T00:00:00")
        await same_figures(service, clock, monkeypatch)
        await run_until(service, clock, truth, "2026-11-01T00:00:00")
        await same_figures(service, clock, monkeypatch)
        await stop_service(service)

    # Each billing period as the billing day in force defines it: at or under the budget.
    assert truth.spent("2026-10-01", "2026-10-10T12:00:00") <= BUDGET
    old_period = truth.spent("2026-09-15", "2026-10-15")
    new_period = truth.spent("2026-10-15", "2026-11-15")
    assert old_period <= BUDGET and new_period <= BUDGET
    assert old_period >= BUDGET - 10, "what was left was used, not wasted"
    # The ledger counted every credit CoinCap billed, once.
    report = credits_json(service.config, clock, monkeypatch)
    assert sum(p["credits"] for p in report["periods"].values()) == fake.credits_served
    assert {k: v["credits"] for k, v in report["periods"].items()} == {
        "2026-09-15T00:00:00Z": old_period,
        "2026-10-15T00:00:00Z": new_period,
    }
