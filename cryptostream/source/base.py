"""What every price source provides, and the drift-free poll schedule they share."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from cryptostream.tick import Tick

#: Hands a batch of validated ticks to the fetcher stage (synchronous, never blocks).
Emit = Callable[[list[Tick]], None]


class Source(Protocol):
    #: Short name, recorded in every tick's ``source`` field.
    name: str

    async def run(self, emit: Emit) -> None:
        """Produce ticks until cancelled. Transient failures are retried inside."""
        ...


async def poll_slots(
    interval: float, clock: Callable[[], float] | None = None
) -> AsyncIterator[int]:
    """Yield slot numbers on the grid ``start + k * interval``.

    The grid does not drift: a slow poll delays only itself. Slots that a poll
    overran are skipped, not bunched up, and show as a jump in the number.
    """
    now = clock or asyncio.get_running_loop().time
    start = now()
    slot = 0
    while True:
        yield slot
        slot += 1
        behind = now() - (start + slot * interval)
        if behind > 0:
            slot += math.ceil(behind / interval)
        await asyncio.sleep(max(0.0, start + slot * interval - now()))
