"""Whatever a file holds, reading it back never stops the sink: the real sink on real files.

The sink reads its files back for the retention trim, firstValue, the candles
and the recovery on start. An edit in place (same file, same length: nothing for
the set-aside check to see) can put anything there. Each reader skips what it
cannot parse, counts it by reason, logs it once, and leaves the bytes alone.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from cryptostream.csvrow import HEADER
from cryptostream.dashboard.store import PriceStore, load_file
from cryptostream.layout import DATA_FILE
from cryptostream.metrics import Metrics
from cryptostream.sink import batch as sink_batch
from cryptostream.sink import csvsink
from cryptostream.sink.csvsink import CsvSink, Record, SinkWriteError
from cryptostream.tick import Tick

TOPIC = "prices"
BASE = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAILY = "history/ticks/2023-11-14.csv"
#: A line no CSV reader takes: a quoted cell over the reader's limit (128 KiB).
HUGE = b'1700000001.0,"' + b"x" * 200_000 + b'",BTC,Bitcoin,1,,1,\n'


def tick(ts: float, price: str) -> Tick:
    return Tick(ts, "bitcoin", "BTC", "Bitcoin", price, "-1.5", None, None)


def records(start: int, ticks: list[Tick]) -> list[Record]:
    return [Record(0, start + i, t.to_json()) for i, t in enumerate(ticks)]


def unreadable(sink: CsvSink, reader: str, reason: str) -> float:
    return float(sink.metrics.rows_unreadable.labels(reader, reason)._value.get())


def overwrite(path: Path, old: bytes, new: bytes) -> None:
    """Edit in place, as a hex editor or a careless script does: same file, same length."""
    assert len(old) == len(new)
    data = path.read_bytes()
    at = data.index(old)
    with path.open("r+b") as fh:
        fh.seek(at)
        fh.write(new)


def test_a_line_without_a_time_never_stops_the_retention_trim(tmp_path: Path) -> None:
    now = [BASE + 60]
    sink = CsvSink(tmp_path, TOPIC, Metrics(), retention_days=1, clock=lambda: now[0])
    sink.open()
    sink.write(records(0, [tick(BASE, "10.5"), tick(BASE + 1, "11.5")]))
    overwrite(tmp_path / DATA_FILE, b"1700000000.0,", b"noted by Ann,")
    now[0] = BASE + 86400
    # The next day's batch triggers the trim (it used to raise ValueError after every
    # commit: exit 1, restart, one batch, exit 1 ...).
    sink.write(records(2, [tick(BASE + 86400, "12.5")]))
    sink.write(records(3, [tick(BASE + 86401, "13.5")]))
    sink.close()
    lines = (tmp_path / DATA_FILE).read_bytes().splitlines(keepends=True)
    assert lines[0] == HEADER.encode()
    assert lines[1].startswith(b"noted by Ann,bitcoin,")  # kept, byte for byte
    assert [line.split(b",")[4] for line in lines[2:]] == [b"12.5", b"13.5"]
    assert unreadable(sink, "retention", "not_a_number") == 1
    assert sink.metrics.sink_errors.labels("retention")._value.get() == 0


def test_a_byte_that_is_not_utf8_in_todays_daily_file_never_stops_a_batch(
    tmp_path: Path,
) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(records(0, [tick(BASE, "10.5"), tick(BASE + 1, "11.5")]))
    sink.close()
    overwrite(tmp_path / DAILY, b",10.5,", b",1\xff.5,")
    sink = CsvSink(tmp_path, TOPIC, Metrics())  # a restart: the day is read back
    sink.open()
    # Every batch used to raise UnicodeDecodeError before its commit: nothing written again.
    sink.write(records(2, [tick(BASE + 2, "12.5")]))
    sink.write(records(3, [tick(BASE + 3, "13.5")]))
    sink.close()
    daily = (tmp_path / DAILY).read_bytes().splitlines()
    assert b",1\xff.5," in daily[1]  # the bytes are kept
    # The first row that can be read gives the day's firstValue in this file.
    assert [line.split(b",")[6] for line in daily[3:]] == [b"11.5", b"11.5"]
    assert unreadable(sink, "first_value", "not_utf8") == 1
    assert unreadable(sink, "candles", "not_a_number") == 1
    assert sink.metrics.sink_errors.labels("candles")._value.get() == 0


def test_a_line_no_csv_reader_takes_never_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / DATA_FILE).write_bytes(HEADER.encode() + HUGE)
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()  # used to raise csv.Error: field larger than field limit
    sink.write(records(0, [tick(BASE + 5, "10.5")]))
    sink.close()
    assert (tmp_path / DATA_FILE).read_bytes().startswith(HEADER.encode() + HUGE)
    assert unreadable(sink, "recovery", "unparsable") == 1


def test_the_dashboard_load_skips_a_line_no_csv_reader_takes() -> None:
    store = PriceStore()
    good = b"1700000002.0,bitcoin,BTC,Bitcoin,10.5,,10.5,\n"
    load_file(store, io.BytesIO(HEADER.encode() + HUGE + good), 1 << 30, threading.Event())
    assert store.skipped["unparsable"] == 1
    assert store.records == 1


def test_an_unexpected_error_fails_the_batch_not_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(records(0, [tick(BASE, "10.5")]))
    before = (tmp_path / DATA_FILE).read_bytes()
    real = csvsink.csv_line
    calls = {"n": 0}

    def failing(t: Tick) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real(t)

    # Both ways of deciding a batch's rows render lines (see sink.batch).
    monkeypatch.setattr(csvsink, "csv_line", failing)
    monkeypatch.setattr(sink_batch, "csv_line", failing)
    batch = records(1, [tick(BASE + 1, "11.5")])
    with pytest.raises(SinkWriteError) as caught:
        sink.write(batch)  # used to raise RuntimeError: the consumer task ended
    assert caught.value.kind == "unexpected"
    assert (tmp_path / DATA_FILE).read_bytes() == before
    assert sink.committed_offsets() == {0: 1}
    assert sink.metrics.sink_errors.labels("unexpected")._value.get() == 1
    sink.write(batch)  # the retry goes through
    sink.close()
    assert (tmp_path / DATA_FILE).read_bytes().count(b"\n") == 3
