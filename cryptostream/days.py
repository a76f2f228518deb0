"""UTC calendar days of Unix timestamps."""

from __future__ import annotations

import datetime as dt

DAY = 86400


def day_name(ts: float) -> str:
    """The UTC date of a Unix timestamp, ``YYYY-MM-DD``."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).date().isoformat()


def day_start(day: str) -> float:
    """Unix seconds of 00:00 UTC of an ISO date ``YYYY-MM-DD``."""
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()


class Days:
    """UTC date of a timestamp, fast for the common case of many ticks on one day."""

    __slots__ = ("_end", "_name", "_start")

    def __init__(self) -> None:
        self._start = self._end = 0.0
        self._name = ""

    def name(self, ts: float) -> str:
        if not self._start <= ts < self._end:
            self._name = day_name(ts)
            self._start = day_start(self._name)
            self._end = self._start + DAY
        return self._name
