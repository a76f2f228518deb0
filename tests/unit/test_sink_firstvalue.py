"""firstValue is decided by the sink from what the files hold, and checkable in each file:
a row's firstValue is the priceUsd of the first row of the same asset and UTC day."""

from __future__ import annotations

import csv
import datetime as dt
import errno
from pathlib import Path

import pytest

from cryptostream.metrics import Metrics
from cryptostream.sink import csvsink
from cryptostream.sink.csvsink import (
    DATA_FILE,
    LAST_VALUES_FILE,
    CsvSink,
    Record,
    SinkWriteError,
)
from cryptostream.tick import Tick

DAY1 = 1741305600.0  # 2025-03-07T00:00:00Z
DAY2 = DAY1 + 86400


def tick(asset: str, ts: float, price: str, first: str | None = None) -> Tick:
    return Tick(ts, asset, asset[:3].upper(), asset.title(), price, "1", first, None)


class Feeder:
    """Writes ticks through a real sink, one offset after the other, across restarts."""

    def __init__(self, data_dir: Path, **kw: object) -> None:
        self.data_dir = data_dir
        self.kw = kw
        self.offset = 0
        self.sink = self._open()

    def _open(self) -> CsvSink:
        sink = CsvSink(self.data_dir, "t", Metrics(), **self.kw)  # type: ignore[arg-type]
        sink.open()
        return sink

    def write(self, *ticks: Tick) -> None:
        records = []
        for t in ticks:
            records.append(Record(0, self.offset, t.to_json()))
            self.offset += 1
        self.sink.write(records)

    def restart(self) -> None:
        self.sink.close()
        self.sink = self._open()


def read(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))[1:]


def wrong_first_values(rows: list[list[str]]) -> list[list[str]]:
    """The rows breaking the rule, judged from the rows of one file alone."""
    first: dict[tuple[str, str], str] = {}
    wrong = []
    for row in rows:
        day = dt.datetime.fromtimestamp(float(row[0]), tz=dt.UTC).date().isoformat()
        expected = first.setdefault((row[1], day), row[4])
        if row[6] != expected:
            wrong.append(row)
    return wrong


def all_files(data_dir: Path) -> dict[str, list[list[str]]]:
    files = {DATA_FILE: read(data_dir / DATA_FILE)}
    for path in sorted((data_dir / "history/ticks").glob("*.csv")):
        files[path.name] = read(path)
    return files


def assert_rule_holds(data_dir: Path) -> None:
    files = all_files(data_dir)
    for name, rows in files.items():
        assert wrong_first_values(rows) == [], name
    # crypto_last_values.csv repeats rows of crypto_data.csv, firstValue included.
    main = {tuple(r) for r in files[DATA_FILE]}
    for row in read(data_dir / LAST_VALUES_FILE):
        assert tuple(row) in main, row


def test_the_first_row_in_the_file_sets_the_day_whatever_the_message_says(tmp_path: Path) -> None:
    f = Feeder(tmp_path)
    # The producer's firstValue names a price that never reached the topic (a tick
    # dropped from a full queue or lost in a kill): the files do not repeat it.
    f.write(tick("bitcoin", DAY1 + 10, "101", first="99"), tick("ethereum", DAY1 + 11, "5", "4"))
    f.write(tick("bitcoin", DAY1 + 20, "102", first="99"))
    f.restart()
    f.write(tick("bitcoin", DAY1 + 30, "103", first="99"))
    f.sink.close()
    assert [r[6] for r in read(tmp_path / DATA_FILE)] == ["101", "5", "101", "101"]
    assert_rule_holds(tmp_path)


def test_a_new_utc_day_and_a_late_tick_from_yesterday(tmp_path: Path) -> None:
    f = Feeder(tmp_path)
    f.write(tick("bitcoin", DAY1 + 100, "10"), tick("bitcoin", DAY2 - 1, "11"))
    f.write(tick("bitcoin", DAY2 + 1, "20"))
    f.restart()
    # Late and out of order: yesterday, earlier than yesterday's first row. The first
    # row of that day *in the file* stays the one that came first.
    f.write(tick("bitcoin", DAY1 + 5, "9"), tick("bitcoin", DAY2 + 2, "21"))
    # A late tick for a day that has no row yet is its own first value.
    f.write(tick("bitcoin", DAY1 - 50, "8"))
    f.sink.close()
    main = read(tmp_path / DATA_FILE)
    assert [(r[4], r[6]) for r in main] == [
        ("10", "10"),
        ("11", "10"),
        ("20", "20"),
        ("9", "10"),
        ("21", "20"),
        ("8", "8"),
    ]
    assert_rule_holds(tmp_path)


def test_a_batch_that_failed_does_not_decide_the_first_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = Feeder(tmp_path)
    real = csvsink.atomic_write

    def disk_full(path: Path, data: bytes, **kw: bool) -> None:
        if path.name == "sink_state.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data, **kw)

    monkeypatch.setattr(csvsink, "atomic_write", disk_full)
    with pytest.raises(SinkWriteError):
        f.write(tick("bitcoin", DAY1 + 1, "50"))
    monkeypatch.setattr(csvsink, "atomic_write", real)
    # Another batch comes instead (e.g. after a rebalance): its first row is the first.
    f.offset = 0
    f.write(tick("bitcoin", DAY1 + 2, "60"), tick("bitcoin", DAY1 + 3, "61"))
    f.sink.close()
    assert [(r[4], r[6]) for r in read(tmp_path / DATA_FILE)] == [("60", "60"), ("61", "60")]
    assert_rule_holds(tmp_path)


def test_retention_cuts_whole_days_so_the_rule_holds_after_a_trim(tmp_path: Path) -> None:
    now = [DAY2 + 100]
    f = Feeder(tmp_path, retention_days=2, clock=lambda: now[0])
    f.write(tick("bitcoin", DAY1 + 10, "10"), tick("bitcoin", DAY2 + 10, "20"))
    f.write(tick("bitcoin", DAY1 + 20, "11"))  # late, after the cut point of the trim
    now[0] = DAY2 + 86400 + 5  # the next UTC day: its first batch trims DAY1
    f.write(tick("bitcoin", DAY2 + 30, "21"))
    f.sink.close()
    # Only whole days older than the retention go; every kept row keeps the rule.
    assert [r[4] for r in read(tmp_path / DATA_FILE)] == ["20", "21"]
    assert_rule_holds(tmp_path)
