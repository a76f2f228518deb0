"""Clocks are inputs: how far a source's clock is from this machine's.

**Skew.** A laptop or WSL 2 clock that drifted after sleep can be hours off. A
source that stamps ticks with its own time (CoinCap's ``timestamp``) then sends
ticks hours "ahead" or "behind". They are data, and they are written with the
source's time; what the service does is *say so*: :class:`ClockSkew` measures the
difference at every answer (the API's own time, and the HTTP ``Date`` header as a
second witness), keeps it in ``cryptostream_clock_skew_seconds{source}``, says it
once as a ``clock_skew`` warning when it exceeds :data:`SKEW_REPORTED`, and hands
the dashboard a note while it lasts.
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
