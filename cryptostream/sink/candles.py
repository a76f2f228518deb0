"""OHLC candles per asset for 1 minute, 1 hour and 1 day, derived from the daily tick files.

Files (UTC days, see :mod:`cryptostream.layout`): one per day for 1m and 1h, one
per year for 1d (a row per asset and day).

Columns: ``start,id,symbol,open,high,low,close,firstTimestamp,lastTimestamp,ticks,vwap24HrMean``
(``start`` in Unix seconds, the candle's period start).

The rule for late and out-of-order ticks: a candle is a function of the ticks
*observed* in its period, whatever order they arrived in — ``open`` is the
price with the smallest timestamp, ``close`` the one with the largest — so a
late tick corrects its candle instead of being dropped.

Crash safety: the tick files are the exactly-once source, candles are derived
from them. A day's candles are rebuilt from its durable tick file whenever the
day is not in memory (a late tick for an old day, or after a restart). After
the three levels of a day are replaced, ``.cryptostream/candles.json`` records
the length of the tick file they were computed from (a watermark per day, for
every level at once). On start, every day whose watermark is not its tick
file's committed length is rebuilt — so a kill between the 1m, 1h and 1d
replacements, or before the watermark, costs a rebuild, never a stale level.

Off the sink's commit path: with ``background=True`` (the sink's setting) a
flush due after a batch renders the changed days' files on the caller's thread
(Python, small) and hands the writing — each file written, fsynced and renamed,
the directories fsynced, then the watermarks — to a thread of its own, so the
next transaction does not wait for those fsyncs. One flush is in flight at a
time: while it is, the next due one waits for a later batch. A failure of the
background write is raised by the next call that settles it (the sink reports
it as ``candles_not_written``) and its days are written again at the next flush.
:meth:`CandleBook.close` and :meth:`CandleBook.recover` wait for it.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from pathlib import Path

import orjson

from cryptostream.csvrow import read_rows, text_cell
from cryptostream.days import Days, day_start
from cryptostream.files import atomic_write, fsync_dir
from cryptostream.layout import CANDLE_WATERMARKS_FILE, TICKS_DIR, candle_file, daily_file
from cryptostream.logs import get_logger
from cryptostream.tick import Tick

log = get_logger(__name__)

HEADER = "start,id,symbol,open,high,low,close,firstTimestamp,lastTimestamp,ticks,vwap24HrMean\n"
COLUMNS = tuple(HEADER.rstrip().split(","))
#: Seconds between rewrites of the candle files of the days that changed.
FLUSH_EVERY = 5.0
_MEAN = Decimal("1e-16")
#: A daily tick file's stem: a UTC date (other files in history/ticks are not days).
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
#: While a whole file is read through on the sink's thread (a day's ticks read back
#: for its candles after a restart late in the day; crypto_data.csv rewritten by the
#: retention trim), that thread sleeps ``YIELD_SECONDS`` every ``YIELD_ROWS`` rows:
#: measured, the event loop's thread otherwise waited for the GIL for up to 0.9 s at a
#: time during the read-back and 236 ms during the trim (docs/performance.md, table
#: 1b). ~5,000 rows are ~15 ms of work; measured, the read-back took 8 % longer.
YIELD_ROWS = 5_000
YIELD_SECONDS = 0.001
#: Told of a line of a tick file that gives no tick: (reason, file).
Skipped = Callable[[str, str], None]


def _ignore(reason: str, file: str) -> None:
    pass


@dataclass(slots=True)
class Candle:
    symbol: str
    first_ts: float
    open: Decimal
    open_text: str
    high: Decimal
    high_text: str
    low: Decimal
    low_text: str
    last_ts: float
    close_text: str
    ticks: int
    vwap_sum: Decimal
    vwap_n: int

    @classmethod
    def of(cls, ts: float, symbol: str, price: str, vwap: str | None) -> Candle:
        p = Decimal(price)
        v = Decimal(vwap) if vwap else Decimal(0)
        return cls(symbol, ts, p, price, p, price, p, price, ts, price, 1, v, 1 if vwap else 0)

    def add(self, ts: float, price: str, vwap: str | None) -> None:
        p = Decimal(price)
        if ts < self.first_ts:
            self.first_ts, self.open, self.open_text = ts, p, price
        if ts >= self.last_ts:
            self.last_ts, self.close_text = ts, price
        if p > self.high:
            self.high, self.high_text = p, price
        if p < self.low:
            self.low, self.low_text = p, price
        self.ticks += 1
        if vwap:
            self.vwap_sum += Decimal(vwap)
            self.vwap_n += 1

    def merge(self, other: Candle) -> None:
        """Fold a candle of a sub-period into this one (1m → 1h → 1d)."""
        if other.first_ts < self.first_ts:
            self.first_ts, self.open, self.open_text = other.first_ts, other.open, other.open_text
        if other.last_ts >= self.last_ts:
            self.last_ts, self.close_text = other.last_ts, other.close_text
        if other.high > self.high:
            self.high, self.high_text = other.high, other.high_text
        if other.low < self.low:
            self.low, self.low_text = other.low, other.low_text
        self.ticks += other.ticks
        self.vwap_sum += other.vwap_sum
        self.vwap_n += other.vwap_n

    def copy(self) -> Candle:
        return Candle(*(getattr(self, f) for f in self.__slots__))

    def row(self, start: int, asset: str) -> str:
        """The row of this candle; ``asset`` is the id as its CSV cell (``text_cell``)."""
        mean = _mean_text(self.vwap_sum, self.vwap_n) if self.vwap_n else ""
        return (
            f"{start},{asset},{text_cell(self.symbol)},{self.open_text},{self.high_text},{self.low_text},"
            f"{self.close_text},{self.first_ts!r},{self.last_ts!r},{self.ticks},{mean}\n"
        )


def _mean_text(total: Decimal, count: int) -> str:
    """The mean to 16 decimals; a value too long for that (some 12+ integer digits
    against the 28-digit context) is written as computed rather than failing."""
    mean = total / count
    try:
        return str(mean.quantize(_MEAN))
    except InvalidOperation:
        return str(mean)


@dataclass(slots=True)
class _Flush:
    """One flush's file work, decided on the sink's thread: run anywhere, in order."""

    #: File -> its whole new content (its rows, for a year's 1d file that later days of
    #: the same flush add to), each file replaced atomically.
    files: dict[Path, list[str]] = field(default_factory=dict)
    #: The directories of those files, each fsynced once after all the renames.
    dirs: set[Path] = field(default_factory=set)
    #: The days written and the tick-file length their candles were computed from.
    sizes: list[tuple[str, int | None]] = field(default_factory=list)
    #: The watermarks once these days are durable.
    watermarks: dict[str, int] = field(default_factory=dict)
    fsync: bool = True

    def run(self, watermark_path: Path) -> None:
        for path, rows in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            data = (HEADER + "".join(rows)).encode()
            atomic_write(path, data, fsync=self.fsync, sync_dir=False)
        # Each directory once, for all the renames in it, before any watermark says so.
        if self.fsync:
            for directory in sorted(self.dirs):
                fsync_dir(directory)
        # Last: a kill before this leaves a watermark behind, which means a rebuild.
        _write_watermarks(watermark_path, self.watermarks, fsync=self.fsync)


def _write_watermarks(path: Path, marks: dict[str, int], *, fsync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, orjson.dumps({"days": dict(sorted(marks.items()))}), fsync=fsync)


# One day's candles of one level (1-minute ones, unless said): (asset, start) -> candle.
# The asset is named by its CSV cell (text_cell), as a day read back from its tick file
# names it: an id with a formula guard or quotes is then one candle, not two.
_Day = dict[tuple[str, int], Candle]


class CandleBook:
    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: bool = True,
        keep_days: int = 2,
        committed_size: Callable[[str], int | None] | None = None,
        skipped: Skipped = _ignore,
        background: bool = False,
    ) -> None:
        self._data_dir = data_dir
        self._skipped = skipped
        self._ticks_dir = data_dir / TICKS_DIR
        self._watermark_path = data_dir / CANDLE_WATERMARKS_FILE
        self._fsync = fsync
        self._keep_days = keep_days
        # The committed length of a day's tick file (the sink's state); without it, the
        # file's length on disk (equal to it whenever the book is called by the sink).
        self._committed_size = committed_size or self._size_on_disk
        self._days: dict[str, _Day] = {}
        self._dirty: set[str] = set()
        self._watermarks: dict[str, int] = {}
        self._last_flush = 0.0
        self._day_of = Days().name
        # The flushes due after a batch go to a thread of their own (see the module).
        self._background = background
        self._writer: ThreadPoolExecutor | None = None
        self._writing: tuple[Future[None], _Flush] | None = None

    def _size_on_disk(self, day: str) -> int | None:
        try:
            return (self._ticks_dir / f"{day}.csv").stat().st_size
        except FileNotFoundError:
            return None

    # -- feeding -------------------------------------------------------------------

    def add(self, ticks: Iterable[Tick]) -> None:
        """Account for durable ticks, right after their batch commits; rewrites changed
        days at most every FLUSH_EVERY s.

        The ticks are grouped per (asset, minute) first, in arrival order, and each
        group is folded into its candle at once (:func:`_fold`): the same candle as
        one :meth:`Candle.add` per tick, for a fraction of the Python work.
        """
        groups: defaultdict[tuple[str, int], list[Tick]] = defaultdict(list)
        for tick in ticks:
            groups[(tick.id, int(tick.timestamp // 60) * 60)].append(tick)
        loaded: set[str] = set()
        touched: set[str] = set()
        try:
            for (asset, minute), group in groups.items():
                # A UTC day is whole minutes: the minute's day is each of its ticks' day.
                day = self._day_of(minute)
                touched.add(day)
                if day in loaded:
                    continue
                size = self._committed_size(day)
                candles = self._days.get(day)
                if candles is None:
                    # Not in memory: the day's tick file already holds this batch's ticks.
                    path = self._data_dir / daily_file(day)
                    self._days[day] = self._load_day(path, size)
                    loaded.add(day)
                else:
                    _fold(candles, (text_cell(asset), minute), group)
                self._dirty.add(day)
        except BaseException:
            # Part of the batch may be folded in: forget those days, so each is read
            # back from its tick file before its next write (its watermark, left
            # behind, makes a restart rebuild it too).
            for day in touched:
                self._days.pop(day, None)
                self._dirty.discard(day)
            raise
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_EVERY and self.flush(wait=not self._background):
            self._last_flush = now

    def forget(self, day: str) -> None:
        """The day's tick file was set aside: its candles are computed again from the new
        one (its watermark no longer matches, so a restart rebuilds them too)."""
        self._days.pop(day, None)
        self._dirty.discard(day)

    def recover(self) -> None:
        """Rebuild every day whose candles do not match its committed tick file."""
        self._settle(wait=True)
        self._watermarks = self._load_watermarks()
        days = {p.stem for p in self._ticks_dir.glob("*.csv") if _DAY.fullmatch(p.stem)}
        for day in sorted(days):
            size = self._committed_size(day)
            if self._watermarks.get(day) != size or not self._files_exist(day):
                self._days[day] = self._load_day(self._ticks_dir / f"{day}.csv", size)
                self._dirty.add(day)
        # A day without its tick file has no candles to vouch for.
        gone = set(self._watermarks) - days
        for day in gone:
            del self._watermarks[day]
        if self._dirty:
            log.info("candles_rebuilt", days=sorted(self._dirty))
            self.flush()
        elif gone:
            self._save_watermarks()

    def _files_exist(self, day: str) -> bool:
        """Someone may have deleted a candle file: then the day is rebuilt too."""
        return all(
            (self._data_dir / candle_file(period, day)).exists() for period in ("1m", "1h", "1d")
        )

    def _load_watermarks(self) -> dict[str, int]:
        try:
            raw = orjson.loads(self._watermark_path.read_bytes())
            return {str(day): int(size) for day, size in raw["days"].items()}
        except FileNotFoundError:
            return {}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            # Derived data: without watermarks every day is rebuilt once, nothing is lost.
            log.warning("candle_watermarks_unreadable", error=str(exc))
            return {}

    def _save_watermarks(self) -> None:
        _write_watermarks(self._watermark_path, self._watermarks, fsync=self._fsync)

    def _load_day(self, tick_file: Path, size: int | None = None) -> _Day:
        """A day's candles from its tick file (its first ``size`` bytes, if given)."""
        candles: _Day = {}
        cells: dict[str, str] = {}
        for n, (ts, asset, symbol, price, vwap) in enumerate(
            _read_ticks(tick_file, self._skipped, size), 1
        ):
            if not n % YIELD_ROWS:
                time.sleep(YIELD_SECONDS)  # the event loop's turn (see YIELD_ROWS)
            cell = cells.get(asset)
            if cell is None:
                cell = cells[asset] = text_cell(asset)
            _account(candles, cell, ts, symbol, price, vwap)
        return candles

    # -- writing -------------------------------------------------------------------

    def flush(self, *, wait: bool = True) -> bool:
        """Rewrite the candle files of the days that changed. With ``wait`` (the default)
        they are durable on return; without, the writing goes to the book's own thread
        and False means a flush was still in flight: nothing started, the days stay
        changed for a later call. Raises what the writing raised, also a background
        write's, when that is settled here."""
        if not self._settle(wait=wait):
            return False
        if not self._dirty:
            return True
        job = self._prepare()
        if wait:
            self._run(job)
            return True
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candles")
        self._writing = (self._writer.submit(job.run, self._watermark_path), job)
        return True

    @property
    def writing(self) -> Future[None] | None:
        """The background write in flight (or finished but not yet settled), if any."""
        return None if self._writing is None else self._writing[0]

    def close(self) -> None:
        """Write what changed and wait for it; the book's thread ends."""
        try:
            self.flush()
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.shutdown(wait=True)

    def _prepare(self) -> _Flush:
        """The changed days' files rendered, their watermarks decided; the days are no
        longer changed (a failed write makes them so again, see :meth:`_settle`)."""
        job = _Flush(fsync=self._fsync)
        for day in sorted(self._dirty):
            # Read before writing: the candles in memory hold every committed tick of
            # the day, which is exactly this length of its tick file.
            size = self._committed_size(day)
            self._watermarks.pop(day, None)
            self._render_day(day, self._days[day], job)
            job.sizes.append((day, size))
        self._dirty.clear()
        job.watermarks = dict(self._watermarks)
        job.watermarks.update((day, size) for day, size in job.sizes if size is not None)
        # Keep only the newest days in memory; an older one is reloaded if needed.
        for day in sorted(self._days)[: -self._keep_days]:
            del self._days[day]
        return job

    def _run(self, job: _Flush) -> None:
        self._take(job, lambda: job.run(self._watermark_path))

    def _settle(self, *, wait: bool) -> bool:
        """Take in the background write's outcome, waiting for it with ``wait``; False
        while it is still running (and ``wait`` is off)."""
        if self._writing is None:
            return True
        future, job = self._writing
        if not wait and not future.done():
            return False
        self._writing = None
        self._take(job, future.result)
        return True

    def _take(self, job: _Flush, outcome: Callable[[], object]) -> None:
        """The job's outcome (``outcome()`` returns or raises it) taken into the book."""
        try:
            outcome()
        except BaseException:
            self._failed(job)
            raise
        self._done(job)

    def _done(self, job: _Flush) -> None:
        for day, size in job.sizes:
            # Unless a later change of the day took its watermark away again.
            if size is not None and day not in self._dirty:
                self._watermarks[day] = size

    def _failed(self, job: _Flush) -> None:
        # Written again at the next flush, from the candles in memory (a day dropped
        # from memory meanwhile is reloaded from its tick file when it next changes,
        # and its missing watermark makes a restart rebuild it).
        self._dirty.update(day for day, _ in job.sizes if day in self._days)

    def _render_day(self, day: str, minutes: _Day, job: _Flush) -> None:
        """The day's three levels into ``job``: its 1m and 1h files and its year's 1d file."""
        lines_1m, hours = _roll_up(minutes, 3600)
        lines_1h, daily = _roll_up(hours, 86400)
        start_of_day = int(day_start(day))
        year_file = self._data_dir / candle_file("1d", day)
        # The year's rows as an earlier day of this flush left them, else as the last
        # flush did (none is in flight, see flush). Other days' rows stay whole (an id
        # cell may hold a comma); a row sorts by its start, then by its text, which
        # begins with the id cell.
        earlier = job.files.get(year_file)
        year = _read_lines(year_file) if earlier is None else earlier
        lines = [line for line in year if _start(line) != start_of_day]
        lines += (candle.row(start, asset) for (asset, start), candle in daily.items())
        for period, rows in (
            ("1m", lines_1m),
            ("1h", lines_1h),
            ("1d", sorted(lines, key=lambda line: (_start(line), line))),
        ):
            path = self._data_dir / candle_file(period, day)
            job.files[path] = rows
            job.dirs.add(path.parent)


def _roll_up(candles: _Day, period: int) -> tuple[list[str], _Day]:
    """The rows of ``candles`` in time order, and the candles of the next level up
    (``period`` seconds long, a UTC hour or day), folded from them in that order."""
    lines = []
    wider: _Day = {}
    for (asset, start), candle in sorted(candles.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(candle.row(start, asset))
        key = (asset, start - start % period)
        if key in wider:
            wider[key].merge(candle)
        else:
            wider[key] = candle.copy()
    return lines, wider


def _start(line: str) -> int:
    return int(line.split(",", 1)[0])


def _account(
    candles: _Day, asset: str, ts: float, symbol: str, price: str, vwap: str | None
) -> None:
    key = (asset, int(ts // 60) * 60)
    candle = candles.get(key)
    if candle is None:
        candles[key] = Candle.of(ts, symbol, price, vwap)
    else:
        candle.add(ts, price, vwap)


_PRICE = attrgetter("price_usd")
_TIMESTAMP = attrgetter("timestamp")
_VWAP = attrgetter("vwap_24h")


def _fold(candles: _Day, key: tuple[str, int], group: list[Tick]) -> None:
    """Fold ticks of one asset and minute, in arrival order, into their candle: exactly
    what :func:`_account` per tick gives (ties, texts and the VWAP sum's order of
    additions included), with the per-tick work done by C loops."""
    candle = candles.get(key)
    if candle is None:
        # A new candle opens with the first tick, as in _account(); the others fold in.
        head = group[0]
        candle = candles[key] = Candle.of(
            head.timestamp, head.symbol, head.price_usd, head.vwap_24h
        )
        group = group[1:]
        if not group:
            return
    prices = list(map(Decimal, map(_PRICE, group)))
    stamps = list(map(_TIMESTAMP, group))
    indices = range(len(group))
    # max()/min() return the first of equal values, like the strict > and < of add().
    high = max(indices, key=prices.__getitem__)
    low = min(indices, key=prices.__getitem__)
    # The first tick of the smallest time opens; the last of the largest time closes.
    first = min(indices, key=stamps.__getitem__)
    last = max(reversed(indices), key=stamps.__getitem__)
    vwaps: list[str] = list(filter(None, map(_VWAP, group)))
    if group[first].timestamp < candle.first_ts:
        candle.first_ts = group[first].timestamp
        candle.open, candle.open_text = prices[first], group[first].price_usd
    if group[last].timestamp >= candle.last_ts:
        candle.last_ts, candle.close_text = group[last].timestamp, group[last].price_usd
    if prices[high] > candle.high:
        candle.high, candle.high_text = prices[high], group[high].price_usd
    if prices[low] < candle.low:
        candle.low, candle.low_text = prices[low], group[low].price_usd
    candle.ticks += len(group)
    # sum() adds left to right from its start: the same additions as add() one by one.
    candle.vwap_sum = sum(map(Decimal, vwaps), candle.vwap_sum)
    candle.vwap_n += len(vwaps)


def _read_ticks(
    path: Path, skipped: Skipped = _ignore, size: int | None = None
) -> Iterator[tuple[float, str, str, str, str | None]]:
    def skip(reason: str) -> None:
        skipped(reason, path.name)

    for row in read_rows(path, skip, size):
        try:
            finite = Decimal(row[4]).is_finite() and (not row[7] or Decimal(row[7]).is_finite())
            ts = float(row[0])
        except (ValueError, InvalidOperation):
            finite = False
        if not finite or not math.isfinite(ts):
            skip("not_a_number")
            continue
        yield ts, row[1], row[2], row[4], row[7] or None


def _read_lines(path: Path) -> list[str]:
    """The rows of a candle file (derived: rewritten whole), those that have a start."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()[1:]
    except FileNotFoundError:
        return []
    return [line for line in lines if line.endswith("\n") and _start_or_none(line) is not None]


def _start_or_none(line: str) -> int | None:
    try:
        return _start(line)
    except ValueError:
        return None
