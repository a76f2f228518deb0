"""The candles' flush off the sink's transaction: written on a thread of their own,
one flush at a time, a failure reported and written again, nothing lost."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from cryptostream.metrics import Metrics
from cryptostream.sink import candles as candles_module
from cryptostream.sink.csvsink import CsvSink, Record
from tests.unit.test_candles import DAY1, candles, tick

DAY = "2025-03-07"
_real_atomic_write = candles_module.atomic_write


def on_candle_thread() -> bool:
    return threading.current_thread().name.startswith("candles")


def watermark(data_dir: Path) -> int | None:
    marks = json.loads((data_dir / ".cryptostream/candles.json").read_text())["days"]
    return marks.get(DAY)


def tick_file_size(data_dir: Path) -> int:
    return (data_dir / f"history/ticks/{DAY}.csv").stat().st_size


def write(sink: CsvSink, offset: int, ts: float, price: str) -> None:
    sink.write([Record(0, offset, tick(ts, price).to_json())])


def test_a_transaction_does_not_wait_for_the_candles_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started = threading.Event()

    def held(path: Path, data: bytes, **kw: Any) -> None:
        if on_candle_thread():
            started.set()
            assert release.wait(10), "never released"
        _real_atomic_write(path, data, **kw)

    monkeypatch.setattr(candles_module, "atomic_write", held)
    sink = CsvSink(tmp_path, "t", Metrics())
    sink.open()
    try:
        write(sink, 0, DAY1 + 10, "5")  # the first batch's flush is due at once
        assert started.wait(5), "the candles were not written on their own thread"
        # The batch is committed and the sink takes the next one while the candles'
        # writing is held: the transaction did not wait for it.
        write(sink, 1, DAY1 + 20, "7")
        assert not (tmp_path / "history/candles/1m" / f"{DAY}.csv").exists()
        assert (tmp_path / "crypto_data.csv").read_text().count("\n") == 3
    finally:
        release.set()
        sink.close()  # waits for the writing in flight, then writes what changed since
    m = candles(tmp_path, f"1m/{DAY}.csv")
    assert [(r["open"], r["close"], r["ticks"]) for r in m] == [("5", "7", "2")]
    assert watermark(tmp_path) == tick_file_size(tmp_path)


def test_one_flush_at_a_time_the_next_waits_for_a_later_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    jobs: list[str] = []

    def held(path: Path, data: bytes, **kw: Any) -> None:
        if on_candle_thread():
            jobs.append(path.name)
            assert release.wait(10), "never released"
        _real_atomic_write(path, data, **kw)

    monkeypatch.setattr(candles_module, "FLUSH_EVERY", 0.0)  # due after every batch
    monkeypatch.setattr(candles_module, "atomic_write", held)
    sink = CsvSink(tmp_path, "t", Metrics())
    sink.open()
    try:
        write(sink, 0, DAY1 + 10, "5")
        write(sink, 1, DAY1 + 20, "7")  # due, but the first is in flight: not started
        write(sink, 2, DAY1 + 30, "6")
        # Only the first file of the first flush was reached: no second flush overlaps it.
        assert jobs == [f"{DAY}.csv"]
    finally:
        release.set()
        sink.close()
    m = candles(tmp_path, f"1m/{DAY}.csv")
    assert [(r["open"], r["high"], r["close"], r["ticks"]) for r in m] == [("5", "7", "6", "3")]
    assert watermark(tmp_path) == tick_file_size(tmp_path)


def test_a_failed_background_write_is_reported_and_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = threading.Event()
    full.set()

    def disk(path: Path, data: bytes, **kw: Any) -> None:
        if on_candle_thread() and full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        _real_atomic_write(path, data, **kw)

    monkeypatch.setattr(candles_module, "FLUSH_EVERY", 0.0)
    monkeypatch.setattr(candles_module, "atomic_write", disk)
    metrics = Metrics()
    sink = CsvSink(tmp_path, "t", metrics)
    sink.open()
    assert sink.candles is not None
    errors = metrics.registry.get_sample_value
    write(sink, 0, DAY1 + 10, "5")  # its candles' writing fails on their thread
    job = sink.candles.writing
    assert job is not None
    assert isinstance(job.exception(timeout=10), OSError)
    assert errors("cryptostream_sink_errors_total", {"kind": "candles"}) is None
    full.clear()  # the disk has room again
    # The next batch settles the failed write: reported once, its days changed again.
    write(sink, 1, DAY1 + 20, "7")
    assert errors("cryptostream_sink_errors_total", {"kind": "candles"}) == 1
    assert not (tmp_path / "history/candles/1m" / f"{DAY}.csv").exists()
    write(sink, 2, DAY1 + 30, "6")  # its flush writes every day that changed
    sink.close()
    assert errors("cryptostream_sink_errors_total", {"kind": "candles"}) == 1
    # Every batch counted: the failed flushes' days were written again.
    m = candles(tmp_path, f"1m/{DAY}.csv")
    assert [(r["open"], r["high"], r["close"], r["ticks"]) for r in m] == [("5", "7", "6", "3")]
    assert watermark(tmp_path) == tick_file_size(tmp_path)
    assert (tmp_path / "crypto_data.csv").read_text().count("\n") == 4


def test_two_days_of_one_year_in_one_flush_both_reach_the_year_file(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path, "t", Metrics())
    sink.open()
    day2 = DAY1 + 86400
    sink.write(
        [Record(0, 0, tick(DAY1 + 1, "1").to_json()), Record(0, 1, tick(day2 + 1, "2").to_json())]
    )
    sink.close()
    rows = candles(tmp_path, "1d/2025.csv")
    assert [(r["start"], r["open"]) for r in rows] == [(str(int(DAY1)), "1"), (str(int(day2)), "2")]
