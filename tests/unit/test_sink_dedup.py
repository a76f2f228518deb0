"""The sink's duplicate window: the last RECENT_KEYS ticks of each asset, across batches."""

from __future__ import annotations

import csv
import resource
import signal
from pathlib import Path

import pytest

from cryptostream.layout import DATA_FILE
from cryptostream.metrics import Metrics
from cryptostream.sink import csvsink
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.tick import Tick

TOPIC = "prices"
BASE = 1_741_305_600.0  # 2025-03-07T00:00:00Z: "ts" below is seconds after it, and the price


def message(asset: str, ts: float) -> bytes:
    when = BASE + ts
    return Tick(
        when, asset, asset[:3].upper(), asset.title(), f"{ts:g}", None, None, None
    ).to_json()


class Feed:
    """Writes ticks at the next offsets, like the consumer does."""

    def __init__(self, sink: CsvSink) -> None:
        self.sink = sink
        self.offset = 0

    def write(self, *ticks: tuple[str, float]) -> tuple[int, int]:
        records = []
        for asset, ts in ticks:
            records.append(Record(0, self.offset, message(asset, ts)))
            self.offset += 1
        result = self.sink.write(records)
        return result.written, result.duplicates


def prices(data_dir: Path) -> list[tuple[str, str]]:
    with (data_dir / DATA_FILE).open(newline="") as fh:
        return [(row[1], row[4]) for row in list(csv.reader(fh))[1:]]


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvsink, "RECENT_KEYS", 3)


def test_a_copy_inside_the_window_is_dropped_one_outside_is_written(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    feed = Feed(sink)
    assert feed.write(("bitcoin", 1), ("bitcoin", 2), ("ethereum", 1)) == (3, 0)
    # Window of bitcoin: 1 2 3 4 (3 kept) -> 2 3 4; in one batch, 4 twice.
    assert feed.write(("bitcoin", 3), ("bitcoin", 4), ("bitcoin", 4)) == (2, 1)
    # 1 left the window (written again), 2 is still in it (dropped); ethereum's own window.
    assert feed.write(("bitcoin", 2), ("bitcoin", 1), ("ethereum", 1)) == (1, 2)
    # Now 3 4 1: 2 slid out, 1 is in.
    assert feed.write(("bitcoin", 2), ("bitcoin", 1)) == (1, 1)
    sink.close()
    assert [p for a, p in prices(tmp_path) if a == "bitcoin"] == ["1", "2", "3", "4", "1", "2"]


def test_the_window_survives_a_restart(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    feed = Feed(sink)
    feed.write(("xrp", 1), ("xrp", 2), ("xrp", 3), ("xrp", 4))
    sink.close()
    again = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    again.open()
    feed.sink = again
    assert feed.write(("xrp", 4), ("xrp", 2), ("xrp", 1)) == (1, 2)
    again.close()


def test_a_batch_that_failed_does_not_count_as_seen(tmp_path: Path) -> None:
    """Keys of a batch that never committed must not make its retry look like copies."""
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    sink.write([Record(0, 0, message("solana", 1))])
    batch = [Record(0, 1, message("solana", 2)), Record(0, 2, message("solana", 3))]
    # A real write failure: the file size limit makes the append fail with EFBIG.
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, ((tmp_path / DATA_FILE).stat().st_size + 10, hard))
    try:
        with pytest.raises(csvsink.SinkWriteError):
            sink.write(batch)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    result = sink.write(batch)
    assert (result.written, result.duplicates) == (2, 0)
    sink.close()
    assert prices(tmp_path) == [("solana", "1"), ("solana", "2"), ("solana", "3")]


def test_a_batch_larger_than_the_window_keeps_only_its_newest_keys(tmp_path: Path) -> None:
    """Catching up on one asset, a batch can hold more ticks than the window."""
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    feed = Feed(sink)
    assert feed.write(*(("bitcoin", t) for t in range(1, 8))) == (7, 0)
    # The window is 5 6 7: 1 and 4 are outside it (written again), 7 is inside.
    assert feed.write(("bitcoin", 1), ("bitcoin", 4), ("bitcoin", 7)) == (2, 1)
    sink.close()


def test_the_window_of_an_id_the_csv_shows_with_an_apostrophe_survives_a_restart(
    tmp_path: Path,
) -> None:
    # "=cmd" is written as the cell "'=cmd" (the formula guard): read back, it is the
    # window of "=cmd" again, not of another asset.
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    feed = Feed(sink)
    feed.write(("=cmd", 1), ("=cmd", 2))
    sink.close()
    again = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    again.open()
    feed.sink = again
    assert feed.write(("=cmd", 2), ("=cmd", 3)) == (1, 1)
    again.close()
    assert [p for a, p in prices(tmp_path) if a == "'=cmd"] == ["1", "2", "3"]
