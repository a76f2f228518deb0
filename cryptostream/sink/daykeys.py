"""Was this tick written before? The committed daily files say, whatever the window holds.

The sink's duplicate window remembers each asset's last rows (``RECENT_KEYS``):
enough for the copies a producer retry makes. A re-read of older records (a
topic followed again from its beginning, the last record of a log that lost its
tail) brings ticks older than any window. The daily file of a tick's UTC day
holds every row of that day, so it is the truth: :class:`DayKeys` answers
"does the committed part of day D's file hold this (asset, timestamp, price)?".

The sink asks only for a tick older than its asset's newest row and not in the
window, so a feed of new ticks never reads a file. A day asked about is read
once, its keys kept as sorted arrays (16 bytes a row: the time, and a 64-bit
hash of the price that only has to tell apart prices of one asset at one
time); rows committed after that are read from the file's new tail at the next
question. A line that cannot be parsed is skipped and reported (see
:mod:`cryptostream.sink.readback`), never raised.
"""

from __future__ import annotations

import csv
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptostream.csvrow import quoted
from cryptostream.sink.firstvalues import Skipped, ignore_skipped, read_lines

#: Days whose keys stay in memory (a re-read goes through the days in order).
KEEP_DAYS = 3
#: Keys read from a file's new tail are kept in a set; past this many the day is
#: read again into arrays (a set costs ~10 times the memory per key).
_TAIL_KEYS = 1 << 16

#: A row's key in its file: (id cell as written, timestamp, priceUsd).
FileKey = tuple[str, float, str]


@dataclass(slots=True)
class _Day:
    #: Bytes of the file read so far (a length the sink committed).
    size: int
    #: Id cell -> (times, hashes of the prices), sorted by time.
    base: dict[str, tuple[array[float], array[int]]]
    #: Keys of the rows committed after ``base`` was read.
    tail: set[FileKey] = field(default_factory=set)


class DayKeys:
    def __init__(
        self,
        ticks_dir: Path,
        committed_size: Callable[[str], int | None],
        skipped: Skipped = ignore_skipped,
    ) -> None:
        self._ticks_dir = ticks_dir
        self._committed_size = committed_size
        self._skipped = skipped
        self._days: OrderedDict[str, _Day] = OrderedDict()

    def holds(self, cell: str, timestamp: float, price: str, day: str) -> bool:
        """Does the committed part of ``day``'s file hold a row of the asset whose id
        cell is ``cell`` with this timestamp and priceUsd?"""
        keys = self._keys(day)
        entry = keys.base.get(cell)
        if entry is not None:
            times, prices = entry
            i = bisect_left(times, timestamp)
            wanted = hash(price)
            while i < len(times) and times[i] == timestamp:
                if prices[i] == wanted:
                    return True
                i += 1
        return (cell, timestamp, price) in keys.tail

    def forget_day(self, day: str) -> None:
        """The day's file was set aside: its keys are those of the new one."""
        self._days.pop(day, None)

    def forget(self) -> None:
        self._days.clear()

    def _keys(self, day: str) -> _Day:
        size = self._committed_size(day) or 0
        keys = self._days.get(day)
        if keys is not None and size >= keys.size:
            self._days.move_to_end(day)
            if size > keys.size:
                self._read_tail(day, keys, size)
            if len(keys.tail) <= _TAIL_KEYS:
                return keys
        keys = self._days[day] = self._read(day, size)
        while len(self._days) > KEEP_DAYS:
            self._days.popitem(last=False)
        return keys

    def _path(self, day: str) -> Path:
        return self._ticks_dir / f"{day}.csv"

    def _read(self, day: str, size: int) -> _Day:
        per_cell: dict[str, list[tuple[float, int]]] = {}
        for cell, ts, price in self._file_keys(day, 0, size):
            per_cell.setdefault(cell, []).append((ts, hash(price)))
        base: dict[str, tuple[array[float], array[int]]] = {}
        for cell, pairs in per_cell.items():
            pairs.sort()
            base[cell] = (array("d", [p[0] for p in pairs]), array("q", [p[1] for p in pairs]))
        return _Day(size, base)

    def _read_tail(self, day: str, keys: _Day, size: int) -> None:
        keys.tail.update(self._file_keys(day, keys.size, size))
        keys.size = size

    def _file_keys(self, day: str, start: int, size: int) -> list[FileKey]:
        """The keys of the complete lines between ``start`` and ``size``."""
        path = self._path(day)
        found: list[FileKey] = []
        try:
            for raw in read_lines(path, size, start):
                key = _line_key(raw)
                if key is None:
                    if not raw.startswith(b"timestamp,"):  # the header
                        self._skipped("unparsable", path.name)
                    continue
                found.append(key)
        except FileNotFoundError:
            pass
        return found


def _line_key(raw: bytes) -> FileKey | None:
    """(id cell, timestamp, priceUsd) of a daily file's line; None if it has none."""
    if b'"' in raw:
        # A quoted text cell (a comma or quote in it): the slow, exact path.
        try:
            row = next(csv.reader([raw.decode("utf-8", errors="replace")]), [])
        except csv.Error:
            return None
        if len(row) < 6:
            return None
        cell, ts_cell, price = quoted(row[1]), row[0], row[4]
    else:
        parts = raw.split(b",", 5)
        if len(parts) < 6:
            return None
        cell = parts[1].decode("utf-8", errors="replace")
        ts_cell, price = (
            parts[0].decode("ascii", errors="replace"),
            parts[4].decode("utf-8", errors="replace"),
        )
    try:
        return cell, float(ts_cell), price
    except ValueError:
        return None
