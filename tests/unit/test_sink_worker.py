"""The sink on its own thread: same transaction, observers on the loop, latency per batch."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from cryptostream.consumer import _observe_latencies
from cryptostream.layout import DATA_FILE
from cryptostream.metrics import Metrics
from cryptostream.sink.csvsink import CsvSink
from cryptostream.sink.worker import SinkWorker
from cryptostream.sinkport import BatchResult, SinkWriteError
from cryptostream.tick import Tick

TOPIC = "prices"
BASE = 1_741_305_600.0  # 2025-03-07T00:00:00Z


@dataclass(frozen=True, slots=True)
class Rec:
    """A record shaped like aiokafka's (the sink reads only these three fields)."""

    partition: int
    offset: int
    value: bytes | None


def records(first: int, count: int) -> list[Rec]:
    return [
        Rec(
            0,
            first + i,
            Tick(
                BASE + first + i, "bitcoin", "BTC", "Bitcoin", f"{100 + i}", None, None, None
            ).to_json(),
        )
        for i in range(count)
    ]


async def test_batches_are_written_on_one_worker_thread_and_observed_on_the_loop(
    tmp_path: Path,
) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    threads: set[str] = set()
    real_write = sink.write

    def spy(batch: list[Rec]) -> BatchResult:
        threads.add(threading.current_thread().name)
        return real_write(batch)

    sink.write = spy  # type: ignore[method-assign]
    worker = SinkWorker(sink)
    seen: list[tuple[str, int]] = []
    worker.subscribe(lambda ticks: seen.append((threading.current_thread().name, len(ticks))))
    await worker.open()
    assert (await worker.write(records(0, 3))).written == 3
    assert (await worker.write(records(3, 2))).written == 2
    worker.close()

    assert len(threads) == 1 and threading.current_thread().name not in threads
    loop_thread = threading.current_thread().name
    assert seen == [(loop_thread, 3), (loop_thread, 2)]
    assert sink.committed_offsets() == {0: 5}
    assert len((tmp_path / DATA_FILE).read_text().splitlines()) == 6


async def test_close_waits_for_the_batch_in_flight_even_if_its_caller_is_cancelled(
    tmp_path: Path,
) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    worker = SinkWorker(sink)
    await worker.open()
    started = threading.Event()
    release = threading.Event()
    real_write = sink.write

    def slow(batch: list[Rec]) -> BatchResult:
        started.set()
        release.wait(5)
        return real_write(batch)

    sink.write = slow  # type: ignore[method-assign]
    task = asyncio.create_task(worker.write(records(0, 4)))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    worker.close()  # the transaction completes before the files close
    assert sink.committed_offsets() == {0: 4}
    assert len((tmp_path / DATA_FILE).read_text().splitlines()) == 5


async def test_a_failed_batch_raises_the_sink_error_through_the_worker(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    worker = SinkWorker(sink)
    await worker.open()

    def failing(batch: list[Rec]) -> BatchResult:
        raise SinkWriteError("disk_full", "no space")

    sink.write = failing  # type: ignore[method-assign]
    with pytest.raises(SinkWriteError) as raised:
        await worker.write(records(0, 1))
    assert raised.value.kind == "disk_full"
    worker.close()


def test_latencies_counted_per_batch_expose_what_one_observe_per_row_does() -> None:
    done = BASE + 100
    # Latencies on bucket bounds, between them and past the last finite bound.
    offsets = [0.0005, 0.001, 0.0011, 0.005, 0.02, 0.02, 0.7, 3.0, 9.5, 1e4]
    ticks = [Tick(done - s, "a", "A", "A", "1", None, None, None) for s in offsets]
    batched, per_row = Metrics(), Metrics()
    _observe_latencies(batched, BatchResult(written=len(ticks), ticks=ticks, committed_at=done))
    for tick in ticks:
        per_row.latency.observe(done - tick.timestamp)

    def histogram(metrics: Metrics) -> list[str]:
        text = generate_latest(metrics.registry).decode()
        return [
            line
            for line in text.splitlines()
            if line.startswith("cryptostream_end_to_end_latency_seconds") and "_created" not in line
        ]

    assert histogram(batched) == histogram(per_row)
    assert any('le="+Inf"} 10.0' in line for line in histogram(batched))


def test_a_transaction_is_four_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(records(0, 10))  # creates the day's file (and fsyncs its directory)
    assert sink.candles is not None
    sink.candles.flush()  # the first batch's candles, written on their thread: done
    real_fsync = os.fsync
    count = 0

    def counting(fd: int) -> None:
        nonlocal count
        count += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    sink.write(records(10, 10))
    # crypto_data.csv, the day's file, the state file and its directory; the last
    # values file is derived and rewritten at start, so it is not fsynced (was 5). (The
    # candles' files are rewritten at most every 5 s: not in this second batch.)
    assert count == 4
    sink.close()
