"""Fetcher stage: run the configured price source and enqueue its ticks.

The source does the talking to the outside world (and its retries); this stage
is where every tick enters the pipeline, so it is where they are counted.
``firstValue`` is not decided here: a tick may still be dropped from the full
queue or lost in a kill (see :mod:`cryptostream.firstvalue`).
"""

from __future__ import annotations

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.queue import TickQueue
from cryptostream.source.base import Source
from cryptostream.tick import Tick

log = get_logger(__name__)


class Fetcher:
    def __init__(self, source: Source, queue: TickQueue, metrics: Metrics) -> None:
        self.source = source
        self._queue = queue
        self._metrics = metrics

    async def run(self) -> None:
        log.info("fetcher_started", source=self.source.name)
        await self.source.run(self.emit)

    def emit(self, ticks: list[Tick]) -> None:
        for tick in ticks:
            self._queue.put(tick)
        self._metrics.ticks_fetched.inc(len(ticks))
