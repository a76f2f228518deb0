"""The CoinCap credit ledger: what this data directory spent, and when.

One JSON file, ``<data_dir>/.cryptostream/coincap-credits.json``, holds a record per
UTC **day** on which credits were spent (the last :data:`KEEP_DAYS` of them). A
billing period starts at 00:00 UTC, so whatever ``coincap.billing_day`` says, the
period it defines is a run of whole days: its count is the sum of their records.
Changing the billing day therefore recounts, never resets, and two processes with
different billing days (compose's ``.env`` and a backfill on the host) each count
the other's spend in their own periods. CoinCap's "spent" answer and the hourly
probe are kept the same way, in the record of the day they happened: they hold for
the billing period that holds that day.

Every process that spends credits — ``run`` and ``backfill``, possibly at the same
time — keeps what it spent since its last flush as a *delta* in memory and adds it to
the file by read-modify-write under a short exclusive ``fcntl.flock`` on a lock file
beside it, replacing the file atomically. So no process overwrites another's spend, a
reader never sees half a file, and a crash loses at most the delta not yet flushed (a
flush happens at least every :data:`FLUSH_EVERY` seconds while credits are spent —
after every charge for a ledger with ``flush_every=0``, as backfill's — and at
shutdown) — it never resets the count.

A file that cannot be read when a process first reads it (an I/O error, no permission,
truncated or hand-edited JSON) is :class:`LedgerUnreadable`: ``run`` and ``backfill``
stop (a budget kept against a count of nothing would overspend) and ``credits`` says
so, all without touching the file. A file that turns unreadable while a process runs
is set aside by its next write (``<name>.unreadable-<UTC time>[-n]``, never the name of
another one) and written afresh from what the process knows.

The ``run`` service calls :meth:`Ledger.start`: from then on its file I/O runs on a
worker thread, never on the event loop, so a ``backfill`` suspended while it holds
the lock (Ctrl-Z) or a slow fsync stalls nothing but that flush. A flush hands a
snapshot of the delta to the thread, one flush at a time, while the delta since
keeps growing in memory; a failed write puts the snapshot back into the delta, so
no credit is lost or counted twice. Reads answer from memory: the file as the last
flush read it, plus the snapshot in flight, plus the delta.

A billing period starts at 00:00 UTC on ``coincap.billing_day`` of a month (in a
month without that day, on its last day) and ends where the next one starts.
"""

from __future__ import annotations

import asyncio
import calendar
import concurrent.futures
import contextlib
import datetime as dt
import fcntl
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import orjson

from cryptostream.files import atomic_write, fsync_dir
from cryptostream.layout import CREDITS_FILE, CREDITS_LOCK_FILE
from cryptostream.logs import get_logger

log = get_logger(__name__)

LEDGER_FILE = CREDITS_FILE
#: Seconds between flushes of the in-memory delta while credits are spent (and between
#: re-reads that pick up another process's spend).
FLUSH_EVERY = 60.0
#: Days kept in the file: 13 billing periods of any billing day (a year and the
#: current one).
KEEP_DAYS = 13 * 31 + 1
#: The file's format: spend per UTC day (1 held a record per billing period).
VERSION = 2
#: CoinCap's documented rule: 1 credit per call, plus 1 per further 2,500 bytes.
BYTES_PER_CREDIT = 2500

Clock = Callable[[], float]
_T = TypeVar("_T")


def credits_for(nbytes: int) -> int:
    """Credits of one answer of ``nbytes`` bytes: the first 2,500 bytes come with the
    call's credit, each further 2,500 (or part of them) costs one more."""
    return max(1, math.ceil(nbytes / BYTES_PER_CREDIT))


def billed(status: int) -> bool:
    """Whether an answer with this status is counted. CoinCap does not say; we count
    every answer it gave except a refusal (401/402/403/429) and its own failure (5xx)."""
    return status < 500 and status not in (401, 402, 403, 429)


def _period_start(month: int, day: int) -> dt.datetime:
    """The period start in ``month``, counted as ``year * 12 + month - 1``."""
    year, month = divmod(month, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return dt.datetime(year, month + 1, min(day, last), tzinfo=dt.UTC)


def period_bounds(now: float, billing_day: int) -> tuple[dt.datetime, dt.datetime]:
    """The billing period holding ``now`` (Unix seconds): [start, end), both UTC."""
    when = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    month = when.year * 12 + when.month - 1
    if when < _period_start(month, billing_day):
        month -= 1
    return _period_start(month, billing_day), _period_start(month + 1, billing_day)


def iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def day_key(now: float) -> str:
    """The UTC day holding ``now``: the key of its record in the file."""
    return dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%d")


def _day(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d")


class LedgerUnreadable(OSError):
    """The ledger file cannot be read when a process starts; the message names the
    file, why, and what to do."""

    def __init__(self, path: Path, why: str, todo: str) -> None:
        super().__init__(f"cannot read the CoinCap credit ledger {path}: {why}; {todo}")
        self.path = path
        self.why = why
        self.todo = todo


@dataclass(slots=True)
class PeriodRecord:
    """What was spent in one billing period (as stored, or as a delta to add)."""

    credits: int = 0
    calls: int = 0
    bytes: int = 0
    stream_seconds: float = 0.0
    by_kind: Counter[str] = field(default_factory=Counter)
    #: When CoinCap last said the allowance is spent (Unix seconds), and when it was
    #: last asked again since: both survive restarts so that no restart hammers it.
    spent_at: float | None = None
    probed_at: float | None = None
    #: Credits the newest poll cost, for the plan of the next start.
    poll_credits: int | None = None

    def add(self, other: PeriodRecord) -> None:
        self.credits += other.credits
        self.calls += other.calls
        self.bytes += other.bytes
        self.stream_seconds += other.stream_seconds
        self.by_kind.update(other.by_kind)
        self.spent_at = _newest(self.spent_at, other.spent_at)
        self.probed_at = _newest(self.probed_at, other.probed_at)
        if other.poll_credits is not None:
            self.poll_credits = other.poll_credits

    def empty(self) -> bool:
        return self == PeriodRecord()

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["stream_seconds"] = round(self.stream_seconds, 3)
        out["by_kind"] = dict(sorted(self.by_kind.items()))
        return out

    def to_file(self) -> dict[str, Any]:
        """As a day's record in the file: what is not zero or unset."""
        return {k: v for k, v in self.to_json().items() if v not in (None, 0, 0.0, {})}

    @classmethod
    def from_json(cls, data: Any) -> PeriodRecord:
        if not isinstance(data, dict):
            raise TypeError("a period is not an object")
        by_kind = data.get("by_kind") or {}
        return cls(
            credits=int(data.get("credits", 0)),
            calls=int(data.get("calls", 0)),
            bytes=int(data.get("bytes", 0)),
            stream_seconds=float(data.get("stream_seconds", 0.0)),
            by_kind=Counter({str(k): int(v) for k, v in by_kind.items()}),
            spent_at=_opt_float(data.get("spent_at")),
            probed_at=_opt_float(data.get("probed_at")),
            poll_credits=_opt_int(data.get("poll_credits")),
        )


def _newest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


#: UTC day (``YYYY-MM-DD``) -> what was spent on it.
Records = dict[str, PeriodRecord]


def summed(records: Records, start: str, end: str) -> PeriodRecord:
    """The days ``start <= day < end`` added up (in order: the newest poll's credits win)."""
    total = PeriodRecord()
    for day in sorted(d for d in records if start <= d < end):
        total.add(records[day])
    return total


def by_period(records: Records, billing_day: int) -> dict[str, PeriodRecord]:
    """The days added up per billing period of ``billing_day`` (keyed by its start)."""
    out: dict[str, PeriodRecord] = {}
    for day in sorted(records):
        when = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
        key = iso(period_bounds(when.timestamp(), billing_day)[0])
        out.setdefault(key, PeriodRecord()).add(records[day])
    return out


def _from_periods(doc: dict[str, Any], now: float) -> Records:
    """A version 1 file (a record per billing period): each period's spend on its last
    day that has begun, so the billing period holding today counts today's period."""
    day = int(doc.get("billing_day", 1))
    today = day_key(now)
    out: Records = {}
    for key, value in doc["periods"].items():
        start = dt.datetime.fromisoformat(str(key).replace("Z", "+00:00"))
        _, end = period_bounds(start.timestamp(), day)
        last = min(today, _day(end - dt.timedelta(days=1)))
        out.setdefault(last, PeriodRecord()).add(PeriodRecord.from_json(value))
    return out


def parse(raw: bytes, now: float) -> Records:
    """The records of a ledger file's bytes (either version); raises ValueError,
    TypeError, KeyError or AttributeError for a file that is not one."""
    doc = orjson.loads(raw)
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    if "days" not in doc:
        return _from_periods(doc, now)
    return {str(k): PeriodRecord.from_json(v) for k, v in doc["days"].items()}


def _copy(records: Records) -> Records:
    out: Records = {}
    for key, rec in records.items():
        out[key] = PeriodRecord()
        out[key].add(rec)
    return out


def _unmark(records: Records) -> None:
    for rec in records.values():
        rec.spent_at = rec.probed_at = None


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` on a thread of its own. A daemon thread, not an executor's: one
    stuck on a lock held by a stopped process must not keep this one from exiting."""
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled before it began: nothing to do, nobody to tell
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - raised in the task that awaits it
            future.set_exception(exc)

    threading.Thread(target=work, name="credit-ledger", daemon=True).start()
    return await asyncio.wrap_future(future)


class Ledger:
    """This process's view of the ledger file: what is on disk plus what it spent since.

    ``clock`` (Unix seconds) decides the day a charge goes to, the billing period and
    when to flush, so tests can run a month in a moment.
    """

    def __init__(
        self,
        data_dir: Path,
        billing_day: int = 1,
        *,
        clock: Clock | None = None,
        fsync: bool = True,
        flush_every: float | None = None,
    ) -> None:
        self.path = data_dir / LEDGER_FILE
        #: Seconds between flushes (None: :data:`FLUSH_EVERY`); 0 flushes every charge.
        self.flush_every = flush_every
        self._lock_path = data_dir / CREDITS_LOCK_FILE
        self.billing_day = billing_day
        #: ``time.time`` when not given (looked up now, not when this module loaded).
        self.clock: Clock = clock or time.time
        self._fsync = fsync
        #: day -> record, as last read from the file.
        self._disk: Records = {}
        #: day -> what this process spent and has not written yet.
        self._pending: Records = {}
        #: The snapshot of ``_pending`` a flush on the worker thread is writing.
        self._inflight: Records = {}
        #: CoinCap answers again: the next flush clears the "spent" marks in the file.
        self._clear = False
        self._synced_at: float | None = None
        #: The file was read once (or is not there yet): from then on a file that turns
        #: unreadable is counted on from what this process knows.
        self._loaded = False
        #: A file turned unreadable: said once, until it is readable (or set aside).
        self._said_unreadable = False
        #: The current period's sum of ``_disk``, by (period start, version of _disk).
        self._disk_sum: tuple[str, int, PeriodRecord] | None = None
        self._disk_version = 0
        #: Set by :meth:`start`: the file I/O runs off this loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._again = False

    # -- periods -------------------------------------------------------------------------

    def bounds(self, now: float | None = None) -> tuple[dt.datetime, dt.datetime]:
        return period_bounds(self.clock() if now is None else now, self.billing_day)

    def key(self, now: float | None = None) -> str:
        """The current billing period's key (its start), as in :meth:`periods`."""
        return iso(self.bounds(now)[0])

    # -- reading -------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file now (no lock, no write). Raises :class:`LedgerUnreadable` when
        it cannot be read: a budget must not be kept against a count of nothing."""
        self._set_disk(self._read(_copy(self._disk)))
        self._synced_at = self.clock()

    def current(self) -> PeriodRecord:
        """The current period: what the file said at the last sync plus our delta."""
        self.maybe_sync()
        start, end = self.bounds()
        first, stop = _day(start), _day(end)
        cached = self._disk_sum
        if cached is None or cached[:2] != (first, self._disk_version):
            cached = self._disk_sum = (first, self._disk_version, summed(self._disk, first, stop))
        total = PeriodRecord()
        total.add(cached[2])
        for source in (self._inflight, self._pending):
            total.add(summed(source, first, stop))
        return total

    def used(self) -> int:
        return self.current().credits

    def periods(self) -> dict[str, PeriodRecord]:
        """Every billing period (of this ledger's billing day) with spend in the file
        (freshly read), with our unwritten delta added."""
        self.sync()
        days: Records = {}
        for source in (self._disk, self._inflight, self._pending):
            for key, rec in source.items():
                days.setdefault(key, PeriodRecord()).add(rec)
        return by_period(days, self.billing_day)

    def _set_disk(self, data: Records) -> None:
        self._disk = data
        self._disk_version += 1

    # -- spending ------------------------------------------------------------------------

    def _delta(self) -> PeriodRecord:
        return self._pending.setdefault(day_key(self.clock()), PeriodRecord())

    def charge(self, kind: str, credits: int, *, nbytes: int = 0) -> None:
        delta = self._delta()
        delta.credits += credits
        delta.calls += 1
        delta.bytes += nbytes
        delta.by_kind[kind] += credits
        if kind == "poll":
            delta.poll_credits = credits
        self.maybe_sync()

    def charge_stream(self, seconds: float, credits: int) -> None:
        delta = self._delta()
        delta.stream_seconds += seconds
        delta.credits += credits
        delta.by_kind["stream"] += credits
        self.maybe_sync()

    def mark_spent(self, *, probe: bool = False) -> None:
        """CoinCap said the allowance is spent (``probe``: we are asking it again now)."""
        now = self.clock()
        delta = self._delta()
        if probe:
            delta.probed_at = now
        else:
            delta.spent_at = now
        # Written at once: a restart must know it, not ask CoinCap again.
        self.sync()

    def clear_spent(self) -> None:
        """CoinCap answers again (a bigger plan, a reset on its side): forget the mark.

        At once in memory (a full or read-only disk must not throw away the answer that
        cleared it), in the file with the next flush, before that flush's delta."""
        for source in (self._disk, self._inflight, self._pending):
            _unmark(source)
        self._disk_version += 1
        self._clear = True
        self.sync()

    # -- the file ------------------------------------------------------------------------

    def maybe_sync(self) -> None:
        """Flush (and re-read) when the last sync is older than ``flush_every``."""
        now = self.clock()
        every = FLUSH_EVERY if self.flush_every is None else self.flush_every
        if self._synced_at is None or now - self._synced_at >= every or now < self._synced_at:
            self.sync()

    def sync(self) -> None:
        """Add our delta to the file (read-modify-write under the lock) and re-read it.

        After :meth:`start`, this only hands the work to the worker thread."""
        if self._loop is not None:
            self._flush_soon()
            return
        self._synced_at = self.clock()
        delta, clear = self._take()
        if not delta and not clear:
            # Reading needs no lock (the file is replaced whole), nor a writable folder.
            self._set_disk(self._read(_copy(self._disk)))
            return
        try:
            self._set_disk(self._commit(delta, clear, _copy(self._disk)))
        except BaseException as exc:
            # The delta left memory with _take(): whatever stopped the write (a full
            # disk, a Ctrl-C while the lock is awaited), it goes with the next flush.
            self._failed(exc, delta, clear)
            if not isinstance(exc, OSError):
                raise

    flush = sync

    # -- off the event loop ----------------------------------------------------------------

    async def start(self) -> None:
        """From now on the file is read and written on a worker thread, never on the
        running event loop. The first read happens now, and a file that cannot be read
        (an I/O error, no permission, not a ledger) raises :class:`LedgerUnreadable`:
        a budget must not be kept against a count of nothing."""
        self._set_disk(await _in_thread(self._read, _copy(self._disk)))
        self._synced_at = self.clock()
        self._loop = asyncio.get_running_loop()
        if self._pending or self._clear:
            self._flush_soon()
            await self._settled()

    async def stop(self, deadline: float) -> None:
        """Wait for a flush in progress, then write the rest, by ``deadline`` (the loop's
        time); the file I/O is direct again afterwards. What is not written by then (the
        lock held by another process all along, a hung disk) is lost as at a crash: the
        count is never reset."""
        if self._loop is None:
            self.sync()
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._settled()
                self._flush_soon()
                await self._settled()
        except TimeoutError:
            unwritten = (*self._inflight.values(), *self._pending.values())
            log.error(
                "credit_ledger_unwritable",
                path=str(self.path),
                error="not written by the shutdown deadline (its lock held, or a hung disk)",
                credits=sum(rec.credits for rec in unwritten),
            )
            if self._flushing is not None:
                self._flushing.cancel()
        self._loop = None
        self._flushing = None

    async def _settled(self) -> None:
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    def _flush_soon(self) -> None:
        """Hand a snapshot of the delta to the worker thread (or, while one is being
        written, flush again as soon as it is)."""
        if self._flushing is not None:
            self._again = True
            return
        assert self._loop is not None
        self._again = False
        self._synced_at = self.clock()
        self._inflight, clear = self._take()
        self._flushing = self._loop.create_task(self._flush(clear))

    async def _flush(self, clear: bool) -> None:
        try:
            data = await _in_thread(self._commit, _copy(self._inflight), clear, _copy(self._disk))
        except Exception as exc:  # noqa: BLE001 - the snapshot's credits must not be lost
            self._failed(exc, self._inflight, clear)
        else:
            if self._clear:  # cleared since the snapshot: not in the file yet
                _unmark(data)
            self._set_disk(data)
        finally:
            self._inflight = {}
            self._flushing = None
        if self._again and self._loop is not None:
            self._flush_soon()

    # -- the file itself ---------------------------------------------------------------------

    def _take(self) -> tuple[Records, bool]:
        """The delta and whether to clear the marks, for a flush: both leave this process."""
        delta = {k: v for k, v in self._pending.items() if not v.empty()}
        clear, self._pending, self._clear = self._clear, {}, False
        return delta, clear

    def _failed(self, exc: BaseException, delta: Records, clear: bool) -> None:
        """A flush failed: its delta goes with the next one, before what came since."""
        log.error("credit_ledger_unwritable", path=str(self.path), error=str(exc))
        for key, rec in delta.items():
            since = self._pending.get(key)
            if since is not None:
                rec.add(since)
            self._pending[key] = rec
        self._clear = self._clear or clear

    def _commit(self, delta: Records, clear: bool, known: Records) -> Records:
        """Add ``delta`` to the file under the lock (clearing the "spent" marks first if
        ``clear``); returns the file's records as written. ``known`` stands in for a
        file that turned unreadable (set aside first)."""
        if not delta and not clear:
            return self._read(known)
        with self._locked():
            data = self._read(known, set_aside=True)
            changed = bool(delta) or (
                clear and any(r.spent_at or r.probed_at for r in data.values())
            )
            if clear:
                _unmark(data)
            for key, add in delta.items():
                data.setdefault(key, PeriodRecord()).add(add)
            if changed:
                self._write(data)
            return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Held for one read and one atomic write: milliseconds.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self, known: Records, *, set_aside: bool = False) -> Records:
        """The file's records. Before the first good read, a file that cannot be read
        raises :class:`LedgerUnreadable`; after it, one that is not a ledger any more
        stands for ``known`` (and is set aside by a writer, ``set_aside``, holding the
        lock); an I/O error raises :class:`OSError`."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._loaded = True
            return {}
        except OSError as exc:
            if self._loaded:
                raise
            raise LedgerUnreadable(
                self.path,
                exc.strerror or str(exc),
                "check the file, its permissions and its disk, then start again",
            ) from exc
        try:
            data = parse(raw, self.clock())
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            why = "empty (truncated)" if not raw.strip() else f"not a credit ledger ({exc})"
            if not self._loaded:
                raise LedgerUnreadable(
                    self.path,
                    why,
                    "restore it from a backup, or move it away to count from zero "
                    "(compare with the usage on CoinCap's dashboard first)",
                ) from None
            return self._unreadable_now(why, known, set_aside)
        self._loaded = True
        self._said_unreadable = False
        return data

    def _unreadable_now(self, why: str, known: Records, set_aside: bool) -> Records:
        """The file turned unreadable while this process runs: count on from what it
        knows; a writer keeps the file for a person to look at under a name of its own."""
        aside: Path | None = None
        if set_aside:
            aside = self._aside_name()
            try:
                self.path.replace(aside)
            except OSError:
                aside = None
        if aside is not None or not self._said_unreadable:
            log.error(
                "credit_ledger_unreadable",
                path=str(self.path),
                moved_to=str(aside) if aside else None,
                error=why,
                note="counting on from what this process knows",
            )
        self._said_unreadable = aside is None
        return known

    def _aside_name(self) -> Path:
        """``<name>.unreadable-<UTC time>``, or with ``-2``, ``-3``... when one of that
        second is there already (writers hold the lock: no two pick the same name)."""
        stamp = dt.datetime.fromtimestamp(self.clock(), tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        base = f"{self.path.name}.unreadable-{stamp}"
        aside = self.path.with_name(base)
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{base}-{n}")
        return aside

    def _write(self, data: Records) -> None:
        oldest = day_key(self.clock() - KEEP_DAYS * 86400.0)
        doc = {
            "version": VERSION,
            "rule": "1 credit per call plus 1 per further 2500 bytes; the stream 1 per minute",
            "days": {k: data[k].to_file() for k in sorted(data) if k >= oldest},
        }
        payload = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
        atomic_write(self.path, payload, fsync=self._fsync, sync_dir=False)
        if not self._fsync:
            return
        try:
            fsync_dir(self.path.parent)
        except OSError as exc:
            # After the rename the file holds the credits: an error here must not put
            # the delta back, or the next flush would count it twice.
            log.error(
                "credit_ledger_dir_fsync_failed",
                path=str(self.path),
                error=exc.strerror or str(exc),
                note="credits written; their durability across a power cut is not confirmed",
            )
