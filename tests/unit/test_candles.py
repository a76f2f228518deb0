from __future__ import annotations

import csv
from pathlib import Path

from cryptostream.metrics import Metrics
from cryptostream.sink.candles import COLUMNS
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.tick import Tick

DAY1 = 1741305600.0  # 2025-03-07T00:00:00Z


def tick(ts: float, price: str, asset: str = "bitcoin", vwap: str | None = "100") -> Tick:
    return Tick(ts, asset, "BTC", "Bitcoin", price, "1", price, vwap)


def candles(data_dir: Path, rel: str) -> list[dict[str, str]]:
    with (data_dir / "history/candles" / rel).open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def feed(data_dir: Path, batches: list[list[Tick]], start_offset: int = 0) -> None:
    sink = CsvSink(data_dir, "t", Metrics())
    sink.open()
    offset = start_offset
    for batch in batches:
        records = []
        for t in batch:
            records.append(Record(0, offset, t.to_json()))
            offset += 1
        sink.write(records)
    sink.close()  # flushes candles


def test_ohlc_per_minute_hour_day_with_out_of_order_ticks(tmp_path: Path) -> None:
    feed(
        tmp_path,
        [
            [tick(DAY1 + 10, "5.0"), tick(DAY1 + 50, "7.5", vwap="110")],
            [tick(DAY1 + 5, "6.0", vwap=None)],  # late: earlier in the minute, arrives later
            [tick(DAY1 + 70, "4.25")],
            [tick(DAY1 + 3600 + 1, "9")],
        ],
    )
    m = candles(tmp_path, "1m/2025-03-07.csv")
    first = m[0]
    assert first["start"] == str(int(DAY1))
    assert (first["open"], first["high"], first["low"], first["close"]) == (
        "6.0",
        "7.5",
        "5.0",
        "7.5",
    )
    assert first["ticks"] == "3"
    assert first["firstTimestamp"] == repr(DAY1 + 5)
    assert first["vwap24HrMean"] == "105.0000000000000000"  # null vwap is not a zero
    assert [c["start"] for c in m] == [str(int(DAY1)), str(int(DAY1 + 60)), str(int(DAY1 + 3600))]
    h = candles(tmp_path, "1h/2025-03-07.csv")
    assert (h[0]["open"], h[0]["high"], h[0]["low"], h[0]["close"], h[0]["ticks"]) == (
        "6.0",
        "7.5",
        "4.25",
        "4.25",
        "4",
    )
    d = candles(tmp_path, "1d/2025.csv")
    assert len(d) == 1
    assert (d[0]["open"], d[0]["high"], d[0]["low"], d[0]["close"], d[0]["ticks"]) == (
        "6.0",
        "9",
        "4.25",
        "9",
        "5",
    )


def test_candles_across_utc_midnight_and_a_restart(tmp_path: Path) -> None:
    feed(tmp_path, [[tick(DAY1 + 86399, "1"), tick(DAY1 + 86400, "2")]])
    # A restart, then a late tick for the previous day: its candles are corrected.
    feed(tmp_path, [[tick(DAY1 + 86398, "3")]], start_offset=2)
    d1 = candles(tmp_path, "1m/2025-03-07.csv")
    assert (d1[0]["open"], d1[0]["close"], d1[0]["ticks"]) == ("3", "1", "2")
    d2 = candles(tmp_path, "1m/2025-03-08.csv")
    assert (d2[0]["open"], d2[0]["ticks"]) == ("2", "1")
    days = candles(tmp_path, "1d/2025.csv")
    assert [(r["start"], r["ticks"]) for r in days] == [
        (str(int(DAY1)), "2"),
        (str(int(DAY1 + 86400)), "1"),
    ]


def test_stale_candles_are_rebuilt_from_the_tick_file_on_start(tmp_path: Path) -> None:
    feed(tmp_path, [[tick(DAY1 + 1, "1")]])
    (tmp_path / "history/candles/1m/2025-03-07.csv").unlink()  # e.g. a crash before a flush
    sink = CsvSink(tmp_path, "t", Metrics())
    sink.open()
    sink.close()
    assert candles(tmp_path, "1m/2025-03-07.csv")[0]["close"] == "1"
