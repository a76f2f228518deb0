"""Reading the sink's files back, whatever a person put in them.

The files belong to the user: a note typed into ``crypto_data.csv``, a byte
that is not UTF-8, a cell no number can be read from. Every reader of the
sink's files (the retention trim, firstValue, the candles, the recovery on
start) skips a line it cannot parse, keeps its bytes where they are, counts it
(``cryptostream_rows_unreadable_total{reader, reason}``) and says so once per
reader and reason: what a file holds never stops the service.
"""

from __future__ import annotations

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics

log = get_logger(__name__)


class Unreadable:
    """Counts and reports the lines the readers skip (one sink, one thread)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._logged: set[tuple[str, str]] = set()

    def skip(self, reader: str, reason: str, file: str, count: int = 1) -> None:
        if count <= 0:
            return
        if self._metrics is not None:
            self._metrics.rows_unreadable.labels(reader, reason).inc(count)
        if (reader, reason) in self._logged:
            return
        self._logged.add((reader, reason))
        log.warning(
            "rows_unreadable",
            reader=reader,
            reason=reason,
            file=file,
            count=count,
            note="skipped, bytes kept; logged once per reader and reason, counted in "
            "cryptostream_rows_unreadable_total",
        )
