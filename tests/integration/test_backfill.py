"""`cryptostream backfill` against the fake CoinCap history endpoint (real HTTP)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import os
import signal
import sys
from asyncio.subprocess import Process
from collections.abc import Awaitable
from pathlib import Path

import orjson

from cryptostream.backfill import Backfill, parse_when, plan
from cryptostream.csvrow import COLUMNS
from tests.conftest import API_KEY, ConfigFactory
from tests.support.fake_coincap import FakeCoinCap, Fault

START = "2025-03-06T12:00:00Z"
END = "2025-03-09T00:00:00Z"


def day_rows(data_dir: Path, interval: str, day: str) -> list[dict[str, str]]:
    with (data_dir / "history/backfill" / interval / f"{day}.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def snapshot(data_dir: Path) -> dict[str, bytes]:
    root = data_dir / "history/backfill"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.csv"))}


def windows(assets: list[str], interval: str = "m1"):
    return plan(assets, parse_when(START), parse_when(END), interval)


async def test_multi_window_backfill_writes_day_files(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    config = make_config(base_url=fake_coincap.base_url)
    plan_ = windows(["bitcoin", "solana"])
    # 12:00 on the 6th to midnight on the 9th, cut at UTC midnights: 3 windows per asset.
    assert len(plan_) == 6
    result = await Backfill(config, "m1").run(plan_, progress=False)
    assert (result.rows_added, result.incomplete) == (2 * (720 + 1440 + 1440), [])
    assert result.requests == 6 + 2  # one history call per window, one /assets/{id} per asset
    rows = day_rows(config.storage.data_dir, "m1", "2025-03-07")
    btc = [r for r in rows if r["id"] == "bitcoin"]
    assert len(btc) == 1440
    assert (btc[0]["symbol"], btc[0]["name"]) == ("BTC", "Bitcoin")
    t0 = int(dt.datetime(2025, 3, 7, tzinfo=dt.UTC).timestamp() * 1000)
    assert btc[0]["priceUsd"] == fake_coincap.history_price("bitcoin", t0)
    assert btc[5]["priceUsd"] == fake_coincap.history_price("bitcoin", t0 + 5 * 60_000)
    assert {r["firstValue"] for r in btc} == {btc[0]["priceUsd"]}
    assert {r["changePercent24Hr"] for r in rows} == {""}  # the endpoint lacks them
    assert {r["vwap24Hr"] for r in rows} == {""}
    first_day = day_rows(config.storage.data_dir, "m1", "2025-03-06")
    assert float(first_day[0]["timestamp"]) == parse_when(START).timestamp()


async def test_rate_limit_mid_backfill_is_waited_out(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    config = make_config(base_url=fake_coincap.base_url)
    fake_coincap.inject(
        Fault.status(429, headers={"Retry-After": "0.5"}, path_prefix="/v3/assets/bitcoin/history")
    )
    result = await Backfill(config, "h1").run(windows(["bitcoin"], "h1"), progress=False)
    assert result.incomplete == []
    history = fake_coincap.requests_to("/v3/assets/bitcoin/history")
    assert [r.status for r in history] == [429, 200]
    assert history[1].monotonic - history[0].monotonic >= 0.45
    assert len(day_rows(config.storage.data_dir, "h1", "2025-03-08")) == 24


async def test_interrupted_backfill_resumes_and_reruns_add_nothing(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    config = make_config(base_url=fake_coincap.base_url)
    plan_ = windows(["bitcoin", "ethereum"])
    first = await Backfill(config, "m1", max_requests=3).run(plan_, progress=False)
    assert first.incomplete and len(first.incomplete) < len(plan_)
    second = await Backfill(config, "m1").run(plan_, progress=False)
    assert second.incomplete == []
    assert second.skipped_done == len(plan_) - len(first.incomplete)
    history_calls = fake_coincap.calls("/v3/assets/bitcoin/history") + fake_coincap.calls(
        "/v3/assets/ethereum/history"
    )
    assert history_calls == len(plan_), "no finished window is fetched twice"
    files = snapshot(config.storage.data_dir)

    # The same range again: nothing to do, nothing changes.
    third = await Backfill(config, "m1").run(plan_, progress=False)
    assert (third.rows_added, third.requests) == (0, 0)
    # Even without the progress record, re-fetching adds no row.
    (config.storage.data_dir / ".cryptostream/backfill-m1.json").unlink()
    fourth = await Backfill(config, "m1").run(plan_, progress=False)
    assert fourth.rows_added == 0 and fourth.requests > 0
    assert snapshot(config.storage.data_dir) == files


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_cli_ctrl_c_then_same_command_continues(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "COINCAP_API_KEY": API_KEY,
        "CRYPTOSTREAM_COINCAP__BASE_URL": fake_coincap.base_url,
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(tmp_path / "data"),
    }
    args = [
        sys.executable,
        "-m",
        "cryptostream",
        "backfill",
        "--assets",
        "bitcoin",
        "--start",
        START,
        "--end",
        END,
        "--interval",
        "m1",
        "--no-progress",
    ]
    # The third history request hangs: Ctrl-C arrives while it is in flight.
    fake_coincap.inject(
        Fault.delay(30, path_prefix="/v3/assets/bitcoin/history"),
    )
    fake_coincap.clear_faults()
    fake_coincap.inject(
        Fault.delay(0, path_prefix="/v3/assets/bitcoin/history", times=2),
        Fault.delay(30, path_prefix="/v3/assets/bitcoin/history"),
    )
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Ctrl-C as at a terminal: a run started in the background (e.g. by a CI
        # runner) inherits SIGINT ignored, and Python would never see the signal.
        preexec_fn=_default_sigint,
    )
    await fake_coincap.wait_for_calls(3, path_prefix="/v3/assets/bitcoin/history", timeout=30)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, (out + err).decode()[-2000:]
    assert b"run the same command to continue" in err
    fake_coincap.clear_faults()
    again = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(again.communicate(), 60)
    assert again.returncode == 0, err.decode()
    assert b"3/3 windows done" in out
    # Only the window that was cut off is fetched again.
    assert fake_coincap.calls("/v3/assets/bitcoin/history") == 4
    rows = day_rows(tmp_path / "data", "m1", "2025-03-08")
    assert len(rows) == 1440


async def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "COINCAP_API_KEY": API_KEY}
    for bad in (
        ["--start", "yesterday"],
        ["--start", END, "--end", START],
        # Far past the calendar's end for window arithmetic (was an OverflowError).
        ["--start", "2025-01-01", "--end", "9999-12-31", "--interval", "d1"],
        ["--start", "2025-01-01", "--end", "9999-12-31T23:00-05:00"],
        ["--start", "9999-12-30", "--interval", "d1"],
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cryptostream",
            "backfill",
            *bad,
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, (bad, err.decode())
        assert len(err.decode().strip().splitlines()) == 1, (bad, err.decode())
        assert err.decode().startswith("cryptostream: "), (bad, err.decode())


async def test_an_end_in_the_future_is_cut_at_now_and_the_rest_fetched_later(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    """--end 20 days ahead: cut at the time of the request, said once; no window that
    reaches past now is marked done, so a later run fetches what came since."""
    data_dir = tmp_path / "data"
    now = dt.datetime.now(tz=dt.UTC)
    start = (now - dt.timedelta(days=2)).date().isoformat()
    end = (now + dt.timedelta(days=20)).date().isoformat()
    args = ("--assets", "bitcoin", "--start", start, "--end", end, "--interval", "h1")
    code, _, err = await cli(fake_coincap, data_dir, *args)
    after = dt.datetime.now(tz=dt.UTC)
    assert code == 0, err
    cut = [line for line in err.splitlines() if "in the future" in line]
    assert len(cut) == 1, err
    assert cut[0].startswith(f"backfill: --end {end}T00:00:00Z is in the future: cut at now (")
    done = orjson.loads((data_dir / ".cryptostream/backfill-h1.json").read_bytes())["done"]
    assert done and all(int(key.rsplit(":", 1)[1]) <= after.timestamp() * 1000 for key in done)
    history = fake_coincap.calls("/v3/assets/bitcoin/history")
    assert history >= 1

    # Later (here: a moment later): the part of the range after the first run's end is
    # asked for again, not skipped as done.
    code, _, err = await cli(fake_coincap, data_dir, *args)
    assert code == 0, err
    assert fake_coincap.calls("/v3/assets/bitcoin/history") == history + 1


# -- credits: plan before spending, one ledger, unknown assets ------------------------------


async def cli_backfill(
    fake: FakeCoinCap, data_dir: Path, *args: str, **env: str
) -> tuple[int, str, str]:
    return await cli(fake, data_dir, "--start", START, "--end", END, *args, **env)


async def start(fake: FakeCoinCap, data_dir: Path, *args: str, **env: str) -> Process:
    """A running ``cryptostream backfill ARGS`` against ``fake``, on ``data_dir``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptostream",
        "backfill",
        "--no-progress",
        *args,
        env={
            "PATH": os.environ["PATH"],
            "COINCAP_API_KEY": API_KEY,
            "CRYPTOSTREAM_COINCAP__BASE_URL": fake.base_url,
            "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
            **env,
        },
        cwd=data_dir.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def cli(fake: FakeCoinCap, data_dir: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """``cryptostream backfill ARGS`` against ``fake``, on ``data_dir``, to its end."""
    proc = await start(fake, data_dir, *args, **env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def ledger_credits(data_dir: Path) -> dict[str, int]:
    from cryptostream.credits import Ledger

    return Ledger(data_dir).current().by_kind


async def test_backfill_refuses_a_range_over_what_is_left_with_the_numbers(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # m1 over 2.5 days of bitcoin: 3 windows of 720/1440/1440 rows, 146 credits by the estimate.
    code, out, err = await cli_backfill(
        fake_coincap,
        data_dir,
        "--assets",
        "bitcoin",
        "--interval",
        "m1",
        CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS="100",
    )
    assert code == 2, err
    refusal = err.strip().splitlines()[-1]
    assert "needs about 146 CoinCap credits (4 requests)" in refusal
    assert "only 100 of 100 are left" in refusal and "--allow-over-budget" in refusal
    assert fake_coincap.calls() == 0, "nothing is spent before the plan says yes"

    # Allowed over the budget: it runs, and its spend is in the ledger, exactly.
    code, out, err = await cli_backfill(
        fake_coincap,
        data_dir,
        "--assets",
        "bitcoin",
        "--interval",
        "m1",
        "--allow-over-budget",
        CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS="100",
    )
    assert code == 0, err
    assert ledger_credits(data_dir) == {"backfill": fake_coincap.credits_served}
    # The estimate was close to what the fake billed (a 1-day m1 answer: 58 credits).
    assert abs(fake_coincap.credits_served - 146) <= 4
    assert f"{fake_coincap.credits_served} credits" in out


async def test_backfill_of_an_unknown_asset_is_exit_2_naming_it(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    code, _, err = await cli_backfill(
        fake_coincap, tmp_path / "data", "--assets", "bitcoin,nosuchcoin", "--interval", "h1"
    )
    assert code == 2
    assert loop.time() - began < 20, "no retrying a 404"
    assert err.strip().splitlines()[-1] == (
        "cryptostream: unknown asset 'nosuchcoin': CoinCap does not know it "
        "(ids look like bitcoin, binance-coin)"
    )
    assert fake_coincap.calls("/v3/assets/nosuchcoin") == 1
    assert fake_coincap.calls("/v3/assets/bitcoin/history") == 0


async def test_backfill_stops_when_coincap_says_the_allowance_is_spent(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    async with FakeCoinCap(api_key=API_KEY, allowance=60) as fake:
        config = make_config(base_url=fake.base_url)
        result = await Backfill(config, "m1").run(windows(["bitcoin"]), progress=False)
    assert result.stopped is not None and "allowance is spent" in result.stopped
    # The first window (30 credits) and the asset lookup fitted; the second crossed the
    # allowance; the third was never asked for.
    assert [r.status for r in fake.requests_to("/v3/assets/bitcoin/history")] == [200, 200, 429]
    assert len(result.incomplete) == 1


async def test_an_unknown_asset_stops_backfill_before_its_progress_bar_shows(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    code, _, err = await cli_backfill(
        fake_coincap, tmp_path / "data", "--assets", "nosuchcoin", "--interval", "h1", "--progress"
    )
    assert code == 2
    assert "unknown asset 'nosuchcoin'" in err
    assert "%|" not in err, err  # no bar left at 0 % above the error


async def test_a_second_backfill_on_the_data_directory_is_refused_and_the_first_completes(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    data = tmp_path / "data"

    def run(asset: str) -> Awaitable[Process]:
        args = ("--assets", asset, "--start", START, "--end", END, "--interval", "m1")
        return start(fake_coincap, data, *args)

    # Bitcoin's first history request is held up, so the two runs overlap (before the
    # lock the second rewrote day files under the first: a FileNotFoundError traceback,
    # or exit 0 with one asset's rows missing).
    fake_coincap.inject(Fault.delay(3, path_prefix="/v3/assets/bitcoin/history", times=1))
    first = await run("bitcoin")
    await fake_coincap.wait_for_calls(1, path_prefix="/v3/assets/bitcoin/history", timeout=30)
    second = await run("ethereum")
    out2, err2 = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 2, (out2 + err2).decode()[-2000:]
    lines = err2.decode().strip().splitlines()
    assert any(
        f"another backfill of m1 is running on this data directory (pid {first.pid})" in line
        for line in lines
    ), lines
    assert b"Traceback" not in err2
    assert fake_coincap.calls("/v3/assets/ethereum/history") == 0, "the refused run spent nothing"

    out1, err1 = await asyncio.wait_for(first.communicate(), 60)
    assert first.returncode == 0, err1.decode()[-2000:]
    assert b"3/3 windows done" in out1
    assert len(day_rows(data, "m1", "2025-03-08")) == 1440
    # The lock went with the first process: the second runs now and both assets are kept.
    again = await run("ethereum")
    _, err3 = await asyncio.wait_for(again.communicate(), 60)
    assert again.returncode == 0, err3.decode()[-2000:]
    ids = {row["id"] for row in day_rows(data, "m1", "2025-03-08")}
    assert ids == {"bitcoin", "ethereum"}
    leftovers = [p.name for p in data.rglob("*.tmp")]
    assert leftovers == []


async def test_each_history_request_is_budgeted_by_its_size_and_the_budget_holds(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    # The plan said yes, then the service spent 30 of the 100 credits beside it. Two
    # days of m1 (about 58 credits each) fit no more: before, every history request was
    # checked as 1 credit, so the second went out too and the count ended at 147 of 100.
    config = make_config(
        base_url=fake_coincap.base_url, env={"CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "100"}
    )
    job = Backfill(config, "m1")
    job.budget.ledger.charge("poll", 30)
    days = plan(["bitcoin"], parse_when("2025-03-07"), parse_when("2025-03-09"), "m1")
    result = await job.run(days, progress=False)
    used = job.budget.ledger.current().credits
    assert used <= 100, f"{used} of 100 credits used"
    assert fake_coincap.calls("/v3/assets/bitcoin/history") == 1
    assert result.stopped is not None and "the next request needs about 58" in result.stopped
    assert len(result.incomplete) == 1
