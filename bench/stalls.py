"""Contender: the sink's two longest file jobs, with the event loop probed meanwhile.

Two scenarios, each run twice — with the sink called on the event loop (as
before it had a thread of its own) and through :class:`SinkWorker` (as the
service runs it) — with a lag probe (:mod:`bench.lag`) and a ``/healthz``
client of the service's web server in the same process:

* **restart late in a UTC day**: a daily tick file of ``--day-rows`` rows (the
  day so far), its candles already built; the sink is opened as after a
  restart and writes one batch of 5,000 ticks: that batch's candles re-read the
  whole day's file;
* **retention trim**: ``crypto_data.csv`` of ``--trim-mb`` MB of rows older
  than the retention; one batch of 5,000 ticks is written, after which the
  sink rewrites the file without them.

Needs no Kafka: the records are made here, numbered like a partition's.

    python -m bench.stalls --dir DIR --day-rows N --trim-mb MB
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import now, report
from bench.lag import healthz_summary, poll_healthz, probing
from bench.payloads import demo_ticks

BATCH = 5_000
DAY = 86_400.0


def _lines(count: int, start: float, step: float) -> list[bytes]:
    """CSV rows of ``count`` demo ticks from ``start``, ``step`` seconds apart."""
    from cryptostream.csvrow import csv_line

    return [
        csv_line(tick._replace(timestamp=start + i * step)).encode()
        for i, tick in enumerate(demo_ticks(count))
    ]


def _fill(path: Path, lines: list[bytes], target_bytes: int) -> None:
    """``path`` = the CSV header + ``lines`` repeated up to ``target_bytes``."""
    from cryptostream.csvrow import HEADER

    block = b"".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(HEADER.encode())
        written = 0
        while written < target_bytes:
            out.write(block)
            written += len(block)


def _records(start: float, first_offset: int) -> list[Any]:
    from cryptostream.sink.csvsink import Record

    return [
        Record(0, first_offset + i, tick._replace(timestamp=start + i * 0.001).to_json())
        for i, tick in enumerate(demo_ticks(BATCH, seed=7))
    ]


async def _measure(label: str, port: int, step: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    healthz: list[float] = []
    poller = asyncio.create_task(poll_healthz(port, healthz))
    await asyncio.sleep(0.2)  # the client's connection is up before the clock runs
    async with probing() as probe:
        start = now()
        await step()
        seconds = now() - start
        await asyncio.sleep(0.05)  # the probe's wake-up after the last stall
    poller.cancel()
    return {
        "scenario": label,
        "seconds": round(seconds, 2),
        "loop_lag": probe.summary(),
        "healthz": healthz_summary(healthz),
    }


async def _open_and_write(
    worker: Any, batch: list[Any], *, threaded: bool, open_first: bool = True
) -> None:
    """Open (as after a restart) and write one batch: on the worker or on the loop."""
    if threaded:
        if open_first:
            await worker.open()
        await worker.write(batch)
    else:
        if open_first:
            worker.sink.open()
        worker.sink.write(batch)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import msgspec

    from cryptostream.config import Config
    from cryptostream.days import day_name, day_start
    from cryptostream.metrics import Metrics
    from cryptostream.sink.csvsink import CsvSink
    from cryptostream.sink.worker import SinkWorker, tune_interpreter
    from cryptostream.web import WebServer

    metrics = Metrics()
    web = WebServer(
        msgspec.structs.replace(Config().web, host="127.0.0.1", port=0),
        metrics,
        lambda: (True, {}),
    )
    await web.start()
    port = web.port or 0
    tune_interpreter()  # as the service does after opening the sink
    # "Now" for the sink: 23:00 UTC of yesterday, late in that day.
    today = day_start(day_name(time.time() - DAY))
    clock_now = today + 23 * 3600

    def sink_at(data: Path, **options: Any) -> CsvSink:
        return CsvSink(data, "bench", metrics, clock=lambda: clock_now, **options)

    results: list[dict[str, Any]] = []
    for threaded in (False, True) if not args.worker_only else (True,):
        mode = "worker thread" if threaded else "on the event loop"

        # 1. A restart late in the day: the day's file, candles built, then one batch.
        data = args.dir / f"restart-{int(threaded)}"
        shutil.rmtree(data, ignore_errors=True)
        rows = _lines(min(args.day_rows, 20_000), today, 22 * 3600 / args.day_rows)
        day = day_name(today)
        per_row = sum(map(len, rows)) / len(rows)
        _fill(data / "history" / "ticks" / f"{day}.csv", rows, int(per_row * args.day_rows))
        _fill(data / "crypto_data.csv", rows, int(per_row * args.day_rows))
        first = sink_at(data)
        first.open()  # adopts the files, builds the day's candles and their watermark
        first.close()
        sink = sink_at(data)
        worker = SinkWorker(sink)
        batch = _records(clock_now - 60, 0)

        restart = partial(_open_and_write, worker, batch, threaded=threaded)
        results.append(await _measure(f"restart late in the day, {mode}", port, restart))
        worker.close()
        shutil.rmtree(data)

        # 2. The retention trim of a big crypto_data.csv (rows of a week before).
        data = args.dir / f"trim-{int(threaded)}"
        shutil.rmtree(data, ignore_errors=True)
        _fill(data / "crypto_data.csv", _lines(20_000, today - 7 * DAY, 0.01), args.trim_mb << 20)
        sink = sink_at(data, retention_days=2, candles=False)
        sink.open()
        worker = SinkWorker(sink)
        batch = _records(clock_now - 60, 0)

        trim = partial(_open_and_write, worker, batch, threaded=threaded, open_first=False)
        measured = await _measure(f"retention trim of {args.trim_mb} MB, {mode}", port, trim)
        measured["trimmed_to_bytes"] = (data / "crypto_data.csv").stat().st_size
        results.append(measured)
        worker.close()
        shutil.rmtree(data)
    await web.stop()
    return {"scenarios": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="scratch directory")
    parser.add_argument("--day-rows", type=int, default=1_000_000)
    parser.add_argument("--trim-mb", type=int, default=1024)
    parser.add_argument("--worker-only", action="store_true", help="skip the on-loop runs")
    args = parser.parse_args()
    from cryptostream import logs

    logs.configure("warning", "json", stream=sys.stderr)
    report(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
