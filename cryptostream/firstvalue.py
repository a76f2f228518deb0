"""``firstValue``: the first price of each asset on the current UTC date.

It is assigned before a tick is published (so it travels in the Kafka message
and every reader agrees on it), kept in a small state file so a restart during
the day keeps the morning's value, and resets with the first tick after 00:00 UTC.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from cryptostream.days import Days
from cryptostream.files import atomic_write
from cryptostream.logs import get_logger
from cryptostream.tick import Tick

log = get_logger(__name__)


class FirstValues:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self._path = path
        self._fsync = fsync
        # asset id -> (UTC date, first price of that date)
        self._values: dict[str, tuple[str, str]] = {}
        self._day = Days().name
        self._load()

    def _load(self) -> None:
        try:
            raw = orjson.loads(self._path.read_bytes())
            self._values = {k: (str(v[0]), str(v[1])) for k, v in raw["assets"].items()}
        except FileNotFoundError:
            return
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # Losing this file costs only today's firstValue; say so and go on.
            log.warning("first_values_unreadable", path=str(self._path), error=str(exc))
            self._values = {}

    def assign(self, tick: Tick) -> Tick:
        """Return ``tick`` with its ``firstValue``; persists a new day's value first."""
        date = self._day(tick.timestamp)
        known = self._values.get(tick.id)
        if known is not None and known[0] == date:
            return tick.with_first_value(known[1])
        if known is not None and known[0] > date:
            # A late tick from an earlier day: that day's first value is not kept.
            return tick
        self._values[tick.id] = (date, tick.price_usd)
        self._save()
        return tick.with_first_value(tick.price_usd)

    def _save(self) -> None:
        data = orjson.dumps({"assets": {k: list(v) for k, v in sorted(self._values.items())}})
        try:
            atomic_write(self._path, data, fsync=self._fsync)
        except OSError as exc:
            # The tick still carries the right value; only a restart today would
            # pick a later price. Not worth stopping the pipeline for.
            log.warning("first_values_not_saved", path=str(self._path), error=exc.strerror)
