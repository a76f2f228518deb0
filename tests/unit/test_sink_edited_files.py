"""Files a person touched: the real sink on real files.

A line appended by hand, a file saved over by an editor, a file emptied or
deleted, while the sink runs or while it is stopped. The policy (see
docs/reliability.md, "Files a person touched"): before each append, and on
start, the sink compares the file with what it recorded; a file a person changed
is kept untouched under an ``.edited-<UTC time>`` name, a fresh one is started,
one error event and a metric say so, and only the sink's own uncommitted tail is
ever cut.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import orjson
import pytest

from cryptostream.csvrow import HEADER
from cryptostream.layout import DATA_FILE, DEAD_LETTER_FILE, SINK_STATE_FILE
from cryptostream.metrics import Metrics
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.tick import Tick

TOPIC = "prices"
BASE = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = "2023-11-14"
DAILY = f"history/ticks/{DAY}.csv"
#: The sink's clock: shortly after the ticks (names of set-aside files come from it).
NOW = BASE + 600.0
POISON = b"not json"


def tick(offset: int, price: str | None = None) -> Tick:
    p = price or f"{100 + offset}.5"
    return Tick(BASE + offset, "bitcoin", "BTC", "Bitcoin", p, "-1.5", None, None)


def batch(start: int, count: int, poison: tuple[int, ...] = ()) -> list[Record]:
    return [
        Record(0, o, POISON if o in poison else tick(o).to_json())
        for o in range(start, start + count)
    ]


def open_sink(data_dir: Path) -> CsvSink:
    sink = CsvSink(data_dir, TOPIC, Metrics(), clock=lambda: NOW)
    sink.open()
    return sink


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def prices(path: Path) -> list[str]:
    rows = csv_rows(path)
    assert rows[0] == HEADER.rstrip().split(",")
    assert all(len(r) == 8 for r in rows), [r for r in rows if len(r) != 8]
    return [r[4] for r in rows[1:]]


def set_aside(sink: CsvSink, file: str, reason: str) -> float:
    return float(sink.metrics.files_set_aside.labels(file, reason)._value.get())


def edited(data_dir: Path, pattern: str) -> list[Path]:
    return sorted(data_dir.glob(pattern))


def save_over(path: Path, content: bytes) -> None:
    """What Excel or an editor does on "Save": a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".~tmp")
    tmp.write_bytes(content)
    tmp.replace(path)


# -- 1. a line appended by hand --------------------------------------------------------


def test_a_line_appended_while_running_is_set_aside_before_the_next_append(
    tmp_path: Path,
) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3))
    with (tmp_path / DATA_FILE).open("ab") as fh:  # echo note >> crypto_data.csv
        fh.write(b"note\n")
    theirs = (tmp_path / DATA_FILE).read_bytes()
    sink.write(batch(3, 2))
    sink.close()
    again = open_sink(tmp_path)  # the restart that used to cut and glue
    again.write(batch(5, 1))
    again.close()

    kept = edited(tmp_path, "crypto_data.edited-*.csv")
    assert [p.name for p in kept] == ["crypto_data.edited-20231114T222320Z.csv"]
    assert kept[0].read_bytes() == theirs  # untouched, the note included: 0 bytes cut
    assert prices(tmp_path / DATA_FILE) == ["103.5", "104.5", "105.5"]
    assert prices(tmp_path / DAILY) == [f"{100 + o}.5" for o in range(6)]
    assert set_aside(sink, "crypto_data.csv", "appended") == 1
    assert set_aside(again, "crypto_data.csv", "appended") == 0  # nothing more on restart


def test_a_line_appended_while_stopped_is_never_cut(tmp_path: Path) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3))
    sink.close()
    with (tmp_path / DATA_FILE).open("ab") as fh:  # no newline: the next row would glue on
        fh.write(b"checked by Ann")
    theirs = (tmp_path / DATA_FILE).read_bytes()
    again = open_sink(tmp_path)
    again.write(batch(3, 2))
    again.close()

    [kept] = edited(tmp_path, "crypto_data.edited-*.csv")
    assert kept.read_bytes() == theirs
    assert prices(tmp_path / DATA_FILE) == ["103.5", "104.5"]
    assert set_aside(again, "crypto_data.csv", "appended") == 1


def test_the_sinks_own_uncommitted_batch_is_still_cut_on_start(tmp_path: Path) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3))
    committed = (tmp_path / SINK_STATE_FILE).read_bytes()
    sink.write(batch(3, 2))
    sink.close()
    # Killed after the appends, before the state's rename: the batch did not commit.
    (tmp_path / SINK_STATE_FILE).write_bytes(committed)
    again = open_sink(tmp_path)
    assert again.committed_offsets() == {0: 3}
    again.write(batch(3, 2))  # Kafka delivers it again
    again.close()
    assert prices(tmp_path / DATA_FILE) == [f"{100 + o}.5" for o in range(5)]
    assert edited(tmp_path, "**/*.edited-*") == []


def test_a_line_appended_after_the_sinks_uncommitted_batch_is_kept(tmp_path: Path) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3))
    committed = (tmp_path / SINK_STATE_FILE).read_bytes()
    sink.write(batch(3, 2))
    sink.close()
    (tmp_path / SINK_STATE_FILE).write_bytes(committed)  # the batch did not commit ...
    with (tmp_path / DATA_FILE).open("ab") as fh:  # ... and a person appended after it
        fh.write(b"note\n")
    theirs = (tmp_path / DATA_FILE).read_bytes()
    again = open_sink(tmp_path)
    again.write(batch(3, 2))
    again.close()
    [kept] = edited(tmp_path, "crypto_data.edited-*.csv")
    assert kept.read_bytes() == theirs
    assert prices(tmp_path / DATA_FILE) == ["103.5", "104.5"]
    assert prices(tmp_path / DAILY) == [f"{100 + o}.5" for o in range(5)]


# -- 2. a file replaced by "Save" -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label", "pattern"),
    [
        (DATA_FILE, "crypto_data.csv", "crypto_data.edited-*.csv"),
        (DAILY, "daily", f"history/edited/{DAY}.edited-*.csv"),
        (DEAD_LETTER_FILE, "dead_letters.jsonl", "errors/dead_letters.edited-*.jsonl"),
    ],
)
def test_a_file_saved_over_is_noticed_before_the_next_append(
    tmp_path: Path, name: str, label: str, pattern: str
) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3, poison=(1,)))
    path = tmp_path / name
    theirs = path.read_bytes().replace(b"\n", b"\r\n") + b"saved by Excel\r\n"
    save_over(path, theirs)
    sink.write(batch(3, 3, poison=(4,)))
    sink.close()

    [kept] = edited(tmp_path, pattern)
    assert kept.read_bytes() == theirs
    assert set_aside(sink, label, "replaced") == 1
    if name == DEAD_LETTER_FILE:
        assert [orjson.loads(line)["offset"] for line in path.read_bytes().splitlines()] == [4]
    else:
        # The rows the old (deleted) file would have swallowed are in the file Power BI reads.
        assert prices(path) == ["103.5", "105.5"]
    if name == DAILY:
        # The fresh daily file's firstValue is its own first row's price.
        assert {r[6] for r in csv_rows(path)[1:]} == {"103.5"}
    again = open_sink(tmp_path)  # and a restart finds everything in order
    again.close()
    assert set_aside(again, label, "replaced") == 0
    assert len(edited(tmp_path, "**/*.edited-*")) == 1


def test_a_daily_file_set_aside_is_not_read_as_a_day(tmp_path: Path) -> None:
    """Kept outside history/ticks: Power BI, the candles and the sink list that folder."""
    sink = open_sink(tmp_path)
    sink.write(batch(0, 2))
    save_over(tmp_path / DAILY, (tmp_path / DAILY).read_bytes() + b"my note\n")
    sink.write(batch(2, 1))
    sink.close()
    again = open_sink(tmp_path)
    again.close()
    assert sorted(p.name for p in (tmp_path / "history/ticks").iterdir()) == [f"{DAY}.csv"]
    assert len(edited(tmp_path, "history/edited/*.csv")) == 1


# -- 3. one policy: emptied, deleted, shortened -----------------------------------------


def test_a_file_emptied_while_running_gets_its_header_and_the_next_start_works(
    tmp_path: Path,
) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3))
    os.truncate(tmp_path / DATA_FILE, 0)  # "> crypto_data.csv"
    sink.write(batch(3, 2))
    sink.close()
    again = open_sink(tmp_path)  # used to refuse the header: exit 1, in a loop
    again.write(batch(5, 1))
    again.close()
    assert prices(tmp_path / DATA_FILE) == ["103.5", "104.5", "105.5"]
    assert set_aside(sink, "crypto_data.csv", "emptied") == 1
    assert edited(tmp_path, "**/*.edited-*") == []  # an empty file holds nothing to keep


@pytest.mark.parametrize("name", [DATA_FILE, DAILY, DEAD_LETTER_FILE])
def test_a_file_deleted_while_running_is_started_afresh(tmp_path: Path, name: str) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3, poison=(1,)))
    (tmp_path / name).unlink()
    sink.write(batch(3, 3, poison=(4,)))
    sink.close()
    path = tmp_path / name
    if name == DEAD_LETTER_FILE:
        assert [orjson.loads(line)["offset"] for line in path.read_bytes().splitlines()] == [4]
    else:
        assert prices(path) == ["103.5", "105.5"]
    label = "daily" if name == DAILY else name.rpartition("/")[2]
    assert set_aside(sink, label, "deleted") == 1


def test_a_file_shortened_while_stopped_is_set_aside_not_appended_to(tmp_path: Path) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3))
    sink.close()
    lines = (tmp_path / DATA_FILE).read_bytes().splitlines(keepends=True)
    theirs = b"".join(lines[:2])  # a person deleted the last rows in an editor
    save_over(tmp_path / DATA_FILE, theirs)
    again = open_sink(tmp_path)
    again.write(batch(3, 1))
    again.close()
    [kept] = edited(tmp_path, "crypto_data.edited-*.csv")
    assert kept.read_bytes() == theirs
    assert prices(tmp_path / DATA_FILE) == ["103.5"]
    assert set_aside(again, "crypto_data.csv", "shortened") == 1


def test_two_set_asides_in_one_second_get_two_names(tmp_path: Path) -> None:
    sink = open_sink(tmp_path)  # its clock stands still: both in the same second
    sink.write(batch(0, 1))
    for offset in (1, 2):
        with (tmp_path / DATA_FILE).open("ab") as fh:
            fh.write(b"note %d\n" % offset)
        sink.write(batch(offset, 1))
    sink.close()
    names = [p.name for p in edited(tmp_path, "crypto_data.edited-*.csv")]
    assert names == [
        "crypto_data.edited-20231114T222320Z-2.csv",
        "crypto_data.edited-20231114T222320Z.csv",
    ]
    assert set_aside(sink, "crypto_data.csv", "appended") == 2


def test_an_unknown_file_in_history_ticks_is_left_alone(tmp_path: Path) -> None:
    """A copy a person made beside a daily file ("2023-11-14 - Copy.csv") is not the
    sink's: it used to be deleted on start as an uncommitted daily file."""
    sink = open_sink(tmp_path)
    sink.write(batch(0, 2))
    sink.close()
    copy = tmp_path / f"history/ticks/{DAY} - Copy.csv"
    copy.write_bytes((tmp_path / DAILY).read_bytes())
    again = open_sink(tmp_path)
    again.close()
    assert copy.read_bytes() == (tmp_path / DAILY).read_bytes()


def test_a_file_deleted_while_stopped_is_started_afresh_and_recorded(tmp_path: Path) -> None:
    sink = open_sink(tmp_path)
    sink.write(batch(0, 3))
    sink.close()
    (tmp_path / DATA_FILE).unlink()
    again = open_sink(tmp_path)
    again.close()
    # The state on disk already knows the fresh file: a crash now sets nothing aside.
    state = orjson.loads((tmp_path / SINK_STATE_FILE).read_bytes())
    assert state["files"][DATA_FILE] == len(HEADER)
    third = open_sink(tmp_path)
    third.write(batch(3, 1))
    third.close()
    assert prices(tmp_path / DATA_FILE) == ["103.5"]
    assert set_aside(again, "crypto_data.csv", "deleted") == 1
    assert edited(tmp_path, "**/*.edited-*") == []
