"""Fetcher stage: poll the price API on a fixed grid, validate, stamp firstValue, enqueue."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable

from cryptostream.config import Config
from cryptostream.firstvalue import FirstValues
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.queue import TickQueue
from cryptostream.source.coincap import ApiError, AssetsResponse, CoinCapClient
from cryptostream.tick import InvalidTick, Tick, tick_from_api

log = get_logger(__name__)


async def poll_slots(
    interval: float, clock: Callable[[], float] | None = None
) -> AsyncIterator[int]:
    """Yield slot numbers on the grid ``start + k * interval``.

    The grid does not drift: a slow poll delays only itself. Slots that a poll
    overran are skipped, not bunched up, and reported by a jump in the number.
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


class Fetcher:
    def __init__(
        self,
        config: Config,
        client: CoinCapClient,
        queue: TickQueue,
        first_values: FirstValues,
        metrics: Metrics,
    ) -> None:
        self._assets = config.source.assets
        self._interval = config.source.poll_interval
        self._client = client
        self._queue = queue
        self._first_values = first_values
        self._metrics = metrics
        # (asset, reason) pairs already logged: a record that stays bad is said once.
        self._reported: set[tuple[str, str]] = set()
        self._missing_reported: set[str] = set()
        self.polls = 0
        self.last_success = 0.0

    async def run(self) -> None:
        log.info("fetcher_started", assets=list(self._assets), interval=self._interval)
        expected = 0
        async for slot in poll_slots(self._interval):
            if slot > expected:
                self._metrics.polls_missed.inc(slot - expected)
                log.warning("polls_skipped", count=slot - expected, reason="previous poll overran")
            expected = slot + 1
            await self.poll_once()

    async def poll_once(self) -> int:
        """Fetch once (with retries) and enqueue the valid ticks; returns their number."""
        self.polls += 1
        try:
            response = await self._client.fetch(self._assets)
        except ApiError as exc:
            log.error("poll_failed", kind=exc.kind, error=str(exc))
            return 0
        self.last_success = asyncio.get_running_loop().time()
        ticks = self.to_ticks(response)
        for tick in ticks:
            self._queue.put(self._first_values.assign(tick))
        self._metrics.ticks_fetched.inc(len(ticks))
        return len(ticks)

    def to_ticks(self, response: AssetsResponse) -> list[Tick]:
        ticks: list[Tick] = []
        seen: set[str] = set()
        for record in response.records:
            asset = record.get("id") if isinstance(record, dict) else None
            label = asset if isinstance(asset, str) and asset else "?"
            try:
                tick = tick_from_api(record, response.timestamp)
            except InvalidTick as exc:
                self._metrics.ticks_invalid.labels(exc.reason).inc()
                if (label, exc.reason) not in self._reported:
                    self._reported.add((label, exc.reason))
                    log.warning("record_invalid", asset=label, reason=exc.reason, detail=exc.detail)
                continue
            if tick.id not in self._assets or tick.id in seen:
                self._metrics.ticks_invalid.labels("unexpected_asset").inc()
                continue
            seen.add(tick.id)
            # A record that was bad and is good again may be reported again later.
            self._reported = {r for r in self._reported if r[0] != tick.id}
            ticks.append(tick)
        missing = [a for a in self._assets if a not in seen and a not in self._missing_reported]
        if missing and not any(r[0] in missing for r in self._reported):
            self._missing_reported.update(missing)
            log.warning("assets_not_in_response", assets=missing, hint="check source.assets ids")
        return ticks
