"""The CSV sink's transaction and recovery, on real files."""

from __future__ import annotations

import csv
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptostream.csvrow import HEADER
from cryptostream.layout import DATA_FILE, DEAD_LETTER_FILE, LAST_VALUES_FILE
from cryptostream.metrics import Metrics
from cryptostream.sink.csvsink import CsvSink, Record, SinkError, SinkWriteError
from cryptostream.tick import Tick

TOPIC = "prices"
# Small times in these tests are seconds after BASE (a tick's time must be plausible).
BASE = 1_700_000_000.0


def tick(asset: str, ts: float, price: str) -> Tick:
    when = ts if ts > BASE else BASE + ts
    return Tick(when, asset, asset[:3].upper(), asset.title(), price, "-1.5", price, None)


def rec(partition: int, offset: int, t: Tick | bytes) -> Record:
    return Record(partition, offset, t if isinstance(t, bytes) else t.to_json())


def rows(data_dir: Path, name: str = DATA_FILE) -> list[list[str]]:
    with (data_dir / name).open(newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[CsvSink]:
    s = CsvSink(tmp_path, TOPIC, Metrics())
    s.open()
    yield s
    s.close()


def test_header_written_once_and_rows_appended(sink: CsvSink, tmp_path: Path) -> None:
    sink.write([rec(0, 0, tick("bitcoin", 1.0, "10")), rec(1, 0, tick("ethereum", 1.0, "2"))])
    sink.write([rec(0, 1, tick("bitcoin", 2.0, "11"))])
    sink.close()
    again = CsvSink(tmp_path, TOPIC, Metrics())
    again.open()
    again.write([rec(0, 2, tick("bitcoin", 3.0, "12"))])
    data = (tmp_path / DATA_FILE).read_text()
    assert data.startswith(HEADER)
    assert data.count("timestamp,") == 1
    assert [r[4] for r in rows(tmp_path)[1:]] == ["10", "2", "11", "12"]
    assert again.committed_offsets() == {0: 3, 1: 1}
    again.close()


def test_last_values_hold_the_newest_tick_per_asset(sink: CsvSink, tmp_path: Path) -> None:
    sink.write(
        [
            rec(0, 0, tick("bitcoin", 5.0, "10")),
            rec(0, 1, tick("bitcoin", 4.0, "9")),
            rec(1, 0, tick("xrp", 1.0, "2")),
        ]
    )
    last = rows(tmp_path, LAST_VALUES_FILE)
    assert last[0] == HEADER.strip().split(",")
    assert [(r[1], r[4]) for r in last[1:]] == [("bitcoin", "10"), ("xrp", "2")]


def test_records_below_the_committed_offset_are_ignored(sink: CsvSink, tmp_path: Path) -> None:
    batch = [rec(0, 0, tick("bitcoin", 1.0, "10")), rec(0, 1, tick("bitcoin", 2.0, "11"))]
    sink.write(batch)
    result = sink.write(batch)  # a consumer rewind delivers the same records again
    assert result.written == 0 and result.skipped_below_offset == 2
    assert len(rows(tmp_path)) == 3


def test_upstream_duplicates_written_once(sink: CsvSink, tmp_path: Path) -> None:
    t = tick("bitcoin", 1.0, "10")
    r1 = sink.write([rec(0, 0, t), rec(0, 1, t)])
    r2 = sink.write([rec(0, 2, t)])
    assert (r1.written, r1.duplicates, r2.written, r2.duplicates) == (1, 1, 0, 1)
    assert len(rows(tmp_path)) == 2
    assert sink.committed_offsets() == {0: 3}


def test_poison_messages_go_to_the_dead_letter_file(sink: CsvSink, tmp_path: Path) -> None:
    result = sink.write(
        [
            rec(0, 0, b"garbage"),
            rec(0, 1, tick("bitcoin", 1.0, "10")),
            rec(0, 2, b'{"timestamp": 1741305600, "id": "x", "priceUsd": "NaN"}'),
        ]
    )
    assert (result.written, result.dead_letters) == (1, 2)
    lines = (tmp_path / DEAD_LETTER_FILE).read_text().splitlines()
    assert '"reason":"not_json"' in lines[0] and '"offset":0' in lines[0]
    assert '"reason":"non_finite_price"' in lines[1]
    assert sink.committed_offsets() == {0: 3}


def test_torn_tail_is_cut_on_start(tmp_path: Path) -> None:
    s = CsvSink(tmp_path, TOPIC, Metrics())
    s.open()
    s.write([rec(0, 0, tick("bitcoin", 1.0, "10"))])
    good = (tmp_path / DATA_FILE).read_bytes()
    state = (tmp_path / ".cryptostream/sink_state.json").read_bytes()
    s.write([rec(0, 1, tick("bitcoin", 2.0, "11"))])
    s.close()
    # A kill mid-write of that batch: its state never landed, its row is half written.
    (tmp_path / ".cryptostream/sink_state.json").write_bytes(state)
    os.truncate(tmp_path / DATA_FILE, len(good) + 20)
    again = CsvSink(tmp_path, TOPIC, Metrics())
    again.open()
    assert (tmp_path / DATA_FILE).read_bytes() == good
    assert again.committed_offsets() == {0: 1}
    again.close()


def test_rows_of_an_uncommitted_batch_are_cut_on_start(tmp_path: Path) -> None:
    s = CsvSink(tmp_path, TOPIC, Metrics())
    s.open()
    s.write([rec(0, 0, tick("bitcoin", 1.0, "10"))])
    state = (tmp_path / ".cryptostream/sink_state.json").read_bytes()
    s.write([rec(0, 1, tick("bitcoin", 2.0, "11"))])
    s.close()
    # Crash after the rows were fsynced but before the state was replaced:
    (tmp_path / ".cryptostream/sink_state.json").write_bytes(state)
    again = CsvSink(tmp_path, TOPIC, Metrics())
    again.open()
    assert again.committed_offsets() == {0: 1}
    again.write([rec(0, 1, tick("bitcoin", 2.0, "11"))])  # re-consumed from Kafka
    assert [r[4] for r in rows(tmp_path)[1:]] == ["10", "11"]
    again.close()


def test_csv_with_other_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / DATA_FILE).write_text("time,price\n1,2\n")
    with pytest.raises(SinkError, match="other columns"):
        CsvSink(tmp_path, TOPIC, Metrics()).open()


def test_state_of_another_topic_is_refused(tmp_path: Path) -> None:
    s = CsvSink(tmp_path, TOPIC, Metrics())
    s.open()
    s.write([rec(0, 0, tick("bitcoin", 1.0, "10"))])
    s.close()
    with pytest.raises(SinkError, match=r"another storage\.data_dir"):
        CsvSink(tmp_path, "other", Metrics()).open()


def test_failed_write_rolls_back_and_counts(sink: CsvSink, tmp_path: Path) -> None:
    """A real write failure (file size limit → EFBIG) leaves no partial row."""
    sink.write([rec(0, 0, tick("bitcoin", 1.0, "10"))])
    before = (tmp_path / DATA_FILE).read_bytes()
    size = len(before)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
    try:
        big = [rec(0, i, tick("bitcoin", float(i), "1" * 50)) for i in range(1, 20)]
        with pytest.raises(SinkWriteError):
            sink.write(big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert (tmp_path / DATA_FILE).read_bytes() == before
    assert sink.committed_offsets() == {0: 1}
    assert sink.metrics.sink_errors.labels("io_error")._value.get() == 1
    result = sink.write(big)  # space is back: the same batch goes through whole
    assert result.written == 19
    assert len(rows(tmp_path)) == 21
    assert (tmp_path / DATA_FILE).stat().st_size > size


DAY1 = 1741305600.0  # 2025-03-07T00:00:00Z
DAY2 = DAY1 + 86400


def test_daily_files_get_the_rows_of_their_utc_day(sink: CsvSink, tmp_path: Path) -> None:
    sink.write(
        [
            rec(0, 0, tick("bitcoin", DAY1 + 86399.5, "10")),
            rec(0, 1, tick("bitcoin", DAY2 + 0.25, "11")),
            rec(0, 2, tick("xrp", DAY2 + 1, "2")),
        ]
    )
    d1 = rows(tmp_path, "history/ticks/2025-03-07.csv")
    d2 = rows(tmp_path, "history/ticks/2025-03-08.csv")
    assert d1[0] == d2[0] == HEADER.strip().split(",")
    assert [r[4] for r in d1[1:]] == ["10"]
    assert [r[4] for r in d2[1:]] == ["11", "2"]
    # The same rows as crypto_data.csv, split by day.
    assert rows(tmp_path)[1:] == d1[1:] + d2[1:]


def test_daily_file_of_an_uncommitted_batch_is_removed(tmp_path: Path) -> None:
    s = CsvSink(tmp_path, TOPIC, Metrics())
    s.open()
    s.write([rec(0, 0, tick("bitcoin", DAY1 + 5, "10"))])
    state = (tmp_path / ".cryptostream/sink_state.json").read_bytes()
    s.write([rec(0, 1, tick("bitcoin", DAY2 + 5, "11")), rec(0, 2, tick("bitcoin", DAY1 + 6, "9"))])
    s.close()
    (tmp_path / ".cryptostream/sink_state.json").write_bytes(state)  # crash before the state
    again = CsvSink(tmp_path, TOPIC, Metrics())
    again.open()
    assert not (tmp_path / "history/ticks/2025-03-08.csv").exists()
    assert [r[4] for r in rows(tmp_path, "history/ticks/2025-03-07.csv")[1:]] == ["10"]
    again.close()


def test_retention_keeps_the_last_n_days_in_crypto_data(tmp_path: Path) -> None:
    now = [DAY1 + 3600]
    s = CsvSink(tmp_path, TOPIC, Metrics(), retention_days=2, clock=lambda: now[0])
    s.open()
    s.write([rec(0, i, tick("bitcoin", DAY1 - 86400 * 2 + i, str(i))) for i in range(3)])
    s.write(
        [rec(0, 3, tick("bitcoin", DAY1 - 86400 + 5, "3")), rec(0, 4, tick("bitcoin", DAY1, "4"))]
    )
    # On 2025-03-07 with 2 days kept: rows from 2025-03-06 00:00 on stay.
    assert [r[4] for r in rows(tmp_path)[1:]] == ["3", "4"]
    now[0] = DAY2 + 10  # next day: the 2025-03-06 row goes
    s.write([rec(0, 5, tick("bitcoin", DAY2 + 5, "5"))])
    assert [r[4] for r in rows(tmp_path)[1:]] == ["4", "5"]
    # The daily files keep everything; appending after a trim stays consistent.
    assert len(rows(tmp_path, "history/ticks/2025-03-05.csv")) == 4
    s.close()
    again = CsvSink(tmp_path, TOPIC, Metrics(), retention_days=2, clock=lambda: now[0])
    again.open()
    again.write([rec(0, 6, tick("bitcoin", DAY2 + 6, "6"))])
    assert [r[4] for r in rows(tmp_path)[1:]] == ["4", "5", "6"]
    again.close()


def test_the_retention_trim_lets_the_event_loop_in_every_few_thousand_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trim rewrites crypto_data.csv on the sink's thread: it sleeps briefly every
    YIELD_ROWS rows so the event loop's thread gets the GIL (measured without it: the
    loop waited up to 236 ms; docs/performance.md, Goals)."""
    from cryptostream.sink import csvsink

    monkeypatch.setattr(csvsink, "YIELD_ROWS", 10)
    now = [DAY1 + 3600]
    s = CsvSink(tmp_path, TOPIC, Metrics(), retention_days=1, clock=lambda: now[0])
    s.open()
    s.write([rec(0, i, tick("bitcoin", DAY1 + i, str(i))) for i in range(25)])
    sleeps: list[float] = []
    monkeypatch.setattr(csvsink.time, "sleep", sleeps.append)
    now[0] = DAY2 + 10  # the next day: all 25 rows of the day before go
    s.write([rec(0, 25, tick("bitcoin", DAY2 + 5, "25"))])
    s.close()
    # 26 rows read through (the day before's 25 and the new one): two pauses.
    assert sleeps == [csvsink.YIELD_SECONDS] * 2
    assert [r[4] for r in rows(tmp_path)[1:]] == ["25"]


def test_duplicates_are_caught_across_a_restart_and_the_state_stays_small(tmp_path: Path) -> None:
    s = CsvSink(tmp_path, TOPIC, Metrics())
    s.open()
    batch = [tick("bitcoin", 1000.0 + i, f"{i}.5") for i in range(3000)]
    s.write([rec(0, i, t) for i, t in enumerate(batch)])
    s.close()
    assert (tmp_path / ".cryptostream/sink_state.json").stat().st_size < 4096
    again = CsvSink(tmp_path, TOPIC, Metrics())
    again.open()
    # A producer resent its last 2,000 ticks after the restart: later offsets, same ticks.
    resent = [rec(0, 3000 + i, t) for i, t in enumerate(batch[-2000:])]
    result = again.write([*resent, rec(0, 5000, tick("bitcoin", 9999.0, "1"))])
    assert (result.written, result.duplicates) == (1, 2000)
    assert len(rows(tmp_path)) == 1 + 3001
    again.close()
