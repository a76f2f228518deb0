"""The data directory (``storage.data_dir``): every file cryptostream keeps, named here::

    crypto_data.csv                             one row per tick, appended
    crypto_last_values.csv                      the newest tick of each asset
    history/ticks/YYYY-MM-DD.csv                the same rows by UTC day, kept forever
    history/candles/{1m,1h}/YYYY-MM-DD.csv      OHLC candles per asset, derived from the
    history/candles/1d/YYYY.csv                 daily files (1d: one file per UTC year)
    history/backfill/<interval>/YYYY-MM-DD.csv  price history from ``cryptostream backfill``
    errors/dead_letters.jsonl                   messages on the topic that are not valid ticks
    crypto_data.edited-<UTC time>.csv           a file a person changed under the running
    errors/dead_letters.edited-<UTC time>.jsonl sink (appended to, saved over, shortened),
    history/edited/YYYY-MM-DD.edited-<UTC>.csv  kept as it was; a fresh one took its place
    .cryptostream/                              the sink's state (offsets and file lengths),
                                                ``firstValue`` of the day, ticks spooled at
                                                shutdown, candle watermarks, the CoinCap
                                                credit ledger, backfill progress and
                                                the lock of each interval's backfill

Names are relative to the data directory, with ``/`` separators: the sink's
state records file lengths under them, so they are part of its format.
"""

from __future__ import annotations

DATA_FILE = "crypto_data.csv"
LAST_VALUES_FILE = "crypto_last_values.csv"
TICKS_DIR = "history/ticks"
ERRORS_DIR = "errors"
DEAD_LETTER_FILE = f"{ERRORS_DIR}/dead_letters.jsonl"
STATE_DIR = ".cryptostream"
SINK_STATE_FILE = f"{STATE_DIR}/sink_state.json"
#: What the batch in flight appends (each file's start, end and first bytes): on start,
#: a tail that is exactly this is the sink's own uncommitted write, anything else a person's.
SINK_PENDING_FILE = f"{STATE_DIR}/sink_pending.json"
#: Daily files a person changed are kept here, outside history/ticks: every reader of that
#: folder (Power BI, the candles, the dashboard) would count their rows twice.
EDITED_DIR = "history/edited"
FIRST_VALUES_FILE = f"{STATE_DIR}/first_values.json"
SPOOL_FILE = f"{STATE_DIR}/unpublished.jsonl"
SPOOL_PROGRESS_FILE = f"{STATE_DIR}/unpublished.progress"
#: Per UTC day, the tick-file length its candle files were computed from (all levels).
CANDLE_WATERMARKS_FILE = f"{STATE_DIR}/candles.json"
#: The CoinCap credit ledger (shared by ``run`` and ``backfill``) and its lock.
CREDITS_FILE = f"{STATE_DIR}/coincap-credits.json"
CREDITS_LOCK_FILE = f"{STATE_DIR}/coincap-credits.lock"


def daily_file(day: str) -> str:
    """The tick file of UTC day ``day`` (``YYYY-MM-DD``)."""
    return f"{TICKS_DIR}/{day}.csv"


def set_aside_file(name: str, when: str) -> str:
    """Where a file a person changed is kept: ``crypto_data.csv`` ->
    ``crypto_data.edited-<when>.csv``; a daily file ->
    ``history/edited/<day>.edited-<when>.csv``."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if folder == TICKS_DIR:
        folder = EDITED_DIR
    kept = f"{stem}.edited-{when}{dot}{ext}"
    return f"{folder}/{kept}" if folder else kept


def candle_file(period: str, day: str) -> str:
    """The ``period`` (``1m``, ``1h``, ``1d``) candle file that holds UTC day ``day``."""
    name = day[:4] if period == "1d" else day  # daily candles: one file per year
    return f"history/candles/{period}/{name}.csv"


def backfill_dir(interval: str) -> str:
    """The folder of ``interval``'s backfill files, one per UTC day."""
    return f"history/backfill/{interval}"


def backfill_progress_file(interval: str) -> str:
    return f"{STATE_DIR}/backfill-{interval}.json"


def backfill_lock_file(interval: str) -> str:
    """Held by the one backfill of ``interval`` running on the data directory."""
    return f"{STATE_DIR}/backfill-{interval}.lock"
