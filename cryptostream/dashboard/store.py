"""The dashboard's in-memory price history: one compact time series per asset.

Each series keeps three ``array('d')`` columns (timestamp, price, the row's
firstValue): 24 bytes a tick, so a million rows cost ~24 MB instead of the
hundreds of MB that a million Python objects would. Text fields that the
table shows with their exact digits (last price, 24 h change) are kept only
for the newest tick of each asset.

History comes from ``crypto_data.csv`` once at start (see :func:`load_history`,
run in a worker thread), live ticks from the sink after each durable batch.
Range queries downsample per series to a bounded number of points
(min/max per time bucket, so peaks and dips survive) because a browser has
no use for more points than it has pixels. They run in a worker thread while
the event loop keeps adding ticks, so they read a :class:`SeriesView`: the
columns as they were when the request came, taken in O(1) (see
:meth:`Series.view`).
"""

from __future__ import annotations

import csv
import math
import threading
import weakref
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptostream.csvrow import COLUMNS, HEADER
from cryptostream.days import DAY, day_name
from cryptostream.tick import Tick

_CHUNK = 1 << 22  # bytes read at a time while loading: bounded memory whatever the file size
_HEADER_LINE = HEADER.rstrip("\n")
_INF = math.inf
#: Ticks older than this many days are kept as hourly lows and highs (memory bound).
FULL_DETAIL_DAYS = 30
COMPACT_STEP = 3600.0


def day_of(ts: float) -> int:
    """Days since the epoch of a Unix timestamp (its UTC date)."""
    return int(ts // DAY)


def iso_day(day: int) -> str:
    return day_name(day * DAY)


class LoadCancelled(Exception):
    """The service is stopping; the history load was abandoned."""


@dataclass(slots=True)
class Last:
    """The newest tick of an asset, with the exact texts the CSV holds."""

    timestamp: float
    price_usd: str
    change_percent_24h: str
    first_value: str

    def as_json(self) -> dict[str, object]:
        return {
            "timestamp": self.timestamp,
            "priceUsd": self.price_usd,
            "changePercent24Hr": self.change_percent_24h or None,
            "firstValue": self.first_value or None,
        }


@dataclass(slots=True)
class Series:
    """One asset: parallel columns in time order, and its newest tick's texts."""

    id: str
    symbol: str = ""
    name: str = ""
    ts: array[float] = field(default_factory=lambda: array("d"))
    price: array[float] = field(default_factory=lambda: array("d"))
    #: Each tick's firstValue: the base of its price variation (as in the CSV row).
    base: array[float] = field(default_factory=lambda: array("d"))
    #: The first base seen per UTC day, for a row that has no firstValue.
    first: dict[int, float] = field(default_factory=dict)
    last: Last | None = None
    #: Points before this index are thinned (see :meth:`compact`).
    compacted: int = 0
    #: Views of the current columns still in use: while there is one, no value
    #: of the columns is changed in place (see :meth:`view`).
    views: weakref.WeakSet[SeriesView] = field(
        default_factory=weakref.WeakSet, repr=False, compare=False
    )

    def view(self) -> SeriesView:
        """The series as it is now, for a reader in another thread; O(1), in the loop.

        The view keeps the column objects and their length. While it lives, every
        change leaves the first ``length`` values of those objects as they were:
        appends go past them, :meth:`compact` builds new columns, and
        :meth:`place` copies the columns before it inserts (copy-on-write). So
        the reader needs no lock, the loop never waits for it, and nothing is
        copied per request: only a late tick that comes while a request is being
        answered costs a copy of its series.
        """
        view = SeriesView(
            self.id, self.symbol, self.name, self.ts, self.price, self.base, len(self.ts)
        )
        self.views.add(view)
        return view

    def add(self, ts: float, price: float, first_value: str, change: str, price_text: str) -> float:
        """Add a live tick; returns its variation base."""
        base = self.base_for(ts, price, _to_float(first_value))
        self.place(ts, price, base)
        if self.last is None or ts >= self.last.timestamp:
            self.last = Last(ts, price_text, change, first_value)
        return base

    def base_for(self, ts: float, price: float, first_value: float | None) -> float:
        """The variation base of a tick: its firstValue, else the day's first one.

        The sink stamps firstValue on every row; a row without one (a file from
        elsewhere) is measured against the first value seen that day.
        """
        day = day_of(ts)
        if first_value is not None and first_value > 0:
            self.first.setdefault(day, first_value)
            return first_value
        return self.first.setdefault(day, price)

    def place(self, ts: float, price: float, base: float) -> None:
        """Put a point in time order (appending, unless it is late)."""
        if not self.ts or ts >= self.ts[-1]:
            self.ts.append(ts)
            self.price.append(price)
            self.base.append(base)
        else:
            # A late tick (e.g. spooled across a restart) goes to its place in time.
            if self.views:
                self.ts, self.price, self.base = self.ts[:], self.price[:], self.base[:]
                self.views = weakref.WeakSet()  # they read the old columns, untouched
            i = bisect_right(self.ts, ts)
            self.ts.insert(i, ts)
            self.price.insert(i, price)
            self.base.insert(i, base)
            if i < self.compacted:
                self.compacted += 1

    def compact(self, before: float, step: float = COMPACT_STEP) -> int:
        """Thin the points older than ``before`` to the low and high of each ``step``.

        Memory stays bounded however long the service runs: a chart of weeks or
        months draws one low and one high per bucket anyway (see :func:`downsample`),
        so hourly lows and highs of old days look the same, at a fraction of the
        points. Returns how many points were dropped.
        """
        lo = self.compacted
        hi = bisect_left(self.ts, before, lo)
        if hi - lo < 3:
            return 0
        ts, price = self.ts, self.price
        keep: list[int] = []
        start = lo
        while start < hi:
            end = bisect_left(ts, (ts[start] // step + 1) * step, start, hi)
            keep.extend(_low_high(price, start, end))
            start = end
        if len(keep) == hi - lo:
            self.compacted = hi
            return 0
        for name in ("ts", "price", "base"):
            column: array[float] = getattr(self, name)
            thinned = array("d", column[:lo])
            thinned.extend(column[i] for i in keep)
            thinned.extend(column[hi:])
            setattr(self, name, thinned)
        self.views = weakref.WeakSet()  # new columns: no view reads them
        self.compacted = lo + len(keep)
        return hi - lo - len(keep)

    def variation(self, i: int) -> float | None:
        """Price change of point ``i`` in % against its day's firstValue."""
        return _variation(self.price[i], self.base[i])

    def window(self, start: float, end: float, points: int) -> tuple[list[int], int]:
        """Indices of the points in ``[start, end]``, about ``points`` at most; and how many."""
        lo, hi = _bounds(self.ts, len(self.ts), start, end)
        return downsample(self.ts, self.price, lo, hi, points), hi - lo


@dataclass(slots=True, weakref_slot=True, eq=False)
class SeriesView:
    """A series' first ``length`` points as they were when :meth:`Series.view` ran.

    Read-only and safe to read in a worker thread while the loop adds ticks.
    """

    id: str
    symbol: str
    name: str
    ts: array[float]
    price: array[float]
    base: array[float]
    #: Values past this index were added after the view: never read.
    length: int

    def variation(self, i: int) -> float | None:
        """Price change of point ``i`` in % against its day's firstValue."""
        return _variation(self.price[i], self.base[i])

    def bounds(self, start: float, end: float) -> tuple[int, int]:
        """Index range ``[lo, hi)`` of the points in ``[start, end]``."""
        return _bounds(self.ts, self.length, start, end)

    def window(self, start: float, end: float, points: int) -> tuple[list[int], int]:
        """Indices of the points in ``[start, end]``, about ``points`` at most; and how many."""
        lo, hi = self.bounds(start, end)
        return downsample(self.ts, self.price, lo, hi, points), hi - lo


def _variation(price: float, base: float) -> float | None:
    return (price / base - 1.0) * 100.0 if base > 0 else None


def _bounds(ts: Sequence[float], length: int, start: float, end: float) -> tuple[int, int]:
    return bisect_left(ts, start, 0, length), bisect_right(ts, end, 0, length)


def _low_high(price: Sequence[float], start: int, end: int) -> Iterable[int]:
    """Indices of the lowest and the highest price in ``[start, end)``, in time order."""
    if end - start <= 2:
        return range(start, end)
    # min()/max()/index() on an array slice run in C: a year of ticks takes ms.
    seg = price[start:end]
    return [start + i for i in sorted({seg.index(min(seg)), seg.index(max(seg))})]


def downsample(
    ts: Sequence[float], price: Sequence[float], lo: int, hi: int, points: int
) -> list[int]:
    """Indices that reduce ``ts[lo:hi]`` to at most ``points + 2`` points of the same look.

    Time is cut into ``points // 2`` equal buckets over the span the data
    covers; each bucket keeps its lowest and highest price in time order, and
    the first and last tick are always kept (the chart's ends and the latest
    price stay exact). Timestamps come out strictly increasing, as charts need:
    of two ticks at one instant the later row wins.
    """
    if hi - lo <= points:
        picked: Iterable[int] = range(lo, hi)
    else:
        t0 = ts[lo]
        buckets = max(1, points // 2)
        width = (ts[hi - 1] - t0) / buckets or 1.0
        chosen = [lo]
        start = lo
        for b in range(1, buckets + 1):
            end = hi if b == buckets else bisect_right(ts, t0 + b * width, start, hi)
            chosen.extend(_low_high(price, start, end))
            start = end
        chosen.append(hi - 1)
        picked = chosen
    out: list[int] = []
    for i in picked:
        if out and ts[i] <= ts[out[-1]]:
            if ts[i] == ts[out[-1]] and i > out[-1]:
                out[-1] = i
            continue
        out.append(i)
    return out


def _to_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class PriceStore:
    """Every asset's series, plus the totals the cards show."""

    def __init__(self) -> None:
        self.series: dict[str, Series] = {}
        self.records = 0
        self.days: set[int] = set()
        self.skipped: Counter[str] = Counter()

    def add_tick(self, tick: Tick) -> tuple[float, float]:
        """Add a live tick; returns its price and variation base."""
        s = self.series.get(tick.id)
        if s is None:
            s = self.series[tick.id] = Series(tick.id)
        s.symbol, s.name = tick.symbol, tick.name
        price = float(tick.price_usd)
        base = s.add(
            tick.timestamp,
            price,
            tick.first_value or "",
            tick.change_percent_24h or "",
            tick.price_usd,
        )
        self.records += 1
        self.days.add(day_of(tick.timestamp))
        return price, base

    def merge(self, newer: PriceStore) -> None:
        """Append a store whose ticks mostly come after this one's."""
        for asset, theirs in newer.series.items():
            mine = self.series.get(asset)
            if mine is None:
                self.series[asset] = theirs
                continue
            if not mine.ts or not theirs.ts or theirs.ts[0] >= mine.ts[-1]:
                mine.ts.extend(theirs.ts)
                mine.price.extend(theirs.price)
                mine.base.extend(theirs.base)
            else:
                for t, p, b in zip(theirs.ts, theirs.price, theirs.base, strict=True):
                    mine.place(t, p, b)
            mine.first = theirs.first | mine.first  # a day's first base: the older one
            if theirs.last is not None and (
                mine.last is None or theirs.last.timestamp >= mine.last.timestamp
            ):
                mine.last = theirs.last
                mine.symbol, mine.name = theirs.symbol, theirs.name
        self.records += newer.records
        self.days |= newer.days
        self.skipped.update(newer.skipped)

    def compact(self, before: float) -> int:
        """Thin every series' points older than ``before``; returns how many went."""
        return sum(s.compact(before) for s in self.series.values())

    @property
    def points(self) -> int:
        return sum(len(s.ts) for s in self.series.values())

    def span(self) -> tuple[float, float] | None:
        firsts = [s.ts[0] for s in self.series.values() if s.ts]
        lasts = [s.ts[-1] for s in self.series.values() if s.ts]
        return (min(firsts), max(lasts)) if firsts else None


# -- loading the CSV history (runs in a worker thread) -------------------------------


def csv_lines(fh: BinaryIO, limit: int, cancel: threading.Event) -> Iterator[list[str]]:
    """Lines of a tick CSV up to byte ``limit``, in chunks; the header is left out.

    Reads a few MB at a time so memory stays flat. A last line without ``\\n``
    is a row being written (or torn): it is left out, as the sink itself would.
    """
    remaining = limit
    tail = b""
    first = True
    while remaining > 0:
        if cancel.is_set():
            raise LoadCancelled
        chunk = fh.read(min(_CHUNK, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        data = tail + chunk
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        # split("\n"), not splitlines(): the latter also breaks on \x1c, \u2028, ...
        lines = data[:cut].decode("utf-8", errors="replace").split("\n")
        lines.pop()  # the empty string after the final "\n"
        if first and lines and lines[0] == _HEADER_LINE:
            del lines[0]
        first = False
        yield lines


def load_file(
    store: PriceStore,
    fh: BinaryIO,
    limit: int,
    cancel: threading.Event,
    compact_before: float | None = None,
) -> None:
    """Add every row of one CSV to ``store``; unreadable rows are counted by reason.

    The hot loop of start-up (a million rows in about a second): plain
    ``str.split`` for the rows that have no quoted cell, which is nearly all
    of them, since only the text cells (id, symbol, name) are ever quoted.
    """
    series = store.series
    skipped = store.skipped
    width = len(COLUMNS)
    last_row: dict[str, list[str]] = {}
    last_day: dict[str, int] = {}
    bases: dict[str, tuple[str, int, float]] = {}
    rows = 0
    for lines in csv_lines(fh, limit, cancel):
        if compact_before is not None:
            # Chunk by chunk, so a year of history never sits in memory at full detail.
            store.compact(compact_before)
        for line in lines:
            if '"' in line:
                try:
                    row = next(csv.reader((line,)))
                except csv.Error:  # a cell over the reader's limit: a person's line
                    skipped["unparsable"] += 1
                    continue
            else:
                row = line.split(",")
            if len(row) != width:
                skipped["wrong_column_count"] += 1
                continue
            try:
                ts = float(row[0])
                price = float(row[4])
            except ValueError:
                skipped["not_a_number"] += 1
                continue
            # Chained comparisons are False for NaN, so this also rejects NaN and inf.
            if not 0.0 <= ts < _INF or not 0.0 <= price < _INF:
                skipped["out_of_range"] += 1
                continue
            asset = row[1]
            s = series.get(asset)
            if s is None:
                if not asset:
                    skipped["missing_id"] += 1
                    continue
                s = series[asset] = Series(asset)
            day = int(ts // DAY)
            if last_day.get(asset) != day:
                last_day[asset] = day
                store.days.add(day)
            fv = row[6]
            cached = bases.get(asset)
            if cached is not None and cached[0] == fv and cached[1] == day:
                base = cached[2]  # firstValue is the same text all day: parse it once
            else:
                base = s.base_for(ts, price, _to_float(fv))
                bases[asset] = (fv, day, base)
            rows += 1
            if s.ts and ts < s.ts[-1]:
                s.place(ts, price, base)
            else:
                s.ts.append(ts)
                s.price.append(price)
                s.base.append(base)
                last_row[asset] = row
    for asset, row in last_row.items():
        s = series[asset]
        s.symbol, s.name = row[2], row[3]
        s.last = Last(float(row[0]), row[4], row[5], row[6])
    store.records += rows


@dataclass(frozen=True, slots=True)
class HistorySnapshot:
    """What to load: the main CSV up to the size it had when live updates began."""

    #: ``crypto_data.csv``, opened when live updates began: a retention trim that
    #: replaces the file afterwards cannot make the load read rows twice.
    data: BinaryIO | None
    data_size: int
    #: Daily files (``history/ticks/YYYY-MM-DD.csv``): the day, path and size each had.
    daily: tuple[tuple[int, Path, int], ...]
    #: The UTC day at the moment of the snapshot: daily files from then on are live.
    today: int


def load_history(snapshot: HistorySnapshot, cancel: threading.Event) -> PriceStore:
    """Build a store from ``crypto_data.csv`` and the daily files it no longer holds.

    ``crypto_data.csv`` may keep only the last days (``storage.retention_days``)
    while the daily files keep everything; days older than the main file's
    first row are read from their daily file, so the chart still shows them.
    """
    store = PriceStore()
    cutoff = (snapshot.today - FULL_DETAIL_DAYS) * DAY
    if snapshot.data is not None:
        load_file(store, snapshot.data, snapshot.data_size, cancel, cutoff)
    first_day = min(store.days, default=snapshot.today)
    older = [d for d in snapshot.daily if d[0] < min(first_day, snapshot.today)]
    if older:
        past = PriceStore()
        for _day, path, size in sorted(older):
            try:
                with path.open("rb") as fh:
                    load_file(past, fh, size, cancel, cutoff)
            except OSError:
                past.skipped["unreadable_daily_file"] += 1
        past.merge(store)
        store = past
    store.compact(cutoff)
    return store
