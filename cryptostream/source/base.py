"""What every price source provides, and the drift-free poll schedule they share."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.tick import InvalidTick, Tick

log = get_logger(__name__)

#: Hands a batch of validated ticks to the fetcher stage (synchronous, never blocks).
Emit = Callable[[list[Tick]], None]


class SourceHealth:
    """Whether a source is getting data, for failover decisions and the health gauge.

    A source calls :meth:`ok` after each successful request or frame and :meth:`failed`
    after each failed one. ``failing_since`` is the start of the current failure
    episode, so a source that keeps failing is measured from its *first* failure.
    """

    __slots__ = ("_clock", "exhausted", "failing_since", "last_error", "last_ok")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget the past: a source (re)started gets a fresh chance to prove itself."""
        self.last_ok: float | None = None
        self.failing_since: float | None = None
        self.last_error = ""
        #: Its paid allowance is spent: nothing comes before the reset, so a failover
        #: need not wait ``source.failover_after``.
        self.exhausted = False

    def ok(self) -> None:
        self.reset()
        self.last_ok = self._clock()

    def spent(self, error: str) -> None:
        """A failure that lasts until the billing period resets."""
        self.failed(error)
        self.exhausted = True

    def failed(self, error: str) -> None:
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = error

    @property
    def healthy(self) -> bool:
        return self.failing_since is None and self.last_ok is not None

    def failing_for(self) -> float:
        """Seconds since the current failure episode began; 0 when not failing."""
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since


class Source(Protocol):
    #: Short name, recorded in every tick's ``source`` field.
    name: str

    @property
    def local_time(self) -> bool:
        """Whether ticks carry this machine's clock (receive time), not the source's
        own: a step back of that clock is then a jump back in time, not a repeat."""
        ...

    @property
    def health(self) -> SourceHealth:
        """Updated by the source as it succeeds or fails; read by the failover."""
        ...

    async def run(self, emit: Emit) -> None:
        """Produce ticks until cancelled. Transient failures are retried inside."""
        ...


async def poll_slots(interval: float) -> AsyncIterator[int]:
    """Yield slot numbers on the grid ``start + k * interval``.

    The grid does not drift: a slow poll delays only itself. Slots that a poll
    overran are skipped, not bunched up, and show as a jump in the number.
    """
    now = asyncio.get_running_loop().time
    start = now()
    slot = 0
    while True:
        yield slot
        slot += 1
        behind = now() - (start + slot * interval)
        if behind > 0:
            slot += math.ceil(behind / interval)
        await asyncio.sleep(max(0.0, start + slot * interval - now()))


class BadRecords:
    """Bad records of one source: every one counted, each (asset, reason) logged once.

    A record that stays bad is said once, not at every poll; once the asset is
    good again (:meth:`good`) a new failure is said again.
    """

    def __init__(self, source: str, metrics: Metrics) -> None:
        self._source = source
        self._metrics = metrics
        self._said: set[tuple[str, str]] = set()

    def reject(self, asset: str, exc: InvalidTick) -> None:
        self._metrics.ticks_invalid.labels(exc.reason).inc()
        if (asset, exc.reason) not in self._said:
            self._said.add((asset, exc.reason))
            log.warning(
                "record_invalid",
                source=self._source,
                asset=asset,
                reason=exc.reason,
                detail=exc.detail,
            )

    def good(self, assets: Iterable[str]) -> None:
        if self._said:
            ok = set(assets)
            self._said = {r for r in self._said if r[0] not in ok}

    def failing(self, asset: str) -> bool:
        return any(r[0] == asset for r in self._said)
