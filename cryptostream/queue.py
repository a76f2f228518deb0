"""The bounded buffer between fetcher and producer.

While Kafka is slow or down the fetcher keeps polling and ticks wait here.
When it is full the *oldest* tick is dropped (the newest prices matter most),
and every drop is counted in a metric and logged, never silent.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.tick import Tick

log = get_logger(__name__)

# Log a drop at most this often; the metric counts every one.
_DROP_LOG_EVERY = 10.0


class TickQueue:
    def __init__(self, maxsize: int, metrics: Metrics) -> None:
        self.maxsize = maxsize
        self._items: deque[Tick] = deque()
        self._not_empty = asyncio.Event()
        self._metrics = metrics
        self.dropped = 0
        self._last_drop_log = -_DROP_LOG_EVERY

    def __len__(self) -> int:
        return len(self._items)

    def put(self, tick: Tick) -> None:
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
            self._metrics.queue_dropped.inc()
            now = asyncio.get_running_loop().time()
            if now - self._last_drop_log >= _DROP_LOG_EVERY:
                self._last_drop_log = now
                log.error(
                    "queue_full_dropping_oldest", dropped_total=self.dropped, size=self.maxsize
                )
        self._items.append(tick)
        self._not_empty.set()
        self._metrics.queue_depth.set(len(self._items))

    async def get_batch(self, max_items: int) -> list[Tick]:
        """Wait for a tick (or :meth:`wake`), then take up to ``max_items``; may be empty."""
        if not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        batch = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
        self._metrics.queue_depth.set(len(self._items))
        return batch

    def wake(self) -> None:
        """Wake a waiting :meth:`get_batch` caller without an item (used on close)."""
        self._not_empty.set()

    def drain_all(self) -> list[Tick]:
        items = list(self._items)
        self._items.clear()
        self._metrics.queue_depth.set(0)
        return items
