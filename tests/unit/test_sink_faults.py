"""The sink's transaction when the disk fails at each step, and records it cannot write.

Disk errors are injected per call (``tests/faults/inject.py``): a failing fsync of
a data file, of a directory, a failing rename, a failing truncate in the rollback.
After each, whatever happens next — the consumer retries the batch, or the
process stops and Kafka delivers again from the sink's state — the files must
hold every committed tick once, and the state must count exactly those.
"""

from __future__ import annotations

import csv
import errno
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from cryptostream.csvrow import csv_line
from cryptostream.layout import DATA_FILE, DEAD_LETTER_FILE, LAST_VALUES_FILE
from cryptostream.layout import SINK_STATE_FILE as STATE_FILE
from cryptostream.metrics import Metrics
from cryptostream.sink import firstvalues
from cryptostream.sink.csvsink import CsvSink, Record, SinkWriteError
from cryptostream.tick import Tick
from tests.faults.inject import Crash, DiskFaults, ends_with

TOPIC = "prices"
T0 = 1_741_305_600.0  # 2025-03-07T00:00:00Z
STEP = 5000.0  # seconds between ticks: a batch of 10 crosses a UTC day
POISON = b'{"timestamp": "soon", "id": "bitcoin", "priceUsd": "1"}'


def tick(offset: int, ts: float | None = None) -> Tick:
    when = T0 + offset * STEP if ts is None else ts
    return Tick(when, "bitcoin", "BTC", "Bitcoin", f"{100 + offset}.5", "-1.5", "100.5", None)


def batch(start: int, count: int, poison: tuple[int, ...] = ()) -> list[Record]:
    return [
        Record(0, o, POISON if o in poison else tick(o).to_json())
        for o in range(start, start + count)
    ]


def data_lines(data_dir: Path, name: str = DATA_FILE) -> list[str]:
    text = (data_dir / name).read_text()
    return text.splitlines(keepends=True)[1:]


def expected_lines(ticks: list[Tick]) -> list[str]:
    """The rows the sink writes: firstValue is the price of the day's first row."""
    first: dict[tuple[str, int], str] = {}
    lines = []
    for t in ticks:
        day_first = first.setdefault((t.id, int(t.timestamp // 86400)), t.price_usd)
        lines.append(csv_line(t.with_first_value(day_first)))
    return lines


def assert_exact(data_dir: Path, records: list[Record]) -> None:
    """Reopened as after a restart: the state counts every record, and every tick
    (made by :func:`tick`) is in crypto_data.csv and its daily file once, every
    poison message dead-lettered once."""
    sink = CsvSink(data_dir, TOPIC, Metrics())
    sink.open()
    try:
        assert sink.committed_offsets() == {0: records[-1].offset + 1}
    finally:
        sink.close()
    good = [r for r in records if r.value != POISON]
    expected = expected_lines([tick(r.offset) for r in good])
    assert data_lines(data_dir) == expected
    daily: list[str] = []
    for path in sorted((data_dir / "history/ticks").glob("*.csv")):
        daily += data_lines(data_dir, f"history/ticks/{path.name}")
    assert daily == expected
    dead = (data_dir / DEAD_LETTER_FILE).read_bytes().splitlines()
    assert [orjson.loads(d)["offset"] for d in dead] == [
        r.offset for r in records if r.value == POISON
    ]


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[DiskFaults]:
    yield DiskFaults.install(monkeypatch)


def _daily(path: str) -> bool:
    return "/history/ticks/" in path and path.endswith(".csv")


# Every disk call of a batch's transaction, in order.
POINTS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "fsync crypto_data.csv": ("fsync_file", ends_with("/" + DATA_FILE)),
    "fsync daily file": ("fsync_file", _daily),
    "fsync new daily file's directory": ("fsync_dir", ends_with("/history/ticks")),
    "fsync dead letters": ("fsync_file", ends_with("dead_letters.jsonl")),
    "rename last values": ("replace", ends_with("/crypto_last_values.csv")),
    "fsync state": ("fsync_file", ends_with(".sink_state.json.tmp")),
    "rename state": ("replace", ends_with("/sink_state.json")),
    "fsync state directory": ("fsync_dir", ends_with("/.cryptostream")),
}


@pytest.mark.parametrize("then", ["retry", "restart"])
@pytest.mark.parametrize("err", [errno.EIO, errno.EINVAL], ids=["EIO", "EINVAL"])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_disk_error_at_any_step_loses_and_doubles_nothing(
    tmp_path: Path, faults: DiskFaults, point: str, err: int, then: str
) -> None:
    b1, b2, b3 = batch(0, 10), batch(10, 10, poison=(13,)), batch(20, 10)
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(b1)
    op, match = POINTS[point]
    fault = faults.add(op, match, err, times=1)
    try:
        sink.write(b2)
    except SinkWriteError:
        failed = True
    else:
        failed = False
    assert fault.fired == 1, "the fault point was never reached"
    if then == "retry":
        if failed:
            sink.write(b2)  # the consumer retries the same batch
        sink.write(b3)
        sink.close()
    else:
        # The process stops before any retry; Kafka delivers again from the sink's state.
        sink.close()
        again = CsvSink(tmp_path, TOPIC, Metrics())
        again.open()
        start = again.committed_offsets().get(0, 0)
        again.write([r for r in b2 + b3 if r.offset >= start])
        again.close()
    assert_exact(tmp_path, b1 + b2 + b3)


def test_after_the_state_rename_the_batch_counts_even_if_the_directory_fsync_fails(
    tmp_path: Path, faults: DiskFaults
) -> None:
    """The rename of the state file is the commit point: a later failure reports but
    does not roll back rows the state on disk already counts."""
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(batch(0, 10))
    faults.add("fsync_dir", ends_with("/.cryptostream"), errno.EIO, times=1)
    result = sink.write(batch(10, 10))
    assert result.written == 10
    assert sink.committed_offsets() == {0: 20}
    assert orjson.loads((tmp_path / STATE_FILE).read_bytes())["offsets"] == {"0": 20}
    assert len(data_lines(tmp_path)) == 20
    assert sink.metrics.sink_errors.labels("io_error")._value.get() == 1
    sink.close()


@pytest.mark.parametrize("truncate_failures", [1, 2])
def test_a_failed_rollback_never_appends_the_batch_twice(
    tmp_path: Path, faults: DiskFaults, truncate_failures: int
) -> None:
    """The fsync of crypto_data.csv fails after the rows were written, and cutting
    them off fails too: the retry must not append the same rows after them."""
    b1, b2, b3 = batch(0, 10), batch(10, 10), batch(20, 10)
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(b1)
    faults.add("fsync_file", ends_with("/" + DATA_FILE), errno.EIO, times=1)
    faults.add("ftruncate", ends_with("/" + DATA_FILE), errno.EIO, times=truncate_failures)
    for _ in range(truncate_failures):
        with pytest.raises(SinkWriteError):
            sink.write(b2)
    sink.write(b2)
    sink.write(b3)
    # While the process runs (what a reader sees), not only after a restart.
    keys = [line.split(",")[0] for line in data_lines(tmp_path)]
    assert len(keys) == len(set(keys)) == 30
    sink.close()
    assert_exact(tmp_path, b1 + b2 + b3)


def test_a_batch_spanning_forty_days_is_written(tmp_path: Path, faults: DiskFaults) -> None:
    """More UTC days in one batch than daily files are kept open; a failed commit of
    it rolls back every daily file, the closed ones too."""
    records = [Record(0, i, tick(i, T0 + i * 86400.0).to_json()) for i in range(40)]
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    faults.add("replace", ends_with("/sink_state.json"), errno.EIO, times=1)
    with pytest.raises(SinkWriteError):
        sink.write(records)
    result = sink.write(records)
    assert result.written == 40
    sink.close()
    days = sorted((tmp_path / "history/ticks").glob("*.csv"))
    assert len(days) == 40
    assert all(len(data_lines(tmp_path, f"history/ticks/{d.name}")) == 1 for d in days)
    again = CsvSink(tmp_path, TOPIC, Metrics())
    again.open()
    assert again.committed_offsets() == {0: 40}
    again.close()
    assert len(data_lines(tmp_path)) == 40


def test_dead_letters_of_a_first_batch_that_never_committed_are_written_once(
    tmp_path: Path, faults: DiskFaults
) -> None:
    """No state yet: the process dies after the appends, before its first state; Kafka
    delivers the same batch again after the restart."""
    records = [Record(0, 0, POISON), Record(0, 1, tick(1).to_json())]
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    faults.add("replace", ends_with("/sink_state.json"), crash=True)
    with pytest.raises(Crash):
        sink.write(records)
    faults.clear()
    sink.close()
    again = CsvSink(tmp_path, TOPIC, Metrics())
    again.open()
    start = again.committed_offsets().get(0, 0)
    again.write([r for r in records if r.offset >= start])
    again.close()
    assert_exact(tmp_path, records)


# Timestamps no clock reading can give: milliseconds, beyond datetime, negative, ...
BAD_TIMESTAMPS = [1.7e12, 1741381815000, 1e20, 1e308, -1.0, -0.0, 0.0, 1e9, 1_230_940_799.0]


def test_implausible_timestamps_are_dead_lettered_never_raised(tmp_path: Path) -> None:
    good = [tick(i) for i in range(len(BAD_TIMESTAMPS) + 1)]
    records: list[Record] = []
    for i, ts in enumerate(BAD_TIMESTAMPS):
        records.append(Record(0, len(records), good[i].to_json()))
        bad = orjson.loads(good[i].to_json())
        bad["timestamp"] = ts
        bad["priceUsd"] = "7.25"
        records.append(Record(0, len(records), orjson.dumps(bad)))
    future = orjson.loads(good[-1].to_json())
    future["timestamp"] = 4_102_444_800.0  # 2100: more than an hour ahead of the clock
    records.append(Record(0, len(records), orjson.dumps(future)))
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    result = sink.write(records)
    assert (result.written, result.dead_letters) == (len(BAD_TIMESTAMPS), len(BAD_TIMESTAMPS) + 1)
    assert sink.committed_offsets() == {0: len(records)}
    letters = [orjson.loads(d) for d in (tmp_path / DEAD_LETTER_FILE).read_bytes().splitlines()]
    assert {letter["reason"] for letter in letters} == {"timestamp_out_of_range"}
    rows = list(csv.reader(io.StringIO((tmp_path / DATA_FILE).read_text())))[1:]
    assert [r[4] for r in rows] == [t.price_usd for t in good[:-1]]
    sink.close()


def test_a_batch_that_does_not_commit_leaves_the_last_values_file_as_committed(
    tmp_path: Path, faults: DiskFaults
) -> None:
    """crypto_last_values.csv is written after the commit point: a batch whose state
    rename fails never shows its rows there, not even until the retry."""
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(batch(0, 1))
    committed = (tmp_path / LAST_VALUES_FILE).read_text()
    faults.add("replace", ends_with("/" + STATE_FILE), errno.EIO, times=1)
    with pytest.raises(SinkWriteError):
        sink.write(batch(1, 1))
    assert (tmp_path / LAST_VALUES_FILE).read_text() == committed
    sink.write(batch(1, 1))  # the retry commits, and only then shows the new row
    assert (tmp_path / LAST_VALUES_FILE).read_text() != committed
    sink.close()
    assert_exact(tmp_path, batch(0, 2))


def test_a_daily_file_that_cannot_be_read_back_fails_the_batch_not_the_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """firstValue reads the day's committed rows back; a read error is a disk error
    like any other: SinkWriteError (retried), nothing written, nothing remembered."""
    sink = CsvSink(tmp_path, TOPIC, Metrics())
    sink.open()
    sink.write(batch(0, 3))
    sink.close()
    sink = CsvSink(tmp_path, TOPIC, Metrics())  # a fresh book: the day is read back
    sink.open()
    real = firstvalues._first_prices
    calls = {"n": 0}

    def failing(path: Path, size: int, *rest: firstvalues.Skipped) -> dict[str, str]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, size, *rest)

    monkeypatch.setattr(firstvalues, "_first_prices", failing)
    with pytest.raises(SinkWriteError):
        sink.write(batch(3, 3))
    sink.write(batch(3, 3))
    sink.close()
    assert calls["n"] >= 2
    assert_exact(tmp_path, batch(0, 6))
