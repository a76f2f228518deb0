"""The failover chain with scripted in-process sources (the HTTP and websocket
sources have their own tests; here only the switching logic is under test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cryptostream.metrics import Metrics
from cryptostream.source.base import Emit, SourceHealth
from cryptostream.source.failover import FailoverSource
from cryptostream.tick import Tick
from tests.conftest import wait_until


class Scripted:
    """A source that gives one bitcoin tick every 20 ms while ``up``, fails while not."""

    def __init__(
        self,
        name: str,
        *,
        up: bool = True,
        repeat_every: int = 0,
        local_time: bool = False,
        step_back_after: int = 0,
    ) -> None:
        self.name = name
        self.local_time = local_time
        # After this many ticks the times jump back an hour (the clock that stamps them
        # stepped back).
        self._step_back_after = step_back_after
        self.health = SourceHealth()
        self.up = up
        self.runs = 0
        self.crash_next = False
        self.running = False
        self._repeat_every = repeat_every
        self._n = 0
        self.emitted: list[Tick] = []

    async def run(self, emit: Emit) -> None:
        self.runs += 1
        self.running = True
        try:
            while True:
                await asyncio.sleep(0.02)
                if self.crash_next:
                    self.crash_next = False
                    raise RuntimeError("a bug in the source")
                if not self.up:
                    self.health.failed("down")
                    continue
                self._n += 1
                repeat = self._repeat_every and self._n % self._repeat_every == 0
                ts = self.emitted[-1].timestamp if repeat and self.emitted else 10000.0 + self._n
                if self._step_back_after and self._n > self._step_back_after and not repeat:
                    ts -= 3600
                tick = Tick(ts, "bitcoin", "BTC", "Bitcoin", f"{ts}", None, None, None, self.name)
                self.health.ok()
                self.emitted.append(tick)
                emit([tick])
        finally:
            self.running = False


class Out:
    def __init__(self) -> None:
        self.ticks: list[Tick] = []

    def __call__(self, ticks: list[Tick]) -> None:
        self.ticks.extend(ticks)

    def sources(self) -> list[str]:
        """The run-length sequence of sources, e.g. ['a', 'b', 'a']."""
        seq: list[str] = []
        for t in self.ticks:
            if not seq or seq[-1] != t.source:
                seq.append(t.source)
        return seq


@contextlib.asynccontextmanager
async def chain(
    *sources: Scripted, after: float = 0.2
) -> AsyncIterator[tuple[FailoverSource, Out, Metrics]]:
    metrics = Metrics()
    out = Out()
    failover = FailoverSource(list(sources), after, metrics, check_every=0.02)
    task = asyncio.create_task(failover.run(out))
    try:
        yield failover, out, metrics
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def switches(metrics: Metrics, frm: str, to: str) -> float:
    value = metrics.registry.get_sample_value(
        "cryptostream_source_switches_total", {"from": frm, "to": to}
    )
    return value or 0.0


def active(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value("cryptostream_source_active", {"source": name})


async def test_fails_over_after_the_set_time_and_back_when_preferred_recovers() -> None:
    a, b = Scripted("a"), Scripted("b")
    async with chain(a, b, after=0.2) as (failover, out, metrics):
        await wait_until(lambda: len(out.ticks) >= 3, what="ticks from a")
        assert not b.running, "a fallback only runs when needed"
        a.up = False
        await wait_until(lambda: failover.active_name == "b", what="failover to b")
        # Not before a had failed for failover_after.
        assert a.health.failing_for() >= 0.2
        await wait_until(lambda: out.ticks[-1].source == "b", what="ticks from b")
        assert a.running, "the failed source keeps probing"
        assert active(metrics, "b") == 1 and active(metrics, "a") == 0
        a.up = True
        await wait_until(lambda: failover.active_name == "a", what="back to a")
        await wait_until(lambda: not b.running, what="b stopped")
        n = len(out.ticks)
        await wait_until(lambda: len(out.ticks) >= n + 3, what="ticks from a again")
    assert out.sources() == ["a", "b", "a"]
    assert switches(metrics, "a", "b") == 1 and switches(metrics, "b", "a") == 1
    # Everything a source handed over while active went out, once, in order.
    keys = [(t.source, t.timestamp) for t in out.ticks]
    assert len(keys) == len(set(keys))
    b_out = [t for t in out.ticks if t.source == "b"]
    assert b_out == b.emitted, "every tick b gave while active was passed on"


async def test_a_short_failure_does_not_switch() -> None:
    a, b = Scripted("a"), Scripted("b")
    async with chain(a, b, after=0.5) as (_failover, out, metrics):
        await wait_until(lambda: len(out.ticks) >= 2, what="ticks")
        a.up = False
        # Up again as soon as a has seen a failure: a failure far shorter than
        # failover_after however slow the machine, where a fixed sleep would not be.
        await wait_until(lambda: a.health.failing_since is not None, what="a failing")
        a.up = True
        n = len(out.ticks)
        await wait_until(lambda: len(out.ticks) >= n + 3, what="a again")
    assert out.sources() == ["a"] and b.runs == 0
    assert switches(metrics, "a", "b") == 0


async def test_three_sources_step_down_and_climb_back_one_by_one() -> None:
    a, b, c = Scripted("a", up=False), Scripted("b", up=False), Scripted("c")
    async with chain(a, b, c, after=0.1) as (failover, out, metrics):
        await wait_until(lambda: failover.active_name == "c", what="down to c")
        await wait_until(lambda: len(out.ticks) >= 2, what="ticks from c")
        assert a.running and b.running
        b.up = True
        await wait_until(lambda: failover.active_name == "b", what="up to b")
        await wait_until(lambda: not c.running, what="c stopped")
        a.up = True
        await wait_until(lambda: failover.active_name == "a", what="up to a")
        await wait_until(lambda: not b.running, what="b stopped")
        n = len(out.ticks)
        await wait_until(lambda: len(out.ticks) > n, what="ticks from a")
    assert out.sources() == ["c", "b", "a"]
    for frm, to in [("a", "b"), ("b", "c"), ("c", "b"), ("b", "a")]:
        assert switches(metrics, frm, to) == 1, (frm, to)


async def test_the_last_source_stays_active_when_all_fail() -> None:
    a, b = Scripted("a"), Scripted("b", up=False)
    async with chain(a, b, after=0.1) as (failover, out, _metrics):
        await wait_until(lambda: len(out.ticks) >= 1, what="a tick")
        a.up = False
        await wait_until(lambda: failover.active_name == "b", what="to b")
        # Both failing for three times failover_after: nowhere further to go.
        await wait_until(
            lambda: min(a.health.failing_for(), b.health.failing_for()) >= 0.3,
            what="both failing",
        )
        assert failover.active_name == "b"
        a.up = True
        await wait_until(lambda: failover.active_name == "a", what="back to a")


async def test_repeated_observations_are_dropped_and_counted() -> None:
    a = Scripted("a", repeat_every=3)  # every third tick repeats the previous one
    async with chain(a) as (_failover, out, metrics):
        await wait_until(lambda: len(a.emitted) >= 9, what="ticks")
    times = [t.timestamp for t in out.ticks]
    assert times == sorted(set(times)), "no observation twice"
    repeated = metrics.registry.get_sample_value(
        "cryptostream_ticks_repeated_total", {"source": "a"}
    )
    assert repeated == len(a.emitted) - len(out.ticks) >= 3


async def test_a_clock_step_back_is_followed_for_local_time_sources_only() -> None:
    """Kraken and the price stream stamp ticks with this machine's clock: after it
    steps back an hour, their ticks are an hour "older" than the last ones. That is
    the corrected time, not a repeat: passed on (repeats are still dropped). A source
    stamping with its own API time that jumps back is still filtered."""
    local = Scripted("a", repeat_every=4, local_time=True, step_back_after=5)
    async with chain(local) as (_failover, out, metrics):
        await wait_until(lambda: len(local.emitted) >= 16, what="ticks after the step")
    times = [t.timestamp for t in out.ticks]
    after = [t for t in times if t < 10000.0]
    assert len(after) >= 6, "prices go on after the step"
    assert after == sorted(set(after)), "and repeats are still dropped"
    repeated = metrics.registry.get_sample_value(
        "cryptostream_ticks_repeated_total", {"source": "a"}
    )
    assert repeated == len(local.emitted) - len(out.ticks) >= 3

    api = Scripted("a", local_time=False, step_back_after=5)
    async with chain(api) as (_failover, out, _metrics):
        await wait_until(lambda: len(api.emitted) >= 12, what="ticks")
    assert [t.timestamp for t in out.ticks] == [10001.0 + i for i in range(5)]


async def test_a_crashing_source_is_restarted_and_failover_still_works() -> None:
    a, b = Scripted("a"), Scripted("b")
    async with chain(a, b, after=0.1) as (failover, out, metrics):
        await wait_until(lambda: len(out.ticks) >= 1, what="a tick")
        a.crash_next = True
        await wait_until(lambda: failover.active_name == "b", what="failover after the crash")
        failures = metrics.registry.get_sample_value(
            "cryptostream_task_failures_total", {"task": "source-a"}
        )
        assert failures == 1
        await wait_until(lambda: a.runs == 2, timeout=10, what="a restarted")
        await wait_until(lambda: failover.active_name == "a", what="back to a")


async def test_a_chain_of_one_never_switches() -> None:
    a = Scripted("a")
    async with chain(a, after=0.05) as (failover, out, metrics):
        await wait_until(lambda: len(out.ticks) >= 2, what="ticks")
        a.up = False
        await wait_until(lambda: a.health.failing_for() >= 0.2, what="a failing past the limit")
        assert failover.active_name == "a"
        assert (
            metrics.registry.get_sample_value("cryptostream_source_healthy", {"source": "a"}) == 0
        )
