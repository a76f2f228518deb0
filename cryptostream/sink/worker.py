"""The CSV sink on a thread of its own: its file work never stalls the event loop.

Every call that touches the sink's files — open (recovery, the candles'
rebuild), each batch's transaction (appends, fsyncs, renames, the candles, the
retention trim), the topic's identity, close — runs on one dedicated worker
thread, one call at a time, in the order the event loop submits them. So the
transaction is exactly the one :class:`~cryptostream.sink.csvsink.CsvSink`
runs (same order of writes, same commit point, same rollback) and nothing else
touches the files meanwhile; the event loop keeps serving Kafka heartbeats,
fetches, the producer and the web server while a batch is fsynced (``fsync``
and file writes release the GIL; Python work in the worker gives the loop the
GIL back at least every switch interval, 5 ms).

Observers (the dashboard) are called on the event loop with each committed
batch's ticks, never on the worker thread.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cryptostream.logs import get_logger
from cryptostream.sink.csvsink import CsvSink
from cryptostream.sinkport import BatchResult, KafkaRecord, TopicIdentity
from cryptostream.tick import Tick

log = get_logger(__name__)

_T = TypeVar("_T")

#: Seconds a thread may keep the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL = 0.0002
#: Allocations between two collections of the youngest generation (Python's default: 700).
GC_GEN0 = 50_000


def tune_interpreter() -> None:
    """Interpreter settings for a process whose event loop shares the GIL with the sink's
    thread; called once the start-up objects exist (the service does, after opening
    the sink). Measured in docs/performance.md.

    * The switch interval: while the worker runs Python (a day's candles rebuilt after a
      restart, the retention trim), the loop waits for the GIL after every system call
      it makes (epoll, each socket read and write), up to the interval each time. With
      Python's 5 ms, and still at 1 ms and 0.5 ms, that added up to stalls of 100-600 ms
      during a rebuild of a day of 1,000,000 rows; at 0.2 ms they stay under ~30 ms
      (measured, ``bench/stalls.py``). The cost of the extra switches is only paid
      while both threads have work.
    * ``gc.freeze()``: the objects of the start-up (modules, configuration, the
      dashboard's history) are never garbage; a full collection no longer walks them,
      with the GIL held, every few batches.
    * A young generation of 50,000 objects instead of 700: a batch of 5,000 ticks
      allocates tens of thousands of short-lived objects, nearly none in cycles; fewer,
      larger young collections cost less in all (each still a few ms at most).
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)


class SinkWorker:
    """A :class:`~cryptostream.sinkport.BatchSink`: ``sink`` driven from one worker thread."""

    def __init__(self, sink: CsvSink) -> None:
        self.sink = sink
        self._executor: ThreadPoolExecutor | None = None
        self._observers: list[Callable[[list[Tick]], None]] = []

    def subscribe(self, observer: Callable[[list[Tick]], None]) -> None:
        """Call ``observer`` on the event loop with the ticks of every durable batch."""
        self._observers.append(observer)

    @property
    def opened(self) -> bool:
        return self.sink.opened

    @property
    def last_write(self) -> float:
        """Seconds since the epoch of the last durable batch (for readiness)."""
        return self.sink.last_write

    @property
    def identity(self) -> TopicIdentity | None:
        return self.sink.identity

    def committed_offsets(self) -> dict[int, int]:
        # Safe from the loop while a batch runs: the sink swaps in a new state object at
        # its commit point and never changes the offsets of one in place.
        return self.sink.committed_offsets()

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        # Shielded: a cancelled caller must not make a half-awaited call look finished
        # while the worker still runs it; close() waits for it anyway.
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return await asyncio.shield(future)

    async def open(self) -> None:
        """Recover the sink (see :meth:`CsvSink.open`). Raises :class:`SinkError`."""
        await self._call(self.sink.open)

    async def set_identity(
        self, identity: TopicIdentity, reset: dict[int, int | None] | None = None
    ) -> None:
        await self._call(self.sink.set_identity, identity, reset)

    async def write(self, records: Sequence[KafkaRecord]) -> BatchResult:
        result = await self._call(self.sink.write, records)
        if result.ticks:
            for observer in self._observers:
                try:
                    observer(result.ticks)
                except Exception:
                    log.exception("sink_observer_failed")
        return result

    async def holds_record(self, value: bytes | None) -> bool:
        return await self._call(self.sink.holds_record, value)

    def close(self) -> None:
        """Wait for the call in flight (a transaction is never cut short), then close
        the sink on its thread. Blocks: it is the last step of a shutdown."""
        executor, self._executor = self._executor, None
        if executor is None:
            self.sink.close()
            return
        try:
            executor.submit(self.sink.close).result()
        finally:
            executor.shutdown(wait=True)
