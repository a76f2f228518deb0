"""The CoinCap credit ledger: what this data directory spent, per billing period.

One JSON file, ``<data_dir>/.cryptostream/coincap-credits.json``, holds a record per
billing period (the last :data:`KEEP_PERIODS` of them). Every process that spends
credits — ``run`` and ``backfill``, possibly at the same time — keeps what it spent
since its last flush as a *delta* in memory and adds it to the file by
read-modify-write under a short exclusive ``fcntl.flock`` on a lock file beside it,
replacing the file atomically. So no process overwrites another's spend, a reader
never sees half a file, and a crash loses at most the delta not yet flushed (a flush
happens at least every :data:`FLUSH_EVERY` seconds while credits are spent — after
every charge for a ledger with ``flush_every=0``, as backfill's — and at shutdown) — it
never resets the count.

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
#: Billing periods kept in the file (a year and the current one).
KEEP_PERIODS = 13
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


Records = dict[str, PeriodRecord]


def _copy(records: Records) -> Records:
    out: Records = {}
    for key, rec in records.items():
        out[key] = PeriodRecord()
        out[key].add(rec)
    return out


def _unmark(rec: PeriodRecord | None) -> None:
    if rec is not None:
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

    ``clock`` (Unix seconds) decides the billing period and when to flush, so tests can
    run a month in a moment.
    """

    def __init__(
        self,
        data_dir: Path,
        billing_day: int = 1,
        *,
        clock: Clock = time.time,
        fsync: bool = True,
        flush_every: float | None = None,
    ) -> None:
        self.path = data_dir / LEDGER_FILE
        #: Seconds between flushes (None: :data:`FLUSH_EVERY`); 0 flushes every charge.
        self.flush_every = flush_every
        self._lock_path = data_dir / CREDITS_LOCK_FILE
        self.billing_day = billing_day
        self.clock = clock
        self._fsync = fsync
        #: period key -> record, as last read from the file.
        self._disk: Records = {}
        #: period key -> what this process spent and has not written yet.
        self._pending: Records = {}
        #: The snapshot of ``_pending`` a flush on the worker thread is writing.
        self._inflight: Records = {}
        #: A period whose "spent" marks the next flush clears in the file.
        self._clear: str | None = None
        self._synced_at: float | None = None
        #: Set by :meth:`start`: the file I/O runs off this loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._again = False

    # -- periods -------------------------------------------------------------------------

    def bounds(self, now: float | None = None) -> tuple[dt.datetime, dt.datetime]:
        return period_bounds(self.clock() if now is None else now, self.billing_day)

    def key(self, now: float | None = None) -> str:
        return iso(self.bounds(now)[0])

    # -- reading -------------------------------------------------------------------------

    def current(self) -> PeriodRecord:
        """The current period: what the file said at the last sync plus our delta."""
        self.maybe_sync()
        key = self.key()
        total = PeriodRecord()
        for source in (self._disk, self._inflight, self._pending):
            if key in source:
                total.add(source[key])
        return total

    def used(self) -> int:
        return self.current().credits

    def periods(self) -> dict[str, PeriodRecord]:
        """Every period in the file (freshly read) with our unwritten delta added."""
        self.sync()
        out: dict[str, PeriodRecord] = {}
        for source in (self._disk, self._inflight, self._pending):
            for key, rec in source.items():
                out.setdefault(key, PeriodRecord()).add(rec)
        return dict(sorted(out.items()))

    # -- spending ------------------------------------------------------------------------

    def _delta(self) -> PeriodRecord:
        return self._pending.setdefault(self.key(), PeriodRecord())

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
        key = self.key()
        for source in (self._disk, self._inflight, self._pending):
            _unmark(source.get(key))
        self._clear = key
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
        if not delta and clear is None:
            # Reading needs no lock (the file is replaced whole), nor a writable folder.
            self._disk = self._read(_copy(self._disk))
            return
        try:
            self._disk = self._commit(delta, clear, _copy(self._disk))
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
        (an I/O error, no permission) raises :class:`OSError`: a budget must not be kept
        against a count of nothing."""
        self._disk = await _in_thread(self._read, _copy(self._disk))
        self._synced_at = self.clock()
        self._loop = asyncio.get_running_loop()
        if self._pending or self._clear is not None:
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

    async def _flush(self, clear: str | None) -> None:
        try:
            data = await _in_thread(self._commit, _copy(self._inflight), clear, _copy(self._disk))
        except Exception as exc:  # noqa: BLE001 - the snapshot's credits must not be lost
            self._failed(exc, self._inflight, clear)
        else:
            if self._clear is not None:  # cleared since the snapshot: not in the file yet
                _unmark(data.get(self._clear))
            self._disk = data
        finally:
            self._inflight = {}
            self._flushing = None
        if self._again and self._loop is not None:
            self._flush_soon()

    # -- the file itself ---------------------------------------------------------------------

    def _take(self) -> tuple[Records, str | None]:
        """The delta and the period to clear, for a flush: both leave this process."""
        delta = {k: v for k, v in self._pending.items() if not v.empty()}
        clear, self._pending, self._clear = self._clear, {}, None
        return delta, clear

    def _failed(self, exc: BaseException, delta: Records, clear: str | None) -> None:
        """A flush failed: its delta goes with the next one, before what came since."""
        log.error("credit_ledger_unwritable", path=str(self.path), error=str(exc))
        for key, rec in delta.items():
            since = self._pending.get(key)
            if since is not None:
                rec.add(since)
            self._pending[key] = rec
        self._clear = self._clear or clear

    def _commit(self, delta: Records, clear: str | None, known: Records) -> Records:
        """Add ``delta`` to the file under the lock (clearing ``clear``'s "spent" marks
        first); returns the file's records as written. ``known`` stands in for a file
        that cannot be read."""
        if not delta and clear is None:
            return self._read(known)
        with self._locked():
            data = self._read(known)
            rec = data.get(clear) if clear is not None else None
            changed = bool(delta) or (rec is not None and rec.spent_at is not None)
            _unmark(rec)
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

    def _read(self, known: Records) -> Records:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = orjson.loads(raw)
            return {str(k): PeriodRecord.from_json(v) for k, v in doc["periods"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            # Written atomically, so only a hand edit gets here: keep the file for a
            # person to look at, and count on from what this process knows.
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(self.clock())}")
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            log.error(
                "credit_ledger_unreadable",
                path=str(self.path),
                moved_to=str(aside),
                error=str(exc),
            )
            return known

    def _write(self, data: Records) -> None:
        keep = sorted(data)[-KEEP_PERIODS:]
        doc = {
            "version": 1,
            "billing_day": self.billing_day,
            "rule": "1 credit per call plus 1 per further 2500 bytes; the stream 1 per minute",
            "periods": {k: data[k].to_json() for k in keep},
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
