"""The price stream's credits on real parts: the fake CoinCap REST and websocket
servers on loopback, a real ``coincap-ws`` source and credit budget, the real ledger
file and ``cryptostream credits --json``.

Minutes connected are timed on the event loop's clock and the budget runs on a wall
clock; each test runs on its own event loop whose clock it moves forward together
with the budget's, so minutes pass in a moment (every timer due in the skipped time
fires at once, so the silence timeout and the REST refresh are set far beyond it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from cryptostream.config import Config
from cryptostream.credits import CreditBudget
from cryptostream.credits.ledger import LEDGER_FILE, PeriodRecord, by_period, parse
from cryptostream.metrics import Metrics
from cryptostream.source import make_source
from cryptostream.source.base import Source
from cryptostream.source.coincap_ws import CoinCapWsSource
from cryptostream.source.failover import FailoverSource
from cryptostream.tick import Tick
from tests.conftest import API_KEY, REPO, ConfigFactory, wait_until
from tests.support.fake_binance import FakeBinance
from tests.support.fake_coincap import FakeCoinCap, Fault
from tests.support.fake_coincap_ws import FakeCoinCapWs

# Own event loops: the session's must not see its clock jump.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="function")]

#: Credits of one REST refresh of the six default assets (about 2.6 KB).
REFRESH = 2
#: Far beyond every jump of the clocks: no silence, no second refresh.
FAR = "86400"


class Clocks:
    """The event loop's clock and the budget's wall clock, moved forward together."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.offset = 0.0
        #: Moves the wall clock only (a new billing period without the loop noticing).
        self.wall_offset = 0.0
        real = loop.time

        def skewed() -> float:
            return real() + self.offset

        loop.time = skewed  # type: ignore[method-assign]

    def wall(self) -> float:
        return time.time() + self.offset + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def billing_day_away_from_today() -> int:
    """A billing day whose period does not end within days: the CLI's real clock and
    the tests' clock, a few minutes ahead, must see the same period."""
    return (dt.datetime.now(dt.UTC).day + 13) % 28 + 1


class Collector:
    def __init__(self) -> None:
        self.ticks: list[Tick] = []

    def __call__(self, ticks: list[Tick]) -> None:
        self.ticks.extend(ticks)

    def count(self, source: str) -> int:
        return sum(1 for t in self.ticks if t.source == source)


@dataclass
class Run:
    config: Config
    budget: CreditBudget
    source: Source
    ws: CoinCapWsSource
    out: Collector
    metrics: Metrics
    fake_ws: FakeCoinCapWs
    clocks: Clocks
    task: asyncio.Task[None]

    def stream_credits(self) -> int:
        return self.budget.ledger.current().by_kind["stream"]

    async def next_frame(self) -> None:
        """Wait for a frame of the stream (a minute passed is charged at a frame)."""
        seen = self.out.count("coincap-ws")
        await wait_until(lambda: self.out.count("coincap-ws") > seen, what="a frame")

    async def connected(self, handshakes: int) -> None:
        await self.fake_ws.wait_for_handshakes(handshakes)
        await self.next_frame()

    async def stay(self, seconds: float) -> None:
        """Stay connected this much longer (and see a frame after it)."""
        self.clocks.advance(seconds)
        await self.next_frame()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def running(
    make_config: ConfigFactory, env: dict[str, str], *, chain: bool = False
) -> AsyncIterator[Run]:
    """A coincap-ws source (``chain``: the failover chain of the config around it) with
    a real budget on the test's clocks, against the fakes."""
    clocks = Clocks(asyncio.get_running_loop())
    async with (
        FakeCoinCap(api_key=API_KEY) as fake_rest,
        FakeCoinCapWs(api_key=API_KEY, interval=0.05) as fake_ws,
        aiohttp.ClientSession() as session,
    ):
        config = make_config(
            base_url=fake_rest.base_url,
            env={
                "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
                "CRYPTOSTREAM_COINCAP__WS_URL": fake_ws.ws_url,
                "CRYPTOSTREAM_COINCAP__WS_SILENCE_TIMEOUT": FAR,
                "CRYPTOSTREAM_COINCAP__WS_REFRESH_INTERVAL": FAR,
                "CRYPTOSTREAM_COINCAP__BILLING_DAY": str(billing_day_away_from_today()),
                "CRYPTOSTREAM_STORAGE__FSYNC": "false",
                **env,
            },
        )
        metrics = Metrics()
        budget = CreditBudget(config, metrics, clock=clocks.wall)
        top: Source
        if chain:
            top = make_source(config, session, metrics, budget)
            assert isinstance(top, FailoverSource)
            ws = next(s for s in top.sources if isinstance(s, CoinCapWsSource))
        else:
            top = ws = CoinCapWsSource(config, session, metrics, budget)
        out = Collector()
        task = asyncio.create_task(top.run(out))
        run = Run(config, budget, top, ws, out, metrics, fake_ws, clocks, task)
        try:
            # The refresh at start is charged; the stream is up.
            await wait_until(lambda: budget.ledger.current().by_kind["refresh"] == REFRESH)
            await run.connected(1)
            yield run
        finally:
            await run.stop()


def on_disk(config: Config) -> dict[str, PeriodRecord]:
    raw = (config.storage.data_dir / LEDGER_FILE).read_bytes()
    return by_period(parse(raw, time.time()), config.coincap.billing_day)


def credits_cli(config: Config, env: dict[str, str]) -> dict[str, Any]:
    """``cryptostream credits --json`` as a separate process on the same data folder."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CRYPTOSTREAM_") and k != "COINCAP_API_KEY"
    }
    environ.update(
        {
            "COINCAP_API_KEY": API_KEY,
            "CRYPTOSTREAM_STORAGE__DATA_DIR": str(config.storage.data_dir),
            "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
            "CRYPTOSTREAM_COINCAP__BILLING_DAY": str(config.coincap.billing_day),
            "PYTHONPATH": str(REPO),
            **env,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "cryptostream", "credits", "--json"],
        cwd=config.storage.data_dir.parent,  # no ./config.toml there
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


async def test_minutes_connected_are_charged_once_and_flushed_at_the_stop(
    make_config: ConfigFactory,
) -> None:
    env = {"CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "1000"}
    async with running(make_config, env) as run:
        key = run.budget.ledger.key()
        # Whole minutes are charged as they pass, and written to the file within one.
        await run.stay(60)
        assert run.stream_credits() == 1
        await run.stay(60)
        assert run.stream_credits() == 2
        assert on_disk(run.config)[key].by_kind == {"refresh": REFRESH, "stream": 2}
        # Half a minute more, then the connection breaks: its started minute counts.
        await run.stay(30)
        assert run.stream_credits() == 2
        run.fake_ws.drop()
        await run.connected(2)
        first = run.budget.ledger.current()
        assert first.by_kind["stream"] == 3
        assert 150 < first.stream_seconds < 180
        # The new connection starts a minute of its own: nothing charged twice.
        await run.stay(60)
        assert run.stream_credits() == 4
        await run.stay(30)
        assert run.stream_credits() == 4
        assert run.fake_ws.handshakes == 2
        # The budget's clock has not moved a minute since the last write: the file
        # lags what the process knows until the stop writes it.
        assert on_disk(run.config)[key].by_kind["stream"] < 5
        await run.stop()

    record = on_disk(run.config)[key]
    assert record.by_kind == {"refresh": REFRESH, "stream": 5}
    assert record.credits == REFRESH + 5
    assert 240 < record.stream_seconds < 270
    assert record.spent_at is None
    # What the process counted is what the file and the CLI say.
    counted = run.metrics.registry.get_sample_value(
        "cryptostream_coincap_credits_total", {"kind": "stream"}
    )
    assert counted == 5
    doc = credits_cli(run.config, env)
    assert doc["periods"][key] == record.to_json()
    plan = doc["plan"]
    assert (plan["source"], plan["used"], plan["left"]) == ("coincap-ws", 7, 993)
    assert plan["stream_credits_per_minute"] == 1


@pytest.mark.parametrize("fallback", [False, True], ids=["pace", "failover"])
async def test_the_stream_stops_when_the_budget_is_spent(
    make_config: ConfigFactory, fallback: bool
) -> None:
    # The refresh at start takes 2 of the 5 credits: 3 minutes of stream are left.
    budget = 5
    env = {"CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": str(budget)}
    binance: FakeBinance | None = None
    async with contextlib.AsyncExitStack() as stack:
        if fallback:
            binance = await stack.enter_async_context(FakeBinance())
            env |= {
                "CRYPTOSTREAM_SOURCE__FALLBACKS": "binance",
                # A spent budget hands over at once, not after failover_after.
                "CRYPTOSTREAM_SOURCE__FAILOVER_AFTER": "3600",
                "CRYPTOSTREAM_BINANCE__BASE_URL": binance.base_url,
                "CRYPTOSTREAM_BINANCE__MAX_BACKOFF": "0.2",
            }
        run = await stack.enter_async_context(running(make_config, env, chain=True))
        assert run.budget.mode == ("failover" if fallback else "pace")
        key = run.budget.ledger.key()
        await run.stay(60)
        assert run.stream_credits() == 1
        # The second minute is charged and the third has begun, which takes the last
        # credit: the stream stops here, rather than run into a minute it cannot pay.
        run.clocks.advance(60)
        await wait_until(
            lambda: run.fake_ws.connections == 0, timeout=10, what="the stream to stop"
        )
        assert run.ws.health.exhausted
        assert "budget is spent" in run.ws.health.last_error
        # It stays stopped: each attempt is refused before it connects.
        await wait_until(
            lambda: (
                (
                    run.metrics.registry.get_sample_value(
                        "cryptostream_ws_reconnects_total", {"reason": "spent"}
                    )
                    or 0
                )
                >= 3
            ),
            what="refused attempts",
        )
        assert run.fake_ws.handshakes == 1
        used = run.budget.ledger.current()
        assert used.by_kind == {"refresh": REFRESH, "stream": 3}
        assert used.credits == budget
        if binance is not None:
            # The chain hands over to Binance at once.
            await wait_until(lambda: run.out.count("binance") > 0, what="Binance's prices")
            assert run.source.health.healthy
            # ...and takes CoinCap back at the reset.
            _, end = run.budget.ledger.bounds()
            run.clocks.wall_offset = end.timestamp() - run.clocks.wall() + 1
            await run.connected(2)
            assert isinstance(run.source, FailoverSource)
            chain = run.source
            await wait_until(lambda: chain.active == 0, what="CoinCap back")
            # (The stop charges this connection's started minute to the new period.)
        await run.stop()

    record = on_disk(run.config)[key]
    assert record.credits == budget
    doc = credits_cli(run.config, env)
    plan = doc["plan"]
    assert (plan["used"], plan["left"], plan["exhausted"]) == (budget, 0, "budget")
    assert doc["periods"][key]["by_kind"] == {"refresh": REFRESH, "stream": 3}


async def test_a_stream_that_connects_again_after_a_spent_answer_clears_it(
    make_config: ConfigFactory,
) -> None:
    """402 at the handshake says the allowance is spent: no attempt but one probe an
    hour. A probe that connects says it no longer is, as a good REST answer does."""
    env = {"CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "1000"}
    async with running(make_config, env) as run:
        run.fake_ws.inject(Fault.status(402))
        run.fake_ws.drop()
        await wait_until(lambda: run.ws.health.exhausted, what="the spent answer")
        assert run.budget.ledger.current().spent_at is not None
        assert run.budget.exhausted == "coincap"
        # The hourly probe connects, and prices flow again.
        run.clocks.advance(3600)
        await run.connected(2)  # a refused handshake opens no connection
        assert run.budget.ledger.current().spent_at is None
        assert run.budget.exhausted is None
        assert not run.ws.health.exhausted
