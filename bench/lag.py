"""Event-loop lag probe: how late a short sleep wakes up while the loop has other work.

A task sleeps ``interval`` seconds again and again and records how much later
than asked it woke up. A loop that something blocks (a file write, an fsync, a
parse on the loop) wakes it late by as much as the block lasted, so the
maximum is the longest stall and the p99 how often stalls happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from bench.common import now
from bench.stats import percentile


class LagProbe:
    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []

    async def run(self) -> None:
        clock = time.perf_counter
        interval = self.interval
        while True:
            start = clock()
            await asyncio.sleep(interval)
            self.lags.append(max(0.0, clock() - start - interval))

    def summary(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        if not lags:
            return {"samples": 0}
        return {
            "samples": len(lags),
            "max_ms": round(lags[-1] * 1000, 1),
            "p99_ms": round(percentile(lags, 99) * 1000, 1),
            "p50_ms": round(percentile(lags, 50) * 1000, 2),
            "over_50ms": sum(1 for lag in lags if lag > 0.05),
        }


@contextlib.asynccontextmanager
async def probing(interval: float = 0.005) -> AsyncIterator[LagProbe]:
    """Run a :class:`LagProbe` for the duration of the block."""
    probe = LagProbe(interval)
    task = asyncio.create_task(probe.run())
    await asyncio.sleep(0)  # the probe is asleep, timing, before the block runs
    try:
        yield probe
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def poll_healthz(port: int, times: list[float]) -> None:
    """GET /healthz every 20 ms; the seconds each answer took go to ``times``."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while True:
            start = now()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                await response.read()
            times.append(now() - start)
            await asyncio.sleep(0.02)


def healthz_summary(times: list[float]) -> dict[str, Any]:
    if not times:
        return {"requests": 0}
    ordered = sorted(times)
    return {
        "requests": len(ordered),
        "p99_ms": round(percentile(ordered, 99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }
