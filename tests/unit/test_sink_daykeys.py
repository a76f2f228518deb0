"""DayKeys: does the committed part of a day's file hold a row? (sink.daykeys)"""

from __future__ import annotations

from pathlib import Path

from cryptostream.csvrow import HEADER, csv_line, text_cell
from cryptostream.sink.daykeys import DayKeys
from cryptostream.tick import Tick

DAY = "2025-03-07"
BASE = 1_741_305_600.0


def tick(asset: str, ts: float, price: str) -> Tick:
    return Tick(BASE + ts, asset, "SYM", "Name", price, None, None, None)


class DayFile:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / f"{DAY}.csv"
        self.path.write_text(HEADER)
        self.committed = self.path.stat().st_size
        self.skipped: list[tuple[str, str]] = []
        self.keys = DayKeys(tmp_path, self.size, lambda r, f: self.skipped.append((r, f)))

    def size(self, day: str) -> int | None:
        return self.committed if day == DAY else None

    def append(self, data: str | bytes, *, commit: bool = True) -> None:
        raw = data.encode() if isinstance(data, str) else data
        with self.path.open("ab") as fh:
            fh.write(raw)
        if commit:
            self.committed += len(raw)

    def write(self, *ticks: Tick, commit: bool = True) -> None:
        self.append("".join(map(csv_line, ticks)), commit=commit)

    def holds(self, t: Tick) -> bool:
        return self.keys.holds(text_cell(t.id), t.timestamp, t.price_usd, DAY)


def test_committed_rows_are_held_and_rows_committed_later_too(tmp_path: Path) -> None:
    f = DayFile(tmp_path)
    f.write(tick("bitcoin", 1, "10"), tick("bitcoin", 1, "11"), tick("xrp", 1, "10"))
    assert f.holds(tick("bitcoin", 1, "10")) and f.holds(tick("bitcoin", 1, "11"))
    # Another price at the same time, another time, another asset: not held.
    assert not f.holds(tick("bitcoin", 1, "12"))
    assert not f.holds(tick("bitcoin", 2, "10"))
    assert not f.holds(tick("ethereum", 1, "10"))
    f.write(tick("bitcoin", 2, "10"))
    # Appended but not committed (a batch in flight or rolled back): not held.
    f.write(tick("ethereum", 1, "10"), commit=False)
    assert f.holds(tick("bitcoin", 2, "10"))
    assert not f.holds(tick("ethereum", 1, "10"))


def test_ids_in_quoted_and_guarded_cells_are_held(tmp_path: Path) -> None:
    f = DayFile(tmp_path)
    odd = [tick("a,b", 1, "1"), tick('q"t', 1, "2"), tick("=cmd", 1, "3")]
    f.write(*odd)
    assert all(f.holds(t) for t in odd)
    assert not f.holds(tick("a", 1, "1"))


def test_a_line_a_person_wrote_is_skipped_and_reported_and_the_rest_is_held(
    tmp_path: Path,
) -> None:
    f = DayFile(tmp_path)
    f.write(tick("bitcoin", 1, "10"))
    f.append("a note typed into the file\n")
    f.append(b"\xff\xfe,bitcoin,x,y,1,2\n")
    f.write(tick("bitcoin", 2, "10"))
    assert f.holds(tick("bitcoin", 1, "10")) and f.holds(tick("bitcoin", 2, "10"))
    assert f.skipped == [("unparsable", f.path.name)] * 2


def test_a_file_shorter_than_what_was_read_is_read_again(tmp_path: Path) -> None:
    """The day's file was set aside and started again: its rows are the new file's."""
    f = DayFile(tmp_path)
    f.write(tick("bitcoin", 1, "10"), tick("bitcoin", 2, "10"))
    assert f.holds(tick("bitcoin", 2, "10"))
    f.path.write_text(HEADER)
    f.committed = f.path.stat().st_size
    f.write(tick("bitcoin", 3, "10"))
    assert f.holds(tick("bitcoin", 3, "10"))
    assert not f.holds(tick("bitcoin", 2, "10"))
    f.keys.forget_day(DAY)
    assert f.holds(tick("bitcoin", 3, "10"))


def test_a_day_without_a_file_holds_nothing(tmp_path: Path) -> None:
    keys = DayKeys(tmp_path, lambda day: None)
    assert not keys.holds("bitcoin", BASE, "1", "2025-03-08")
