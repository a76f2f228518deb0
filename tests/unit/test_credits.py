"""The CoinCap credit ledger, the budget's rules and the plan, on a clock tests advance."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from cryptostream.config import Config, ConfigError, load_config
from cryptostream.credits import CreditBudget, Ledger, credits_for, period_bounds
from cryptostream.credits.ledger import LEDGER_FILE, billed, by_period, parse
from cryptostream.credits.report import report_text
from cryptostream.metrics import Metrics
from cryptostream.source.base import SourceHealth
from cryptostream.source.failover import FailoverSource
from cryptostream.source.http import HttpAnswer, says_allowance_spent
from tests.conftest import wait_until
from tests.unit.test_failover import Out, Scripted

DAY = 86400.0
MARCH = dt.datetime(2025, 3, 1, tzinfo=dt.UTC).timestamp()
APRIL = dt.datetime(2025, 4, 1, tzinfo=dt.UTC).timestamp()
POLL_BYTES = 2644  # the fake's /assets answer for the six default assets: 2 credits


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path, **env: str) -> Config:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    return load_config(
        empty,
        {
            "COINCAP_API_KEY": "k",
            "CRYPTOSTREAM_STORAGE__DATA_DIR": str(tmp_path / "data"),
            "CRYPTOSTREAM_STORAGE__FSYNC": "false",
            **{f"CRYPTOSTREAM_{k.upper()}": v for k, v in env.items()},
        },
    )


def on_disk(tmp_path: Path, billing_day: int = 1) -> dict[str, dict[str, object]]:
    """The file's days added up per billing period, as ``credits --json`` shows them."""
    days = parse((tmp_path / "data" / LEDGER_FILE).read_bytes(), MARCH)
    return {k: v.to_json() for k, v in by_period(days, billing_day).items()}


# -- the rule and the period --------------------------------------------------------------


@pytest.mark.parametrize(
    ("nbytes", "credits"), [(0, 1), (1, 1), (2500, 1), (2501, 2), (5000, 2), (5001, 3)]
)
def test_one_credit_per_call_plus_one_per_further_2500_bytes(nbytes: int, credits: int) -> None:
    assert credits_for(nbytes) == credits


def test_refusals_and_server_failures_are_not_billed() -> None:
    assert [s for s in (200, 400, 404, 401, 402, 403, 429, 500, 503) if billed(s)] == [
        200,
        400,
        404,
    ]


@pytest.mark.parametrize(
    ("now", "day", "start", "end"),
    [
        ("2025-03-10T12:00:00", 1, "2025-03-01", "2025-04-01"),
        ("2025-03-10T12:00:00", 15, "2025-02-15", "2025-03-15"),
        ("2025-03-15T00:00:00", 15, "2025-03-15", "2025-04-15"),
        ("2025-12-31T23:59:59", 1, "2025-12-01", "2026-01-01"),
        ("2025-01-05T00:00:00", 10, "2024-12-10", "2025-01-10"),
        # Day 31: the last day in shorter months.
        ("2025-03-01T00:00:00", 31, "2025-02-28", "2025-03-31"),
    ],
)
def test_billing_periods(now: str, day: int, start: str, end: str) -> None:
    ts = dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC).timestamp()
    got = period_bounds(ts, day)
    assert (got[0].date().isoformat(), got[1].date().isoformat()) == (start, end)


# -- the ledger file ------------------------------------------------------------------------


def test_two_processes_add_up_and_a_restart_continues(tmp_path: Path) -> None:
    clock = Clock(MARCH + DAY)
    run = Ledger(tmp_path / "data", clock=clock, fsync=False)
    backfill = Ledger(tmp_path / "data", clock=clock, fsync=False)
    for _ in range(10):
        run.charge("poll", 2)
        backfill.charge("backfill", 58)
    run.flush()
    backfill.flush()
    again = Ledger(tmp_path / "data", clock=clock, fsync=False)
    rec = again.current()
    assert (rec.credits, rec.calls) == (10 * 2 + 10 * 58, 20)
    assert rec.by_kind == {"poll": 20, "backfill": 580}
    # Each one sees the other's spend after its next sync.
    run.sync()
    assert run.used() == backfill.used() == 600


def test_a_delta_is_written_at_most_a_minute_late(tmp_path: Path) -> None:
    clock = Clock(MARCH + DAY)
    ledger = Ledger(tmp_path / "data", clock=clock, fsync=False)
    ledger.charge("poll", 2)  # the first charge writes (nothing was synced yet)
    key = ledger.key()
    clock.now += 30
    ledger.charge("poll", 2)
    assert on_disk(tmp_path)[key]["credits"] == 2  # a crash now loses these 2, no more
    clock.now += 31
    ledger.charge("poll", 2)
    assert on_disk(tmp_path)[key]["credits"] == 6


def test_a_new_period_starts_from_zero_and_keeps_the_old_one(tmp_path: Path) -> None:
    clock = Clock(APRIL - 10)
    ledger = Ledger(tmp_path / "data", clock=clock, fsync=False)
    ledger.charge("poll", 5)
    clock.now = APRIL + 10
    assert ledger.used() == 0
    ledger.charge("poll", 1)
    ledger.flush()
    periods = on_disk(tmp_path)
    assert {k: v["credits"] for k, v in periods.items()} == {
        "2025-03-01T00:00:00Z": 5,
        "2025-04-01T00:00:00Z": 1,
    }


# -- CoinCap's "spent" answer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body", "spent"),
    [
        (429, {}, b'{"error": "Monthly credit limit reached. Upgrade your plan"}', True),
        (429, {}, b"quota exceeded", True),
        (429, {"Retry-After": "5"}, b'{"error": "rate limit, credits"}', False),
        (429, {}, b"", False),
        (429, {}, b'{"error": "Rate limit exceeded"}', False),
        (429, {}, b"<html><p>limit: 10 r/s</p></html>", False),
        (429, {}, b"<p>An explanation of our limits</p>", False),
        (429, {}, b'{"error": "You have used all credits of your monthly plan"}', True),
        (429, {}, b'{"error": "Please upgrade"}', True),
        (402, {}, b"", True),
        (403, {}, b'{"error": "your plan does not include this"}', True),
        (403, {}, b'{"error": "invalid api key"}', False),
        (401, {}, b"credits", False),
        (200, {}, b'{"data": []}', False),
    ],
)
def test_which_answers_say_the_allowance_is_spent(
    status: int, headers: dict[str, str], body: bytes, spent: bool
) -> None:
    assert says_allowance_spent(HttpAnswer(status, body, headers)) is spent


def test_spent_by_coincap_probes_once_an_hour_even_across_restarts(tmp_path: Path) -> None:
    clock = Clock(MARCH + DAY)
    cfg = config(tmp_path)
    budget = CreditBudget(cfg, clock=clock)
    assert budget.refusal("poll") is None
    budget.spent_by_api("Monthly credit limit reached")
    assert "allowance is spent" in (budget.refusal("poll") or "")
    clock.now += 1800
    restarted = CreditBudget(cfg, clock=clock)  # a restart must not ask again
    assert restarted.refusal("poll") is not None
    clock.now += 1801
    assert restarted.refusal("poll") is None  # the hourly probe
    assert restarted.refusal("poll") is not None  # and only one
    clock.now += 3601
    assert restarted.refusal("poll") is None
    restarted.answered()  # CoinCap answers again: no more waiting
    assert restarted.refusal("poll") is None
    assert restarted.refusal("poll") is None


def test_spent_by_coincap_ends_with_the_period(tmp_path: Path) -> None:
    clock = Clock(APRIL - 3600)
    budget = CreditBudget(config(tmp_path), clock=clock)
    budget.spent_by_api("spent")
    assert budget.refusal("poll") is not None
    clock.now = APRIL + 1
    assert budget.refusal("poll") is None


# -- the budget ------------------------------------------------------------------------------


def test_failover_mode_stops_at_the_budget_and_resumes_at_the_reset(tmp_path: Path) -> None:
    clock = Clock(MARCH + 3 * DAY)
    metrics = Metrics()
    cfg = config(tmp_path, coincap__monthly_credits="100", source__fallbacks="binance")
    budget = CreditBudget(cfg, metrics, clock=clock)
    assert budget.mode == "failover"
    polls = 0
    while budget.refusal("poll") is None:
        assert budget.poll_due()  # never paced in this mode
        budget.charged("poll", 200, POLL_BYTES)
        polls += 1
        clock.now += 20
    assert (polls, budget.ledger.used()) == (50, 100)
    assert budget.exhausted == "budget"
    sample = metrics.registry.get_sample_value
    assert sample("cryptostream_coincap_exhausted") == 1
    assert sample("cryptostream_coincap_credits_used") == 100
    assert sample("cryptostream_coincap_credits_budget") == 100
    clock.now = APRIL + 5
    assert budget.refusal("poll") is None
    assert sample("cryptostream_coincap_exhausted") == 0
    assert sample("cryptostream_coincap_credits_used") == 0


def test_pacing_spreads_the_budget_over_a_simulated_month(tmp_path: Path) -> None:
    """20 s polls at 2 credits on 2,500 credits: paced, never over, lasting to the reset."""
    start = MARCH + 2 * DAY + 1234.5  # started on the 3rd, mid-day
    clock = Clock(start)
    cfg = config(tmp_path, source__name="coincap")  # 2500 credits, CoinCap alone: pace
    budget = CreditBudget(cfg, clock=clock)
    assert budget.mode == "pace"
    with capture_logs() as logs:
        plan = budget.log_plan()
    assert not plan.lasts and plan.paced_interval is not None
    polls: list[float] = []
    while clock.now < APRIL + 2 * DAY:
        if budget.poll_due() and budget.refusal("poll") is None:
            budget.charged("poll", 200, POLL_BYTES)
            polls.append(clock.now)
        clock.now += 20
    march = [t for t in polls if t < APRIL]
    used_march = budget.ledger.periods()["2025-03-01T00:00:00Z"].credits
    assert used_march <= 2500
    assert used_march >= 2500 - 2 * 2, "what was left is used, not wasted"
    assert 2 * len(march) == used_march
    # Spread evenly to the end: no gap much beyond the paced interval, the last poll
    # near the reset.
    gaps = [b - a for a, b in itertools.pairwise(march)]
    assert max(gaps) <= plan.paced_interval + 60
    assert APRIL - march[-1] <= plan.paced_interval + 60
    # The new period paces afresh from its own budget.
    april = [t for t in polls if t >= APRIL]
    assert april and april[0] - APRIL <= plan.paced_interval
    event = next(e for e in logs if e["event"] == "coincap_credit_plan")
    assert event["log_level"] == "warning"
    assert event["credits_per_poll"] == 2 and event["budget"] == 2500
    assert "paced" in event["then"]


def test_the_plan_numbers(tmp_path: Path) -> None:
    clock = Clock(MARCH + 0.5 * DAY)
    budget = CreditBudget(config(tmp_path), clock=clock)  # auto with a key: failover
    budget.charged("poll", 200, POLL_BYTES)
    plan = budget.plan()
    assert plan.source == "coincap" and plan.mode == "failover"
    assert plan.fallbacks == ("binance", "kraken")
    assert plan.credits_per_poll == 2
    assert plan.polls_per_period == 31 * 86400 // 20
    rest = APRIL - clock.now
    assert plan.needed == round(rest / 20 * 2)
    assert (plan.used, plan.left) == (2, 2498)
    assert plan.runs_out is not None
    assert plan.runs_out.timestamp() == pytest.approx(clock.now + 2498 / 2 * 20)
    assert not plan.lasts and plan.projected == 2500
    assert "hand over to binance, kraken" in plan.then()
    unlimited = CreditBudget(config(tmp_path, coincap__monthly_credits="0"), clock=clock)
    plan = unlimited.plan()
    assert plan.lasts and plan.left is None and plan.mode == "unlimited"
    assert plan.projected == 2 + plan.needed
    assert unlimited.poll_due() and unlimited.refusal("poll") is None


def test_without_a_key_coincap_is_not_planned(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    cfg = load_config(empty, {"CRYPTOSTREAM_STORAGE__DATA_DIR": str(tmp_path / "data")})
    budget = CreditBudget(cfg)
    status = budget.status()
    assert status["source"] is None and status["key"] is False
    assert "COINCAP_API_KEY" in status["note"]


# -- failover on a spent source ---------------------------------------------------------------


async def test_a_spent_source_hands_over_at_once_not_after_failover_after() -> None:
    coincap, binance = Scripted("coincap"), Scripted("binance")
    out = Out()
    failover = FailoverSource([coincap, binance], 30.0, Metrics(), check_every=0.02)
    task = asyncio.create_task(failover.run(out))
    try:
        await asyncio.sleep(0.1)
        coincap.up = False
        coincap.health.spent("the budget is spent")
        loop = asyncio.get_running_loop()
        began = loop.time()
        await wait_until(lambda: failover.active_name == "binance", timeout=5)
        assert loop.time() - began < 1.0  # not 30 s
        await asyncio.sleep(0.1)
        coincap.up = True  # the reset
        await wait_until(lambda: failover.active_name == "coincap", timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert out.sources() == ["coincap", "binance", "coincap"]


def test_health_spent_is_cleared_by_an_answer() -> None:
    health = SourceHealth()
    health.spent("x")
    assert health.exhausted and not health.healthy
    health.ok()
    assert not health.exhausted


# -- cryptostream credits ---------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # no ./config.toml
    for name in ("CRYPTOSTREAM_CONFIG", "COINCAP_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRYPTOSTREAM_STORAGE__DATA_DIR", str(tmp_path / "data"))
    yield tmp_path
    # main() pointed the logs at this test's captured stderr: not the next test's.
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_credits_prints_the_ledger_and_the_plan(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptostream.cli import main

    monkeypatch.setenv("COINCAP_API_KEY", "k")
    ledger = Ledger(workdir / "data")
    ledger.charge("poll", 2, nbytes=POLL_BYTES)
    ledger.charge("backfill", 58)
    ledger.flush()
    assert main(["credits"]) == 0
    text = capsys.readouterr().out
    assert "used        60 (backfill 58, poll 2)" in text
    assert "budget      2,500 (coincap.monthly_credits)" in text
    assert "left        2,440" in text
    assert "coincap every 20 s, 2 credits a poll" in text
    assert "then        hand over to binance, kraken" in text
    assert main(["credits", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["used"] == 60 and doc["plan"]["left"] == 2440
    assert doc["plan"]["mode"] == "failover" and doc["key"] is True
    assert next(iter(doc["periods"].values()))["by_kind"] == {"backfill": 58, "poll": 2}


def test_credits_without_a_key_says_coincap_is_not_used(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptostream.cli import main

    assert main(["credits"]) == 0
    assert "CoinCap     not used (no COINCAP_API_KEY): nothing is spent" in capsys.readouterr().out
    assert not (workdir / "data").exists(), "a report writes nothing"


def test_the_stream_is_charged_by_the_minute_connected(tmp_path: Path) -> None:
    clock = Clock(MARCH + DAY)
    budget = CreditBudget(config(tmp_path, source__name="coincap-ws"), clock=clock)
    budget.charge_stream(59.0)
    assert budget.ledger.used() == 0
    budget.charge_stream(91.0)  # 150 s: two whole minutes
    assert budget.ledger.used() == 2
    budget.end_stream()  # the connection ends: its started third minute counts
    budget.end_stream()
    rec = budget.ledger.current()
    assert (rec.credits, rec.by_kind, rec.stream_seconds) == (3, {"stream": 3}, 150.0)
    plan = budget.plan()
    assert plan.source == "coincap-ws" and plan.stream_credits_per_minute == 1
    assert "about 1 credit a minute connected" in report_text(budget)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"source__name": "coincap", "coincap__budget_mode": "failover"},
            "CRYPTOSTREAM_COINCAP__BUDGET_MODE: failover needs a keyless source to hand over",
        ),
        ({"coincap__billing_day": "32"}, "must be a day of the month, 1-31, got 32"),
        ({"coincap__monthly_credits": "-1"}, "must be 0 or more, got -1"),
        ({"coincap__budget_mode": "stop"}, "expected one of auto, pace, failover"),
    ],
)
def test_budget_settings_are_checked(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, **env)
    assert message in str(err.value)


# -- the spend is kept by day: any billing day counts its own period -------------------------

DEC = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()


def spend_first_ten_days(tmp_path: Path, clock: Clock) -> CreditBudget:
    """2,400 of 2,500 credits from 1 to 10 December, by a service on billing day 1."""
    budget = CreditBudget(config(tmp_path), clock=clock)
    clock.now = DEC
    for _ in range(1200):
        budget.charged("poll", 200, POLL_BYTES)
        clock.now += 9 * DAY / 1200
    budget.close()
    return budget


def test_a_changed_billing_day_counts_what_was_spent_in_the_period_it_defines(
    tmp_path: Path,
) -> None:
    clock = Clock(DEC)
    first = spend_first_ten_days(tmp_path, clock)
    clock.now = DEC + 9.5 * DAY  # 10 December
    assert first.plan().used == 2400
    # The user sets billing_day = 15 for a paid plan: that period began on 15 November
    # and holds all of December's spend so far.
    moved = CreditBudget(config(tmp_path, coincap__billing_day="15"), clock=clock)
    plan = moved.plan()
    assert (plan.period_start.date().isoformat(), plan.used, plan.left) == ("2026-11-15", 2400, 100)
    polls = 0
    while moved.refusal("poll") is None:
        moved.charged("poll", 200, POLL_BYTES)
        polls += 1
    assert (polls, moved.ledger.used()) == (50, 2500), "never over the budget"
    # The new period, from 15 December, counts from its own first day.
    clock.now = DEC + 14 * DAY + 1
    assert moved.plan().used == 0 and moved.refusal("poll") is None


def test_two_processes_with_different_billing_days_see_each_others_spend(
    tmp_path: Path,
) -> None:
    clock = Clock(DEC + 9.5 * DAY)
    service = CreditBudget(config(tmp_path), clock=clock)  # compose: billing day 1
    backfill = CreditBudget(config(tmp_path, coincap__billing_day="5"), clock=clock)
    service.charged("poll", 200, POLL_BYTES)
    backfill.charged("backfill", 200, 58 * 2500)
    service.close()
    backfill.close()
    service.ledger.sync()
    backfill.ledger.sync()
    assert service.plan().used == backfill.plan().used == 60
    assert service.plan().period_start.day == 1 and backfill.plan().period_start.day == 5
    # Spend on 2 December is in the service's period, not in the backfill's.
    clock.now = DEC + DAY
    early = CreditBudget(config(tmp_path), clock=clock)
    early.charged("poll", 200, POLL_BYTES)
    early.close()
    clock.now = DEC + 9.5 * DAY
    service.ledger.sync()
    backfill.ledger.sync()
    assert (service.plan().used, backfill.plan().used) == (62, 60)


def test_a_ledger_of_the_previous_format_keeps_its_count(tmp_path: Path) -> None:
    path = tmp_path / "data" / LEDGER_FILE
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "billing_day": 1,
                "periods": {
                    "2026-11-01T00:00:00Z": {"credits": 2500, "calls": 1250},
                    "2026-12-01T00:00:00Z": {
                        "credits": 2400,
                        "calls": 1200,
                        "by_kind": {"poll": 2400},
                        "spent_at": DEC + DAY,
                    },
                },
            }
        )
    )
    clock = Clock(DEC + 9.5 * DAY)
    budget = CreditBudget(config(tmp_path), clock=clock)
    rec = budget.ledger.current()
    assert (rec.credits, rec.by_kind, rec.spent_at) == (2400, {"poll": 2400}, DEC + DAY)
    # When in its period an old record was spent is not known: it counts on the period's
    # last day begun, so another billing day's period counts it if it may hold it.
    budget = CreditBudget(config(tmp_path, coincap__billing_day="15"), clock=clock)
    assert budget.ledger.current().credits == 2500 + 2400
    periods = CreditBudget(config(tmp_path), clock=clock).ledger.periods()
    assert {k: v.credits for k, v in periods.items()} == {
        "2026-11-01T00:00:00Z": 2500,
        "2026-12-01T00:00:00Z": 2400,
    }


def test_pacing_survives_the_wall_clock_stepping_back_an_hour(tmp_path: Path) -> None:
    clock = Clock(MARCH + 3 * DAY)
    monotonic = Clock(1000.0)  # never steps
    cfg = config(tmp_path, coincap__budget_mode="pace", source__fallbacks="[]")
    budget = CreditBudget(cfg, clock=clock, monotonic=monotonic)
    interval = budget._interval_for(clock())
    assert interval is not None
    assert budget.poll_due()
    with structlog.testing.capture_logs() as logs:
        clock.now -= 3600  # NTP correction: the wall clock steps back an hour
        due = 0
        for _ in range(180):  # an hour of 20 s slots
            clock.now += 20
            monotonic.now += 20
            due += budget.poll_due()
    # The spacing holds exactly as without the step: one poll per interval.
    assert due == int(3600 // interval) or due == int(3600 // interval) + 1, (due, interval)
    steps = [e for e in logs if e["event"] == "clock_stepped_back"]
    assert [round(e["by_s"]) for e in steps] == [3600], "said once"
