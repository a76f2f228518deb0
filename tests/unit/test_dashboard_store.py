"""The dashboard's price store: loading CSV history, variation, downsampling."""

from __future__ import annotations

import io
import itertools
import random
import threading
from pathlib import Path

import pytest

from cryptostream.csvrow import HEADER, csv_line
from cryptostream.dashboard.store import (
    HistorySnapshot,
    LoadCancelled,
    PriceStore,
    Series,
    day_of,
    downsample,
    load_file,
    load_history,
)
from cryptostream.tick import Tick

DAY = 86400
T0 = 1_741_305_600.0  # 2025-03-07 00:00:00 UTC


def tick(asset: str, ts: float, price: str, first: str | None = None) -> Tick:
    return Tick(ts, asset, asset[:3].upper(), asset.title(), price, "-1.25", first, "1")


def csv_bytes(*ticks: Tick, header: bool = True) -> bytes:
    return ((HEADER if header else "") + "".join(csv_line(t) for t in ticks)).encode()


def load(data: bytes, limit: int | None = None) -> PriceStore:
    store = PriceStore()
    load_file(store, io.BytesIO(data), len(data) if limit is None else limit, threading.Event())
    return store


def test_load_builds_one_series_per_asset_with_the_last_row_texts() -> None:
    store = load(
        csv_bytes(
            tick("bitcoin", T0 + 1, "100.5", "100"),
            tick("ethereum", T0 + 1, "20", "20"),
            tick("bitcoin", T0 + 2, "101.0000000000000001", "100"),
        )
    )
    assert set(store.series) == {"bitcoin", "ethereum"}
    btc = store.series["bitcoin"]
    assert list(btc.ts) == [T0 + 1, T0 + 2]
    assert list(btc.price) == [100.5, 101.0]
    assert btc.last is not None
    # The table shows the exact digits of the CSV, not a float's.
    assert btc.last.price_usd == "101.0000000000000001"
    assert btc.last.change_percent_24h == "-1.25"
    assert (btc.symbol, btc.name) == ("BIT", "Bitcoin")
    assert store.records == 3
    assert store.days == {day_of(T0)}


def test_variation_is_against_each_rows_first_value_or_the_days_first_price() -> None:
    store = load(
        csv_bytes(
            tick("bitcoin", T0 + 10, "110", "100"),
            tick("xrp", T0 + 10, "2", None),  # no firstValue: the day starts here
            tick("xrp", T0 + 20, "3", None),
            tick("xrp", T0 + DAY + 5, "4", None),  # next UTC day starts again
        )
    )
    assert store.series["bitcoin"].variation(0) == pytest.approx(10.0)
    xrp = store.series["xrp"]
    assert [xrp.variation(i) for i in range(3)] == [
        pytest.approx(0.0),
        pytest.approx(50.0),
        pytest.approx(0.0),
    ]


def test_bad_rows_are_skipped_and_counted_by_reason_and_good_rows_kept() -> None:
    good = csv_line(tick("bitcoin", T0 + 1, "10", "10"))
    text = (
        HEADER
        + good
        + "not,enough,columns\n"
        + f"{T0 + 2},bitcoin,BTC,Bitcoin,NaN,,,\n"
        + f"{T0 + 3},bitcoin,BTC,Bitcoin,-5,,,\n"
        + "yesterday,bitcoin,BTC,Bitcoin,10,,,\n"
        + f"{T0 + 4},,BTC,Bitcoin,10,,,\n"
        + f'{T0 + 5},ethereum,ETH,"Ether, ""classic""",7,,,\n'
    )
    store = load(text.encode())
    assert store.skipped == {
        "wrong_column_count": 1,
        "out_of_range": 2,
        "not_a_number": 1,
        "missing_id": 1,
    }
    assert store.records == 2
    assert store.series["ethereum"].name == 'Ether, "classic"'


def test_load_stops_at_the_limit_and_leaves_out_a_torn_last_line() -> None:
    data = csv_bytes(tick("bitcoin", T0 + 1, "10"), tick("bitcoin", T0 + 2, "11"))
    cut = len(HEADER) + len(csv_line(tick("bitcoin", T0 + 1, "10")))
    assert load(data, limit=cut).records == 1
    assert load(data, limit=cut + 5).records == 1  # half a row is not a row
    assert load(data + b"1741305603.0,bitcoin,BTC,Bit").records == 2


def test_a_chunk_boundary_inside_a_row_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cryptostream.dashboard.store._CHUNK", 7)
    ticks = [tick("bitcoin", T0 + i, f"{100 + i}.5") for i in range(50)]
    store = load(csv_bytes(*ticks))
    assert list(store.series["bitcoin"].price) == [100.5 + i for i in range(50)]


def test_a_load_can_be_cancelled() -> None:
    cancel = threading.Event()
    cancel.set()
    data = csv_bytes(tick("bitcoin", T0, "1"))
    with pytest.raises(LoadCancelled):
        load_file(PriceStore(), io.BytesIO(data), len(data), cancel)


def test_a_late_tick_takes_its_place_in_time() -> None:
    s = Series("bitcoin")
    for ts, price in ((3.0, 30.0), (1.0, 10.0), (2.0, 20.0), (4.0, 40.0)):
        s.add(T0 + ts, price, "", "", str(price))
    assert list(s.ts) == [T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    assert list(s.price) == [10.0, 20.0, 30.0, 40.0]
    assert s.last is not None and s.last.timestamp == T0 + 4


def test_a_view_keeps_its_points_while_the_series_changes() -> None:
    s = Series("bitcoin")
    for i in range(0, 10, 2):
        s.add(T0 + i, float(i), "", "", str(i))
    view = s.view()
    seen = (list(view.ts[: view.length]), list(view.price[: view.length]))
    s.add(T0 + 20, 20.0, "", "", "20")  # an append: past the view's length
    s.add(T0 + 3, 3.0, "", "", "3")  # a late tick: inserted into a copy
    s.add(T0 + 5, 5.0, "", "", "5")
    assert (list(view.ts[: view.length]), list(view.price[: view.length])) == seen
    assert view.bounds(T0, T0 + 100) == (0, 5)
    assert view.window(T0 + 4, T0 + 100, 100) == ([2, 3, 4], 3)
    assert list(s.ts) == [T0 + t for t in (0, 2, 3, 4, 5, 6, 8, 20)]
    # With no view left, a late tick goes into the columns in place (no copy).
    del view
    columns = s.ts
    s.add(T0 + 7, 7.0, "", "", "7")
    assert s.ts is columns and list(s.ts).index(T0 + 7) == 6


def test_downsample_keeps_ends_and_extremes_within_the_budget() -> None:
    rnd = random.Random(7)
    ts = [T0 + i * 0.5 for i in range(100_000)]
    price = [100 + rnd.gauss(0, 1) for _ in ts]
    price[31_337] = 1000.0  # a spike must survive
    price[77_777] = -50.0  # and a dip
    picked = downsample(ts, price, 0, len(ts), 500)
    assert len(picked) <= 502
    assert picked[0] == 0 and picked[-1] == len(ts) - 1
    assert 31_337 in picked and 77_777 in picked
    assert all(ts[a] < ts[b] for a, b in itertools.pairwise(picked))


def test_downsample_returns_everything_when_it_fits_but_one_point_per_instant() -> None:
    ts = [1.0, 2.0, 2.0, 3.0]
    assert downsample(ts, [1.0, 2.0, 5.0, 3.0], 0, 4, 100) == [0, 2, 3]
    assert downsample(ts, [1.0] * 4, 1, 1, 100) == []


def test_window_selects_the_time_range() -> None:
    s = Series("bitcoin")
    for i in range(10):
        s.add(T0 + i, float(i), "", "", str(i))
    picked, total = s.window(T0 + 2, T0 + 5, 100)
    assert total == 4
    assert [s.ts[i] for i in picked] == [T0 + 2, T0 + 3, T0 + 4, T0 + 5]


def test_history_reads_old_days_from_daily_files_when_the_main_file_was_trimmed(
    tmp_path: Path,
) -> None:
    # Retention kept days 2-3 in crypto_data.csv; the daily files have days 0-3.
    rows = {d: [tick("bitcoin", T0 + d * DAY + 60, f"{10 + d}", f"{10 + d}")] for d in range(4)}
    daily = []
    for d, ticks in rows.items():
        path = tmp_path / f"day{d}.csv"
        path.write_bytes(csv_bytes(*ticks))
        daily.append((day_of(T0) + d, path, path.stat().st_size))
    main = csv_bytes(*rows[2], *rows[3])
    snapshot = HistorySnapshot(io.BytesIO(main), len(main), tuple(daily), day_of(T0) + 3)
    store = load_history(snapshot, threading.Event())
    btc = store.series["bitcoin"]
    assert list(btc.price) == [10.0, 11.0, 12.0, 13.0]  # each day once, in order
    assert store.records == 4
    assert len(store.days) == 4
    assert btc.last is not None and btc.last.price_usd == "13"


def test_history_without_main_rows_reads_only_daily_files_before_today(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_bytes(csv_bytes(tick("bitcoin", T0, "1")))
    today = tmp_path / "today.csv"
    today.write_bytes(csv_bytes(tick("bitcoin", T0 + DAY, "2")))
    daily = ((day_of(T0), old, old.stat().st_size), (day_of(T0) + 1, today, 999))
    store = load_history(HistorySnapshot(None, 0, daily, day_of(T0) + 1), threading.Event())
    # Today's rows arrive live from the sink; reading them here would count them twice.
    assert list(store.series["bitcoin"].price) == [1.0]


def test_old_points_are_thinned_to_hourly_lows_and_highs() -> None:
    from cryptostream.dashboard.store import PriceStore
    from cryptostream.tick import Tick

    store = PriceStore()
    # Two hours of a tick every 20 s (360 points), then recent ticks.
    for i in range(360):
        price = 100 + (i % 7) - (3 if i == 100 else 0) + (9 if i == 250 else 0)
        store.add_tick(Tick(i * 20.0, "bitcoin", "BTC", "Bitcoin", str(price), None, "100", None))
    store.add_tick(Tick(10_000.0, "bitcoin", "BTC", "Bitcoin", "101", None, "100", None))
    s = store.series["bitcoin"]
    dropped = store.compact(7200.0)
    assert dropped == 360 - 4  # two hours → a low and a high each
    assert list(s.price[:4]) == [106.0, 99.0, 100.0, 114.0]  # in time order
    assert list(s.ts) == sorted(s.ts)
    assert s.ts[-1] == 10_000.0 and s.price[-1] == 101.0  # recent detail untouched
    assert store.records == 361  # the card still counts every row
    assert store.compact(7200.0) == 0  # idempotent
    # A late tick before the thinned part lands in order and is not lost.
    store.add_tick(Tick(5.0, "bitcoin", "BTC", "Bitcoin", "50", None, "100", None))
    assert s.ts[0] == 5.0 and s.compacted == 5
