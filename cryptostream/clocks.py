"""Clocks are inputs: how far a source's clock is from this machine's.

**Skew.** A laptop or WSL 2 clock that drifted after sleep can be hours off. A
source that stamps ticks with its own time (CoinCap's ``timestamp``) then sends
ticks hours "ahead" or "behind". They are data, and they are written with the
source's time; what the service does is *say so*: :class:`ClockSkew` measures the
difference at every answer (the API's own time, and the HTTP ``Date`` header as a
second witness), keeps it in ``cryptostream_clock_skew_seconds{source}``, says it
once as a ``clock_skew`` warning when it exceeds :data:`SKEW_REPORTED`, and hands
the dashboard a note while it lasts.

**Steps.** This machine's own clock can step back (an NTP correction, a restored
VM). Whatever waits or spaces (pacing, Binance's ban) measures on the monotonic
clock, which never steps; what stamps ticks with the local time (Kraken, the price
stream, the demo) reads it through :data:`wall`, a :class:`StepWatch` that notices
a step back against the monotonic clock and says it once (``clock_stepped_back``).
A tick stamped after the step carries the corrected time, older than the ticks
before it: the repeat filters take such a jump as a step, not as a repeat.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics

log = get_logger(__name__)

#: A skew beyond this many seconds is reported (latency and cached answers stay well below).
SKEW_REPORTED = 60.0
#: A reported skew is "gone" once it is back below this.
SKEW_GONE = SKEW_REPORTED / 2


#: A wall clock that moved this much less than the monotonic one stepped back.
STEP_BACK = 1.0


class StepWatch:
    """Notices the wall clock stepping back, by comparing it with the monotonic clock
    at each reading; says each step once (``clock_stepped_back``, with ``by_s``)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._offset: float | None = None  # wall minus monotonic at the last reading
        self.steps = 0

    def now(self) -> float:
        """The wall-clock time (Unix seconds), noting a step back since the last call."""
        wall = self._wall()
        self.check(wall, self._monotonic())
        return wall

    def check(self, wall: float, monotonic: float) -> float:
        """Seconds the wall clock stepped back since the last reading (0.0: none)."""
        offset = wall - monotonic
        last, self._offset = self._offset, offset
        if last is None or last - offset < STEP_BACK:
            return 0.0
        back = last - offset
        self.steps += 1
        log.warning(
            "clock_stepped_back",
            by_s=round(back, 1),
            now=_iso(wall),
            note="spacing and waits use the monotonic clock; ticks carry the corrected time",
        )
        return back


#: The process's wall clock, for whatever stamps ticks with this machine's time.
wall = StepWatch()


def _iso(ts: float) -> str:
    return (
        dt.datetime.fromtimestamp(ts, tz=dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def http_date(value: str | None) -> float | None:
    """An HTTP date (``Date``, ``Retry-After``) as Unix seconds; None when missing or
    unreadable (a date without a zone is taken as UTC)."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def date_header(headers: Mapping[str, str]) -> float | None:
    """The HTTP ``Date`` header as Unix seconds; None when missing or unreadable."""
    return http_date(headers.get("Date"))


def describe_skew(seconds: float) -> str:
    """``3 h 0 min ahead``: a skew in words, for the log and the dashboard."""
    size = abs(seconds)
    way = "ahead of" if seconds > 0 else "behind"
    if size < 120:
        text = f"{size:.0f} s"
    elif size < 7200:
        text = f"{size / 60:.0f} min"
    elif size < 2 * 86400:
        hours, minutes = divmod(round(size / 60), 60)
        text = f"{hours} h {minutes} min"
    else:
        text = f"{size / 86400:.1f} days"
    return f"{text} {way}"


class ClockSkew:
    """The skew of each source's clock against this machine's, reported once.

    One per process, shared by the sources. ``clock`` is this machine's wall clock.
    """

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self.clock = clock
        #: The newest measurement per source: seconds the source is ahead (negative: behind).
        self.skew: dict[str, float] = {}
        #: The source and skew said in the ``clock_skew`` warning, while it lasts.
        self.reported: tuple[str, float] | None = None

    def observe(
        self,
        source: str,
        remote: float | None,
        *,
        local: float | None = None,
        date: float | None = None,
    ) -> float | None:
        """One answer of ``source``: its clock said ``remote`` (the API's own time, Unix
        seconds) and its ``Date`` header ``date``, at ``local`` on this machine's clock.
        Returns the skew (None when the answer carried no time)."""
        now = self.clock() if local is None else local
        # The API's own time is what the ticks carry; the Date header stands in without it.
        witness = remote if remote is not None else date
        if witness is None:
            return None
        skew = witness - now
        date_skew = None if date is None else date - now
        self.skew[source] = skew
        self._metrics.clock_skew.labels(source).set(round(skew, 3))
        if abs(skew) >= SKEW_REPORTED and self.reported is None:
            self.reported = (source, skew)
            log.warning(
                "clock_skew",
                source=source,
                skew_s=round(skew, 1),
                date_header_skew_s=None if date_skew is None else round(date_skew, 1),
                source_time=_iso(witness),
                local_time=_iso(now),
                ticks=f"written with {source}'s time",
                hint="this machine's clock or the source's is off: check the time sync "
                "(WSL 2 after sleep: wsl --shutdown; Linux: timedatectl)",
            )
        elif self.reported is not None and self.reported[0] == source and abs(skew) < SKEW_GONE:
            log.info("clock_skew_gone", source=source, skew_s=round(skew, 1))
            self.reported = None
        elif self.reported is not None and self.reported[0] == source:
            self.reported = (source, skew)
        return skew

    def status(self) -> dict[str, Any] | None:
        """For the dashboard: the skew being reported, with a note; None when clocks agree."""
        if self.reported is None:
            return None
        source, skew = self.reported
        return {
            "source": source,
            "skewSeconds": round(skew, 1),
            "note": f"{source}'s clock is {describe_skew(skew)} this machine's: ticks keep "
            f"{source}'s time. Check this machine's time sync.",
        }
