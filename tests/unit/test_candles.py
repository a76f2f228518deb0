from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from cryptostream.metrics import Metrics
from cryptostream.sink import candles as candles_module
from cryptostream.sink.candles import COLUMNS, Candle, _account, _fold
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


def test_a_day_read_back_whole_lets_the_event_loop_in_every_few_thousand_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilding a day's candles from its file runs on the sink's thread: it sleeps
    briefly every YIELD_ROWS rows so the event loop's thread gets the GIL (measured
    without it: the loop waited up to 0.9 s; docs/performance.md, table 1b)."""
    monkeypatch.setattr(candles_module, "YIELD_ROWS", 10)
    feed(tmp_path, [[tick(DAY1 + i, str(i + 1)) for i in range(35)]])
    (tmp_path / "history/candles/1m/2025-03-07.csv").unlink()
    sleeps: list[float] = []
    monkeypatch.setattr(candles_module.time, "sleep", sleeps.append)
    sink = CsvSink(tmp_path, "t", Metrics())
    sink.open()  # the day's candles rebuilt from its 35 rows
    sink.close()
    assert sleeps == [candles_module.YIELD_SECONDS] * 3
    assert candles(tmp_path, "1m/2025-03-07.csv")[0]["close"] == "35"


# A child process: writes one batch through the real sink and is SIGKILLed by itself
# right after the candle file named by argv[3] (a level: 1m, 1h or 1d) is replaced.
_KILLED_MID_FLUSH = """
import os, signal, sys
from pathlib import Path
import cryptostream.sink.candles as candles
from cryptostream.metrics import Metrics
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.tick import Tick

real = candles.atomic_write
def replace_then_die(path, data, **kw):
    real(path, data, **kw)
    if path.parent.name == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)
candles.atomic_write = replace_then_die
ts, price = float(sys.argv[2]), sys.argv[4]
sink = CsvSink(Path(sys.argv[1]), "t", Metrics())
sink.open()
offset = sum(sink.committed_offsets().values())
tick = Tick(ts, "bitcoin", "BTC", "Bitcoin", price, "1", None, "100")
sink.write([Record(0, offset, tick.to_json())])
sink.close()
"""


def expected_candles(data_dir: Path) -> dict[str, list[list[str]]]:
    """Candle rows computed straight from the tick files (its own arithmetic)."""
    ticks: list[list[str]] = []
    for path in sorted((data_dir / "history/ticks").glob("*.csv")):
        with path.open(newline="") as fh:
            ticks += list(csv.reader(fh))[1:]
    out: dict[str, list[list[str]]] = {}
    for level, width in (("1m", 60), ("1h", 3600), ("1d", 86400)):
        groups: dict[tuple[int, str], list[list[str]]] = {}
        for row in ticks:
            groups.setdefault((int(float(row[0]) // width * width), row[1]), []).append(row)
        rows = []
        for (start, asset), group in sorted(groups.items()):
            prices = [Decimal(r[4]) for r in group]
            first = min(group, key=lambda r: float(r[0]))
            last = max(group, key=lambda r: float(r[0]))
            rows.append(
                [
                    str(start),
                    asset,
                    first[4],
                    str(max(prices)),
                    str(min(prices)),
                    last[4],
                    first[0],
                    last[0],
                    str(len(group)),
                ]
            )
        out[level] = rows
    return out


def candle_rows(data_dir: Path, level: str) -> list[list[str]]:
    rows = []
    for path in sorted((data_dir / "history/candles" / level).glob("*.csv")):
        with path.open(newline="") as fh:
            for r in list(csv.reader(fh))[1:]:
                rows.append([r[0], r[1], r[3], r[4], r[5], r[6], r[7], r[8], r[9]])
    return sorted(rows, key=lambda r: (int(r[0]), r[1]))


@pytest.mark.parametrize("level", ["1m", "1h"])
def test_a_kill_between_candle_levels_leaves_no_level_stale(tmp_path: Path, level: str) -> None:
    feed(tmp_path, [[tick(DAY1 + 10, "5.0")]])
    # A new high on the same past day; the process dies after replacing the `level` file.
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_FLUSH, str(tmp_path), str(DAY1 + 4000), level, "9"],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    # The next start recovers; no more ticks of that day ever come.
    sink = CsvSink(tmp_path, "t", Metrics())
    sink.open()
    sink.close()
    expected = expected_candles(tmp_path)
    assert expected["1d"][0][3] == "9"  # the tick is in the committed tick file
    for lvl in ("1m", "1h", "1d"):
        assert candle_rows(tmp_path, lvl) == expected[lvl], lvl


def test_a_vwap_too_long_for_16_decimals_still_gets_its_candle(tmp_path: Path) -> None:
    # 24 integer digits: a mean to 16 decimals needs 40, more than decimal's 28.
    huge = "123456789012345678901234.5"
    feed(tmp_path, [[tick(DAY1 + 10, "5.0", vwap=huge), tick(DAY1 + 20, "6.0", vwap=huge)]])
    for rel in ("1m/2025-03-07.csv", "1h/2025-03-07.csv", "1d/2025.csv"):
        (row,) = candles(tmp_path, rel)
        assert Decimal(row["vwap24HrMean"]) == Decimal(huge), rel
        assert row["ticks"] == "2"


def test_a_batch_folded_per_minute_equals_one_tick_at_a_time(tmp_path: Path) -> None:
    """CandleBook.add groups a batch per (asset, minute): the candles must be exactly
    those of Candle.add per tick — ties of price and time, texts of equal values,
    missing VWAPs, the order of the VWAP sum's additions."""
    rng = random.Random(7)
    base = 1_741_305_600.0
    prices = ["1", "1.0", "1.00", "2", "0.5", "2.000", "3e0", "0.50"]
    vwaps = [None, "", "1.1", "2.2", "86466.9872578656434844", "0.333333333333333333333"]
    for _ in range(200):
        per_tick: dict[tuple[str, int], Candle] = {}
        folded: dict[tuple[str, int], Candle] = {}
        for _batch in range(3):
            batch = [
                Tick(
                    base + rng.choice([0, 1, 1, 2, 59, 60, 61]),
                    rng.choice(["a", "b"]),
                    "S",
                    "N",
                    rng.choice(prices),
                    None,
                    None,
                    rng.choice(vwaps) or None,
                )
                for _ in range(rng.randint(1, 12))
            ]
            for t in batch:
                _account(per_tick, t.id, t.timestamp, t.symbol, t.price_usd, t.vwap_24h)
            groups: dict[tuple[str, int], list[Tick]] = {}
            for t in batch:
                groups.setdefault((t.id, int(t.timestamp // 60) * 60), []).append(t)
            for key, group in groups.items():
                _fold(folded, key, group)
        assert folded.keys() == per_tick.keys()
        for key, candle in per_tick.items():
            assert folded[key] == candle
            assert folded[key].row(key[1], key[0]) == candle.row(key[1], key[0])


@pytest.mark.parametrize("asset", ["=HYPERLINK(1)", "+1", "-x", "@a", "a,b", 'q"uote'])
def test_an_asset_whose_cell_differs_from_its_id_keeps_one_candle(
    tmp_path: Path, asset: str
) -> None:
    """A day loaded back from its tick file names an asset by the CSV cell (with its
    formula guard and quotes); a batch folded in later names it by its id: both are
    the same candle, across batches and a restart."""
    feed(tmp_path, [[tick(DAY1 + 1, "5", asset)], [tick(DAY1 + 2, "7", asset)]])
    expected = {"open": "5", "high": "7", "low": "5", "close": "7", "ticks": "2"}
    for rel in ("1m/2025-03-07.csv", "1h/2025-03-07.csv", "1d/2025.csv"):
        rows = candles(tmp_path, rel)
        assert [{k: row[k] for k in expected} for row in rows] == [expected], rel
    feed(tmp_path, [[tick(DAY1 + 3, "6", asset)], [tick(DAY1 + 4, "4", asset)]], start_offset=2)
    expected = {"open": "5", "high": "7", "low": "4", "close": "4", "ticks": "4"}
    for rel in ("1m/2025-03-07.csv", "1h/2025-03-07.csv", "1d/2025.csv"):
        rows = candles(tmp_path, rel)
        assert [{k: row[k] for k in expected} for row in rows] == [expected], rel


def test_the_year_file_keeps_every_asset_of_other_days(tmp_path: Path) -> None:
    """Rewriting one day of the 1d year file keeps the rows of the other days whole,
    also for ids that share the text before a comma."""
    day2 = DAY1 + 86400
    feed(tmp_path, [[tick(DAY1 + 1, "1", "a,b"), tick(DAY1 + 2, "2", "a,c")]])
    feed(tmp_path, [[tick(day2 + 1, "3", "a,b")]], start_offset=2)
    rows = candles(tmp_path, "1d/2025.csv")
    assert [(r["start"], r["id"]) for r in rows] == [
        (str(int(DAY1)), "a,b"),
        (str(int(DAY1)), "a,c"),
        (str(int(day2)), "a,b"),
    ]


def test_a_batch_whose_candles_fail_halfway_leaves_no_day_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candles that fail partway through a batch (one group folded, the next not) are
    not trusted: the day is read back from its tick file before its next write."""
    import cryptostream.sink.candles as module

    real_fold = module._fold
    calls = 0

    def fold_then_fail(
        candles: dict[tuple[str, int], Candle], key: tuple[str, int], group: list[Tick]
    ) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(5, "Input/output error")
        real_fold(candles, key, group)

    sink = CsvSink(tmp_path, "t", Metrics())
    sink.open()
    batches = [
        [tick(DAY1 + 1, "5", "a"), tick(DAY1 + 1, "5", "b")],
        [tick(DAY1 + 2, "6", "a"), tick(DAY1 + 2, "6", "b")],  # "b" fails, "a" folded
        [tick(DAY1 + 3, "7", "a"), tick(DAY1 + 3, "7", "b")],
    ]
    offset = 0
    for n, batch in enumerate(batches):
        if n == 1:
            monkeypatch.setattr(module, "_fold", fold_then_fail)
        if n == 2:
            monkeypatch.setattr(module, "_fold", real_fold)
        sink.write([Record(0, offset + i, t.to_json()) for i, t in enumerate(batch)])
        offset += len(batch)
    sink.close()
    for rel in ("1m/2025-03-07.csv", "1h/2025-03-07.csv", "1d/2025.csv"):
        rows = candles(tmp_path, rel)
        assert [(r["id"], r["open"], r["high"], r["close"], r["ticks"]) for r in rows] == [
            ("a", "5", "7", "7", "3"),
            ("b", "5", "7", "7", "3"),
        ], rel
