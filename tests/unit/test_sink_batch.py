"""The sink's batch steps that need no file (cryptostream.sink.batch), each alone."""

from __future__ import annotations

from pathlib import Path

import orjson

from cryptostream.csvrow import csv_line
from cryptostream.days import day_name
from cryptostream.metrics import Metrics
from cryptostream.sink.batch import (
    by_day,
    day_names,
    decode,
    dedup,
    fresh_run,
    group_by_asset,
    last_lines,
    render,
    stamp_days,
)
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.tick import Tick

BASE = 1_741_305_600.0  # 2025-03-07T00:00:00Z
LATEST = BASE + 30 * 86400


def tick(asset: str, ts: float, price: str = "1", first: str | None = None) -> Tick:
    return Tick(BASE + ts, asset, asset[:3].upper(), asset.title(), price, None, first, None)


def test_decode_skips_records_below_the_offset_and_places_dead_letters_in_order() -> None:
    records = [
        Record(0, 4, tick("btc", 1).to_json()),  # below the committed 5
        Record(0, 5, tick("btc", 2).to_json()),
        Record(1, 0, b"{"),
        Record(0, 5, tick("btc", 3).to_json()),  # below this batch's own 5
        Record(1, 1, tick("eth", 1).to_json()),
    ]
    decoded = decode(records, {0: 5}, LATEST, "prices")
    assert decoded.offsets == {0: 6, 1: 2}
    assert decoded.below_offset == 2
    assert [(t.id, t.timestamp) for t in decoded.ticks] == [("btc", BASE + 2), ("eth", BASE + 1)]
    assert [r.offset for r in decoded.sources] == [5, 1]
    ((before, line, reason),) = decoded.dead
    assert (before, reason) == (1, "not_json")
    assert orjson.loads(line)["partition"] == 1


def test_fresh_run_needs_strictly_increasing_times_newer_than_the_window() -> None:
    assert fresh_run([1.0, 2.0, 3.0], 0.5)
    assert fresh_run([1.0], float("-inf"))
    assert not fresh_run([1.0, 2.0], 1.0)  # the window's newest time again
    assert not fresh_run([1.0, 1.0], 0.0)  # a time repeated in the batch
    assert not fresh_run([2.0, 1.0], 0.0)  # out of order


def test_dedup_takes_a_fresh_asset_whole_and_looks_up_the_others() -> None:
    ticks = [
        tick("btc", 10),
        tick("eth", 5),
        tick("btc", 11),
        tick("eth", 5),  # a copy of the batch's own eth row
        tick("eth", 4),  # a copy of the window
        tick("eth", 6),
    ]
    window = {"eth": {(BASE + 4, "1")}, "btc": {(BASE + 9, "1")}}
    found = dedup(ticks, group_by_asset(ticks), window, {"eth": BASE + 4, "btc": BASE + 9})
    assert found.fresh == {"btc"}
    assert found.duplicates == 2
    assert found.kept == [0, 1, 2, 5]
    # Positions among the kept rows.
    assert found.groups == {"btc": [0, 2], "eth": [1, 3]}
    assert found.keys == {
        "btc": [(BASE + 10, "1"), (BASE + 11, "1")],
        "eth": [(BASE + 5, "1"), (BASE + 6, "1")],
    }


def test_day_names_places_rows_across_midnight_and_gives_up_on_an_unplaceable_time() -> None:
    ticks = [tick("btc", -1), tick("btc", 0), tick("btc", 86399.5), tick("btc", -2)]
    days = day_names(ticks, day_name)
    assert days == ["2025-03-06", "2025-03-07", "2025-03-07", "2025-03-06"]
    assert by_day(days or []) == {"2025-03-06": [0, 3], "2025-03-07": [1, 2]}

    def unplaceable(ts: float) -> str:
        raise OverflowError("year out of range")

    assert day_names(ticks, unplaceable) is None


def test_stamp_days_asks_once_per_asset_and_day_after_checking_the_day() -> None:
    ticks = [tick("btc", 1, "10"), tick("eth", 1, "20"), tick("btc", 2, "11", first="10")]
    asked: list[tuple[str, str]] = []
    checked: list[str] = []

    def first(t: Tick, day: str) -> str:
        asked.append((t.id, day))
        assert checked[-1] == day  # the day's file is checked before its first question
        return t.price_usd

    out = stamp_days(ticks, {"D2": [1], "D1": [0, 2]}, first, checked.append)
    assert checked == ["D2", "D1"]
    assert asked == [("eth", "D2"), ("btc", "D1")]
    assert [t.first_value for t in out] == ["10", "20", "10"]
    assert out[2] is ticks[2]  # already right: the same tick
    assert out[0] == ticks[0]._replace(first_value="10")


def test_last_lines_is_each_assets_newest_row_when_not_older_than_the_stored_one() -> None:
    ticks = [tick("btc", 5), tick("btc", 7), tick("btc", 7, "2"), tick("eth", 1), tick("xrp", 3)]
    lines = render(ticks)
    assert lines == [csv_line(t) for t in ticks]
    previous = {"eth": csv_line(tick("eth", 2)), "xrp": csv_line(tick("xrp", 3, "9"))}
    groups = {"btc": [0, 1, 2], "eth": [3], "xrp": [4]}
    # Of two rows of the newest time the last counts; eth's stored row is newer; xrp's
    # row of the same time as the stored one replaces it.
    assert last_lines(ticks, lines, groups, set(), previous) == {"btc": lines[2], "xrp": lines[4]}
    assert last_lines(ticks, lines, {"btc": [0, 1]}, {"btc"}, {}) == {"btc": lines[1]}


def test_a_batch_with_an_unplaceable_time_is_decided_row_by_row(tmp_path: Path) -> None:
    """A time the calendar cannot place is dead-lettered where its record was, among the
    records that are no tick; the rows around it are written."""
    far = 3e11  # past year 9999: plausible only to a clock far ahead
    sink = CsvSink(tmp_path, "prices", Metrics(), fsync=False, candles=False, clock=lambda: 1e12)
    sink.open()
    records = [
        Record(0, 0, tick("btc", 1).to_json()),
        Record(0, 1, b"nope"),
        Record(0, 2, Tick(far, "btc", "BTC", "Btc", "2", None, None, None).to_json()),
        Record(0, 3, b"{"),
        Record(0, 4, tick("btc", 2).to_json()),
    ]
    result = sink.write(records)
    sink.close()
    assert (result.written, result.dead_letters) == (2, 3)
    dead = (tmp_path / "errors" / "dead_letters.jsonl").read_bytes().splitlines()
    letters = [orjson.loads(line) for line in dead]
    assert [(d["offset"], d["reason"]) for d in letters] == [
        (1, "not_json"),
        (2, "unwritable"),
        (3, "not_json"),
    ]
