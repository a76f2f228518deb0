"""A chain of price sources with failover: one source's ticks are used at a time.

The chain is ordered by preference (``source.name`` then ``source.fallbacks``).

* At start only the first source runs and is *active*: its ticks go on.
* When the active source has been failing for longer than ``source.failover_after``
  seconds (its :class:`~cryptostream.source.base.SourceHealth` measures from the
  first failed request of the episode), the next source in the chain is started
  and becomes active. The failed one keeps running, as a probe, under its own
  retry policy (backoff, ``Retry-After``), so nothing is hammered.
* A source whose paid allowance is spent (its health says *exhausted*: CoinCap's
  budget or CoinCap's own answer) is handed over at once, without waiting
  ``source.failover_after``: nothing will come from it before the reset.
* The moment a source *more* preferred than the active one delivers ticks again,
  it becomes active with that very batch, and every less preferred source is
  stopped (a poll in flight is abandoned whole: its answer is never emitted).

Why this cannot emit an observation twice or lose one that was handed over: at any
instant exactly one source is active and only its ticks pass, so two sources never
both contribute, and a switch happens between two batches, never inside one. A
tick is (asset, timestamp, price); different sources stamp different times, so
they cannot collide, and within one source each (asset) must move forward in
time: a source repeating an observation it already gave (a cached answer, a
market with no new trade since the last poll) is dropped and counted in
``cryptostream_ticks_repeated_total``. Each switch is a ``source_switched`` log
event and a ``cryptostream_source_switches_total{from,to}`` count; every tick's
``source`` field says which source produced it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import tenacity

from cryptostream import clocks
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.source.base import Emit, Source, SourceHealth
from cryptostream.tick import Tick

log = get_logger(__name__)


class SourceStopped(Exception):
    """A source's ``run`` returned, which it must never do: it is restarted."""


class FailoverSource:
    name: str

    def __init__(
        self,
        sources: Sequence[Source],
        failover_after: float,
        metrics: Metrics,
        *,
        check_every: float | None = None,
    ) -> None:
        self.sources = list(sources)
        self.names = [s.name for s in self.sources]
        # For logs ("binance>kraken"); each tick names the one source that produced it.
        self.name = ">".join(self.names)
        self._after = failover_after
        self._check = check_every if check_every is not None else min(1.0, failover_after / 4)
        self._metrics = metrics
        #: Index of the source whose ticks are passed on.
        self.active = 0
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._emit: Emit | None = None
        # Newest timestamp passed on per (source, asset): the repeat filter.
        self._last_ts: dict[tuple[int, str], float] = {}

    @property
    def health(self) -> SourceHealth:
        return self.sources[self.active].health

    @property
    def active_name(self) -> str:
        return self.names[self.active]

    # -- run ---------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        for index, name in enumerate(self.names):
            self._metrics.source_active.labels(name).set(int(index == 0))
        if len(self.sources) > 1:
            log.info("failover_chain", chain=self.names, failover_after=self._after)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._start(0)
                while True:
                    await asyncio.sleep(self._check)
                    self.check()
        finally:
            self._tg = None
            self._tasks.clear()

    def _start(self, index: int) -> None:
        task = self._tasks.get(index)
        if task is not None and not task.done():
            return
        assert self._tg is not None
        self.sources[index].health.reset()
        self._tasks[index] = self._tg.create_task(
            self._run_one(index), name=f"source-{self.names[index]}"
        )

    async def _run_one(self, index: int) -> None:
        """Run one source; if it crashes (a bug, not an API error), restart it with backoff."""
        source = self.sources[index]
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(Exception),
            wait=tenacity.wait_exponential_jitter(max=30),
            before_sleep=lambda state: self._crashed(index, state),
            sleep=asyncio.sleep,
        )
        async for attempt in retrying:
            with attempt:
                await source.run(self._gate(index))
                raise SourceStopped(f"{source.name} stopped by itself")

    def _crashed(self, index: int, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        name = self.names[index]
        self.sources[index].health.failed(f"crashed: {exc!r}")
        self._metrics.task_failures.labels(f"source-{name}").inc()
        log.error(
            "source_crashed",
            source=name,
            error=repr(exc),
            restart_in=round(state.next_action.sleep if state.next_action else 0.0, 2),
            exc_info=exc,
        )

    # -- decisions ---------------------------------------------------------------------

    def check(self) -> None:
        """Periodic: update health gauges; fail over if the active source keeps failing."""
        for index, task in self._tasks.items():
            if not task.done():
                healthy = self.sources[index].health.healthy
                self._metrics.source_healthy.labels(self.names[index]).set(int(healthy))
        active = self.active
        if active + 1 >= len(self.sources):
            return
        health = self.sources[active].health
        failing = health.failing_for()
        if health.exhausted:
            self._switch(active + 1, reason="allowance_spent", detail=health.last_error)
        elif failing > self._after:
            self._switch(
                active + 1,
                reason="failing",
                detail=f"{self.names[active]} failing for {failing:.1f} s: {health.last_error}",
            )

    def _switch(self, to: int, *, reason: str, detail: str) -> None:
        frm = self.active
        self.active = to
        self._metrics.source_switches.labels(self.names[frm], self.names[to]).inc()
        self._metrics.source_active.labels(self.names[frm]).set(0)
        self._metrics.source_active.labels(self.names[to]).set(1)
        log.warning(
            "source_switched",
            from_source=self.names[frm],
            to_source=self.names[to],
            reason=reason,
            detail=detail,
        )
        if to > frm:
            self._start(to)
            return
        # Back to a preferred source: the less preferred ones are no longer needed.
        for index in [i for i in self._tasks if i > to]:
            self._tasks.pop(index).cancel()
            self._metrics.source_healthy.labels(self.names[index]).set(0)

    def _gate(self, index: int) -> Emit:
        def emit(ticks: list[Tick]) -> None:
            if index != self.active:
                if index > self.active or not ticks:
                    # Cannot happen (less preferred sources are stopped first); never
                    # let it mix sources if it somehow did.
                    log.debug("ticks_from_inactive_source", source=self.names[index])
                    return
                self._switch(index, reason="recovered", detail=f"{self.names[index]} answers again")
            self._pass(index, ticks)

        return emit

    @property
    def local_time(self) -> bool:
        return self.sources[self.active].local_time

    def _pass(self, index: int, ticks: list[Tick]) -> None:
        out: list[Tick] = []
        # A source stamping with this machine's clock jumps back when the clock steps
        # back (said once by clocks.wall): that is the corrected time, not a repeat.
        step = clocks.STEP_BACK if self.sources[index].local_time else math.inf
        for tick in ticks:
            key = (index, tick.id)
            last = self._last_ts.get(key, -math.inf)
            if tick.timestamp > last or tick.timestamp < last - step:
                self._last_ts[key] = tick.timestamp
                out.append(tick)
        repeated = len(ticks) - len(out)
        if repeated:
            self._metrics.ticks_repeated.labels(self.names[index]).inc(repeated)
            log.debug("ticks_repeated", source=self.names[index], count=repeated)
        if out:
            assert self._emit is not None
            self._emit(out)
