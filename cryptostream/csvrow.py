"""Turning ticks into CSV lines that spreadsheets read safely, and reading them back.

The hot path of the sink: one call per tick, so it builds the line with plain
string operations instead of :mod:`csv` (numeric cells are validated decimals
and never need quoting; only the three text cells do). The text cells of an
asset (id, symbol, name) are the same tick after tick, so they are made safe
once and remembered.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptostream.tick import Tick

HEADER = "timestamp,id,symbol,name,priceUsd,changePercent24Hr,firstValue,vwap24Hr\n"
COLUMNS = tuple(HEADER.rstrip().split(","))

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A leading character that makes Excel/Power BI/LibreOffice treat a cell as a formula.
_FORMULA_START = ("=", "+", "-", "@")
_NEEDS_QUOTES = re.compile(r'[",]')
# (id, symbol, name) -> "id,symbol,name" as safe cells. A handful of assets in
# practice; cleared when full, so odd input can never make it grow without bound.
_TEXT_CELLS: dict[tuple[str, str, str], str] = {}
_TEXT_CELLS_MAX = 4096


def text_cell(value: str) -> str:
    """A text cell: no control characters, no formula, quoted when needed.

    Line breaks and tabs become spaces (a CSV row is one line), and a cell that
    would start a formula gets a leading apostrophe, the spreadsheet convention
    for "this is text".
    """
    if _CONTROL.search(value):
        value = _CONTROL.sub(" ", value)
    # Leading blanks (a tab or CR turned into a space) do not disarm a formula.
    if value.lstrip().startswith(_FORMULA_START):
        value = "'" + value
    return quoted(value)


def quoted(value: str) -> str:
    """``value`` as a CSV cell: quoted, its quotes doubled, when it holds a quote or comma."""
    if _NEEDS_QUOTES.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_line(tick: Tick) -> str:
    """One CSV line (with ``\\n``) in :data:`COLUMNS` order."""
    key = (tick.id, tick.symbol, tick.name)
    texts = _TEXT_CELLS.get(key)
    if texts is None:
        if len(_TEXT_CELLS) >= _TEXT_CELLS_MAX:
            _TEXT_CELLS.clear()
        texts = _TEXT_CELLS[key] = ",".join(map(text_cell, key))
    # repr() of a float is the shortest text that reads back as the same float.
    return (
        f"{tick.timestamp!r},{texts},{tick.price_usd},{tick.change_percent_24h or ''},"
        f"{tick.first_value or ''},{tick.vwap_24h or ''}\n"
    )


def _ignore(reason: str) -> None:
    pass


def read_rows(
    path: Path, skipped: Callable[[str], None] = _ignore, limit: int | None = None
) -> Iterator[list[str]]:
    """The rows of a tick CSV file, without the header and rows of another width; with
    ``limit``, of its first ``limit`` bytes only (a committed length: the rows appended
    after it are not read).

    Whatever a person put in the file never raises: a byte that is not UTF-8 reads
    as U+FFFD, and a line no CSV reader takes (a cell over the reader's size limit)
    is skipped; both, and rows of another width, are told to ``skipped`` by reason."""
    try:
        raw = path.open("rb", buffering=0)
    except FileNotFoundError:
        return
    reader: io.RawIOBase = raw if limit is None else _Prefix(raw, limit)
    fh = io.TextIOWrapper(io.BufferedReader(reader), encoding="utf-8", errors="replace", newline="")
    width = len(COLUMNS)
    with fh:
        rows = csv.reader(fh)
        first = True
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error:
                skipped("unparsable")  # the reader goes on with the next line
                continue
            if first:
                first = False  # the header
            elif len(row) == width:
                yield row
            else:
                skipped("wrong_column_count")


class _Prefix(io.RawIOBase):
    """The first ``limit`` bytes of a raw file."""

    def __init__(self, raw: io.FileIO, limit: int) -> None:
        super().__init__()
        self._raw = raw
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._raw.readinto(memoryview(buffer)[:n]) or 0
        self._left -= got
        return got

    def close(self) -> None:
        self._raw.close()
        super().close()
