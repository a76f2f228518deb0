"""The sink drops copies: the window of each asset's last RECENT_KEYS rows, and the
committed daily files for a tick older than its asset's newest row."""

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


@pytest.mark.parametrize("fast_path", [True, False], ids=["by_asset", "row_by_row"])
def test_a_copy_is_dropped_inside_the_window_and_outside_it(
    tmp_path: Path, fast_path: bool
) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.fast_path = fast_path
    sink.open()
    feed = Feed(sink)
    assert feed.write(("bitcoin", 1), ("bitcoin", 2), ("ethereum", 1)) == (3, 0)
    # Window of bitcoin: 1 2 3 4 (3 kept) -> 2 3 4; in one batch, 4 twice.
    assert feed.write(("bitcoin", 3), ("bitcoin", 4), ("bitcoin", 4)) == (2, 1)
    # 1 left the window, but the day's file holds it: dropped like 2 (still in it).
    assert feed.write(("bitcoin", 2), ("bitcoin", 1), ("ethereum", 1)) == (0, 3)
    # Older than bitcoin's newest row and never written: a row.
    assert feed.write(("bitcoin", 1.5), ("bitcoin", 1)) == (1, 1)
    sink.close()
    assert [p for a, p in prices(tmp_path) if a == "bitcoin"] == ["1", "2", "3", "4", "1.5"]


@pytest.mark.parametrize("fast_path", [True, False], ids=["by_asset", "row_by_row"])
def test_a_topic_read_again_from_its_start_after_a_restart_writes_no_row_twice(
    tmp_path: Path, fast_path: bool
) -> None:
    """A reset topic followed from its beginning, a log that lost its tail: the records
    come again at new offsets, far more of them than the window holds, over two days."""
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    feed = Feed(sink)
    ticks = [(asset, 86_000 + 10 * n) for n in range(60) for asset in ("xrp", "solana")]
    assert feed.write(*ticks) == (120, 0)
    sink.close()
    again = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    again.fast_path = fast_path
    again.open()
    feed.sink = again
    assert feed.write(*ticks[:70]) == (0, 70)
    assert feed.write(*ticks[70:], ("xrp", 90_000)) == (1, 50)
    again.close()
    assert len(prices(tmp_path)) == 121


@pytest.mark.parametrize("fast_path", [True, False], ids=["by_asset", "row_by_row"])
def test_the_newest_row_of_an_asset_is_known_after_a_restart_when_rows_came_out_of_order(
    tmp_path: Path, fast_path: bool
) -> None:
    """The window read back from the file's tail holds 3 4 5, the state's last value is
    10: a copy of 10 is older than a row committed, so it is looked up, not taken."""
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    feed = Feed(sink)
    assert feed.write(("xrp", 10), ("xrp", 1), ("xrp", 2), ("xrp", 3), ("xrp", 4)) == (5, 0)
    assert feed.write(("xrp", 5)) == (1, 0)
    sink.close()
    again = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    again.fast_path = fast_path
    again.open()
    feed.sink = again
    assert feed.write(("xrp", 10), ("xrp", 11)) == (1, 1)
    again.close()
    assert [p for _, p in prices(tmp_path)] == ["10", "1", "2", "3", "4", "5", "11"]


def test_the_window_survives_a_restart(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    sink.open()
    feed = Feed(sink)
    feed.write(("xrp", 1), ("xrp", 2), ("xrp", 3), ("xrp", 4))
    sink.close()
    again = CsvSink(tmp_path, TOPIC, Metrics(), candles=False)
    again.open()
    feed.sink = again
    # 4 and 2 are in the window read back, 1 only in the day's file: all three copies.
    assert feed.write(("xrp", 4), ("xrp", 2), ("xrp", 1)) == (0, 3)
    again.close()
    assert [p for _, p in prices(tmp_path)] == ["1", "2", "3", "4"]


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
    # The window is 5 6 7: 7 is in it; 1 and 4 only in the day's file (copies all the same).
    assert [price for _, price in sink._window["bitcoin"]] == ["5", "6", "7"]
    assert feed.write(("bitcoin", 1), ("bitcoin", 4), ("bitcoin", 7)) == (0, 3)
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
    assert {price for _, price in again._known["=cmd"]} == {"1", "2"}
    feed.sink = again
    assert feed.write(("=cmd", 2), ("=cmd", 3)) == (1, 1)
    again.close()
    assert [p for a, p in prices(tmp_path) if a == "'=cmd"] == ["1", "2", "3"]
