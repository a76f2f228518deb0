"""Fetcher stage: run the configured price source, stamp firstValue, enqueue.

The source does the talking to the outside world (and its retries); this stage
is where every tick enters the pipeline, so it is where they are counted.
"""

from __future__ import annotations

from cryptostream.firstvalue import FirstValues
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.queue import TickQueue
from cryptostream.source.base import Source
from cryptostream.tick import Tick

log = get_logger(__name__)


class Fetcher:
    def __init__(
        self,
        source: Source,
        queue: TickQueue,
        first_values: FirstValues,
        metrics: Metrics,
    ) -> None:
        self.source = source
        self._queue = queue
        self._first_values = first_values
        self._metrics = metrics

    async def run(self) -> None:
        log.info("fetcher_started", source=self.source.name)
        await self.source.run(self.emit)

    def emit(self, ticks: list[Tick]) -> None:
        for tick in ticks:
            self._queue.put(self._first_values.assign(tick))
        self._metrics.ticks_fetched.inc(len(ticks))
