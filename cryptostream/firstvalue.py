"""``firstValue`` in the Kafka message: the first price of each asset and UTC day
that this service handed to Kafka.

The producer stamps it on each batch just before the batch is first sent, in
send order — after the bounded queue, so a tick dropped there never becomes a
day's first value — and saves the values only once Kafka acknowledged the batch
(and at shutdown, for the spooled ticks that go out first on the next start).
A tick lost in a kill before its acknowledgement is therefore not remembered as
the day's first. It resets with the first tick after 00:00 UTC; a late tick of
an earlier day carries none (null).

It is what the topic's readers get; the CSV files do not take it on trust: the
sink decides every row's firstValue from what the files hold
(:mod:`cryptostream.sink.firstvalues`).
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
        self._dirty = False
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

    def stamp(self, ticks: list[Tick]) -> list[Tick]:
        """The ticks with their ``firstValue``, in order; one that has it keeps it."""
        return [t if t.first_value is not None else self.assign(t) for t in ticks]

    def assign(self, tick: Tick) -> Tick:
        """Return ``tick`` with its ``firstValue`` (remembered, saved by :meth:`save`)."""
        date = self._day(tick.timestamp)
        known = self._values.get(tick.id)
        if known is not None and known[0] == date:
            return tick.with_first_value(known[1])
        if known is not None and known[0] > date:
            # A late tick from an earlier day: that day's first value is not kept.
            return tick
        self._values[tick.id] = (date, tick.price_usd)
        self._dirty = True
        return tick.with_first_value(tick.price_usd)

    def save(self) -> None:
        """Persist the values (after Kafka acknowledged the ticks that carry them)."""
        if not self._dirty:
            return
        data = orjson.dumps({"assets": {k: list(v) for k, v in sorted(self._values.items())}})
        try:
            atomic_write(self._path, data, fsync=self._fsync)
        except OSError as exc:
            # Only a restart today would pick a later price for the topic (the CSV
            # files decide their own). Not worth stopping the pipeline for.
            log.warning("first_values_not_saved", path=str(self._path), error=exc.strerror)
            return
        self._dirty = False
