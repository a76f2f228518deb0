"""Progress of a long command (backfill, replay): a bar on a terminal, log lines otherwise.

A bar in a log file or a CI log is noise, and a job that says nothing looks
hung, so one or the other: the bar when stderr is a terminal (or with
``--progress``), else an info event every :data:`LOG_EVERY` seconds (also with
``--no-progress``).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from cryptostream.logs import get_logger

log = get_logger(__name__)

#: Seconds between progress log lines when no bar is shown.
LOG_EVERY = 5.0


class Progress:
    """Counts finished units of work out of ``total``.

    ``show``: ``None`` shows the bar when stderr is a terminal; ``True`` or
    ``False`` force it on or off. Without the bar, ``event`` is logged with
    ``{count_key: done, "of": total}`` at most every :data:`LOG_EVERY` seconds.
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str,
        event: str,
        count_key: str,
        show: bool | None,
        unit_scale: bool = False,
    ) -> None:
        self.total = total
        self.done = 0
        self._event = event
        self._count_key = count_key
        self._show_bar = sys.stderr.isatty() if show is None else show
        self._bar = tqdm(
            total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=not self._show_bar
        )
        self._last_log = time.monotonic()

    def update(self, count: int = 1) -> None:
        self.done += count
        self._bar.update(count)
        if self._show_bar:
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.info(self._event, **{self._count_key: self.done, "of": self.total})

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._bar.close()
