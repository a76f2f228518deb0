"""The ``firstValue`` cell of every CSV row, decided by the sink at write time.

The rule, checkable in each file on its own: a row's ``firstValue`` is the
``priceUsd`` of the first row of the same asset and UTC day in that file.

The daily file ``history/ticks/D.csv`` holds exactly the rows of day D in the
order they were written, so its first row per asset *is* the answer — for the
daily file, and for ``crypto_data.csv`` too (the same rows, in the same order,
written in the same transaction; its retention trim removes whole days). So the
book needs no state of its own: a day not in memory is read back from the
committed part of its daily file. A batch's new first rows stay pending until
the sink's transaction commits; a failed batch leaves nothing behind.

``crypto_last_values.csv`` repeats the newest row of each asset of
``crypto_data.csv``, its ``firstValue`` included.
"""

from __future__ import annotations

import csv
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from cryptostream.csvrow import quoted, text_cell
from cryptostream.tick import Tick

#: Bytes of a daily file read and split at a time (see read_lines).
_BLOCK = 1 << 20
#: Days whose first prices stay in memory (a late tick for an older one reads its file).
KEEP_DAYS = 8
#: A price cell as the sink writes it (a plain, non-negative decimal in ASCII digits).
_PRICE = re.compile(rb"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: Told of a line that cannot give a first price: (reason, file).
Skipped = Callable[[str, str], None]


def ignore_skipped(reason: str, file: str) -> None:
    """A :data:`Skipped` that is told nothing (readers whose caller does not count)."""


class FirstValueBook:
    def __init__(
        self,
        ticks_dir: Path,
        committed_size: Callable[[str], int | None],
        skipped: Skipped = ignore_skipped,
    ) -> None:
        self._ticks_dir = ticks_dir
        self._committed_size = committed_size
        self._skipped = skipped
        # day -> id cell -> priceUsd of the day's first committed row of that asset.
        self._firsts: OrderedDict[str, dict[str, str]] = OrderedDict()
        # The same for rows of the batch being written, until it commits.
        self._pending: dict[str, dict[str, str]] = {}
        # The day last moved to the end of _firsts (most rows are of one day: no move).
        self._newest = ""
        # Asset id -> its CSV cell: the file knows an asset by the cell it holds.
        self._cells: dict[str, str] = {}

    def stamp(self, tick: Tick, day: str) -> Tick:
        """``tick`` with the firstValue its row gets; ``day`` is its UTC date."""
        first = self.first(tick, day)
        return tick if tick.first_value == first else tick.with_first_value(first)

    def first(self, tick: Tick, day: str) -> str:
        """The firstValue of ``tick``'s row (``day`` is its UTC date): the price of the
        first row of its asset and day, committed or of the batch (then ``tick``'s own
        price when it is that first row). The same for every row of an asset and day in
        a batch: a batch asks once per asset and day."""
        firsts = self._firsts.get(day)
        if firsts is None:
            firsts = self._load(day)
        elif day != self._newest:
            self._firsts.move_to_end(day)  # least recently used goes first
            self._newest = day
        cell = self._cells.get(tick.id)
        if cell is None:
            if len(self._cells) >= 4096:  # odd input must not grow it without bound
                self._cells.clear()
            cell = self._cells[tick.id] = text_cell(tick.id)
        first = firsts.get(cell)
        if first is None:
            first = self._pending.setdefault(day, {}).setdefault(cell, tick.price_usd)
        return first

    def commit(self) -> None:
        """The batch is durable: its first rows are the days' first rows now."""
        for day, new in self._pending.items():
            firsts = self._firsts.get(day)
            if firsts is not None:
                firsts.update(new)
        self._pending.clear()

    def discard(self) -> None:
        """The batch was rolled back: none of its rows counts."""
        self._pending.clear()

    def forget_day(self, day: str) -> None:
        """The day's file was set aside: its first rows are read from the new one."""
        self._firsts.pop(day, None)
        self._pending.pop(day, None)
        if day == self._newest:
            self._newest = ""

    def forget(self) -> None:
        """Drop everything in memory (the files may have changed under us)."""
        self._firsts.clear()
        self._pending.clear()
        self._newest = ""

    def _load(self, day: str) -> dict[str, str]:
        firsts = _first_prices(
            self._ticks_dir / f"{day}.csv", self._committed_size(day) or 0, self._skipped
        )
        self._firsts[day] = firsts
        self._newest = day
        while len(self._firsts) > KEEP_DAYS:
            self._firsts.popitem(last=False)
        return firsts


def read_lines(path: Path, size: int, start: int = 0) -> Iterator[bytes]:
    """The complete lines (without ``\\n``) of bytes ``start`` to ``size`` of ``path``
    (``start`` is where a line begins: 0, or a length the sink committed).

    Read and split a block at a time: a day's file is ~100 MB late in the day, and one
    ``split`` of all of it would hold the GIL for ~150 ms (the event loop waits on it
    while the sink's thread reads)."""
    with path.open("rb") as fh:
        fh.seek(start)
        rest = b""
        left = size - start
        while left > 0:
            block = fh.read(min(_BLOCK, left))
            if not block:
                break
            left -= len(block)
            lines = (rest + block).split(b"\n")
            # After the last newline: the start of the next block's first line, or at
            # the end a torn line that does not count.
            rest = lines.pop()
            yield from lines


def _first_prices(path: Path, size: int, skipped: Skipped = ignore_skipped) -> dict[str, str]:
    """Id cell -> priceUsd of its first row, in the first ``size`` bytes of a daily file.

    A line a person changed (a price cell that is not a number, a byte that is not
    UTF-8, a cell no CSV reader takes) is skipped and reported, never raised: the
    first row of the asset that can be read counts."""
    firsts: dict[str, str] = {}
    if size <= 0:
        return firsts
    try:
        for raw in islice(read_lines(path, size), 1, None):  # after the header
            if b'"' in raw:
                # A quoted text cell (a comma or quote in it): the slow, exact path.
                try:
                    row = next(csv.reader([raw.decode("utf-8", errors="replace")]), [])
                except csv.Error:
                    skipped("unparsable", path.name)
                    continue
                if len(row) < 5:
                    continue
                # The cell as the sink wrote it, from its parsed text.
                cell = quoted(row[1])
                price_cell = row[4].encode("utf-8", errors="replace")
            else:
                parts = raw.split(b",", 5)
                if len(parts) < 6:
                    continue
                cell = parts[1].decode("utf-8", errors="replace")
                price_cell = parts[4]
            if cell in firsts:
                continue
            if _PRICE.fullmatch(price_cell) is None:
                reason = "not_utf8" if b"\xef\xbf\xbd" in price_cell else "not_a_number"
                try:
                    price_cell.decode()
                except UnicodeDecodeError:
                    reason = "not_utf8"
                skipped(reason, path.name)
                continue
            firsts[cell] = price_cell.decode()
    except FileNotFoundError:
        pass
    return firsts
