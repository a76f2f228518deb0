"""The real service, plus a record of every row's end-to-end latency.

This is ``cryptostream run`` (same configuration loading, logging and
:class:`~cryptostream.service.Service`) with one addition: an observer on the
sink — the hook the dashboard uses — that appends, for every row of every
durable batch, the tick's observation time and ``sink.last_write - timestamp``.
``last_write`` is the wall-clock time the sink took right after the batch's
state file was fsynced and renamed into place (the moment the rows count as
written), and ``timestamp`` is when the source observed the price (for the demo
source: ``time.time()`` when it made the tick). That difference is exactly
what the service's ``cryptostream_end_to_end_latency_seconds`` histogram
observes, per row instead of in buckets. The records go to a binary file of
float64 pairs through a small buffer, so the probe holds no growing state.

With ``--transactions FILE`` it also records every call of the sink's ``write``
(the transaction the consumer waits for, with whatever the sink does inline after
its commit point) as a float64 pair: its seconds, and the ``os.fsync`` calls the
thread made during it. The probe patches ``os.fsync`` with a counter per thread,
so it measures any tree the same way (the first release's too), without the
service's help.

    python -m bench.service_probe --latencies FILE [--transactions FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_counts = threading.local()


def _count_fsyncs() -> None:
    """``os.fsync`` counted per thread (``_counts.n``), then done as asked."""
    real = os.fsync

    def counted(fd: Any) -> None:
        _counts.n = getattr(_counts, "n", 0) + 1
        real(fd)

    os.fsync = counted


def _timed(write: Callable[..., Any], out: BinaryIO) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        fsyncs = getattr(_counts, "n", 0)
        began = time.perf_counter()
        try:
            return write(*args, **kwargs)
        finally:
            took = time.perf_counter() - began
            array("d", (took, getattr(_counts, "n", 0) - fsyncs)).tofile(out)

    return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latencies", type=Path, required=True, help="output file")
    parser.add_argument("--transactions", type=Path, help="output file of (seconds, fsyncs)")
    args = parser.parse_args()
    if args.transactions is not None:
        _count_fsyncs()

    from cryptostream import logs
    from cryptostream.config import load_config
    from cryptostream.service import Service
    from cryptostream.tick import Tick

    config = load_config(None, os.environ)
    logs.configure(config.log.level, config.log.format, secrets=config.secrets())

    async def run(out: BinaryIO, transactions: BinaryIO | None) -> int:
        service = Service(config)
        sink = service.sink
        if transactions is not None:
            # The CSV sink itself (behind the worker thread where there is one).
            csv_sink = getattr(sink, "sink", sink)
            csv_sink.write = _timed(csv_sink.write, transactions)  # type: ignore[method-assign]

        def record(ticks: list[Tick]) -> None:
            done = sink.last_write
            pairs = array("d")
            for tick in ticks:
                pairs.append(tick.timestamp)
                pairs.append(done - tick.timestamp)
            pairs.tofile(out)

        sink.subscribe(record)
        return await service.run()

    with args.latencies.open("wb") as out:
        transactions = None if args.transactions is None else args.transactions.open("wb")
        try:
            return asyncio.run(run(out, transactions))
        except KeyboardInterrupt:
            return 130
        finally:
            if transactions is not None:
                transactions.close()


if __name__ == "__main__":
    raise SystemExit(main())
