"""``cryptostream backfill``: CoinCap's price history into CSV files for analysis.

Writes ``history/backfill/<interval>/YYYY-MM-DD.csv`` (UTC days) with the same
eight columns as ``crypto_data.csv``. The history endpoint only has a price per
step, so ``changePercent24Hr`` and ``vwap24Hr`` stay empty; ``firstValue`` is
the first price of that asset in that day's file. Symbol and name come from
``/assets/{id}``.

The files are kept apart from the live sink's ``history/ticks`` (which only the
sink writes, under its exactly-once state); Power BI's folder connector on
``history/`` combines both.

* Windows: the range is cut at UTC midnights into windows the API accepts
  (:data:`INTERVALS`), one request per asset and window.
* Idempotent: rows are keyed by (asset, timestamp); each day file is rewritten
  atomically as the sorted union of what it had and what came, so running the
  same range twice changes nothing.
* Resumable: finished windows are recorded in
  ``.cryptostream/backfill-<interval>.json``; after Ctrl-C or a crash a re-run
  skips them (and re-fetching one would add nothing anyway).
* Rate limits: the CoinCap client's declared retry policy (``Retry-After`` on
  429, backoff on 5xx); ``--max-requests`` caps the requests one run may make.
* Credits: :meth:`Backfill.estimate` says what the windows still to fetch will cost
  before anything is spent; the command refuses (exit 2, with the numbers) when that
  is more than what is left of ``coincap.monthly_credits`` this billing period, unless
  ``--allow-over-budget``. What it spends goes into the same ledger as the service's,
  written after every answer (a ``kill -9`` loses at most one request's credits).
  When CoinCap says the allowance is spent, the run stops (the rest stays undone).
  After that answer a backfill starts only once the hourly probe is due (else exit 2,
  saying when it is), and its first request is that probe: the same single request an
  hour the service sends.
* An asset CoinCap does not know is an error naming it, before any history request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from cryptostream.config import Config
from cryptostream.credits import CreditBudget
from cryptostream.credits.budget import history_credits_estimate, poll_credits_estimate
from cryptostream.csvrow import HEADER, csv_line, read_rows
from cryptostream.datadir import Held, hold
from cryptostream.days import day_name
from cryptostream.files import atomic_write
from cryptostream.layout import backfill_dir, backfill_lock_file, backfill_progress_file
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.progress import Progress
from cryptostream.source.coincap import CoinCapClient
from cryptostream.source.http import AllowanceSpent, ApiError, UnknownAsset
from cryptostream.tick import InvalidTick, Tick, decimal_text

log = get_logger(__name__)

#: Interval -> (seconds per step, days per request). The days keep a request at
#: most ~2,000 points, within the API's limits.
INTERVALS = {
    "m1": (60, 1),
    "m5": (300, 5),
    "m15": (900, 7),
    "m30": (1800, 14),
    "h1": (3600, 30),
    "h2": (7200, 60),
    "h6": (21600, 180),
    "h12": (43200, 360),
    "d1": (86400, 3650),
}


#: An ``--end`` further ahead than this is refused as a mistake; a nearer one is cut at now.
MAX_END_AHEAD = dt.timedelta(days=366)


class BackfillError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """What the windows still to fetch will cost, against what is left this period."""

    windows: int
    requests: int
    credits: int
    #: ``coincap.monthly_credits`` (0 = no limit).
    budget: int
    #: None without a limit.
    left: int | None
    period_end: dt.datetime
    #: CoinCap said this period's allowance is spent and the hourly probe is not due.
    spent_by_coincap: bool
    #: When CoinCap is asked again (the hourly probe), while its "spent" answer holds.
    next_probe: dt.datetime | None = None

    @property
    def over(self) -> bool:
        return self.spent_by_coincap or (self.left is not None and self.credits > self.left)

    def refusal(self) -> str:
        """The one line that says why the backfill does not start, with the numbers."""
        reset = self.period_end.date().isoformat()
        if self.spent_by_coincap:
            probe = f" at {self.next_probe:%Y-%m-%dT%H:%M:%SZ}" if self.next_probe else ""
            return (
                f"CoinCap said this billing period's allowance is spent; the backfill needs "
                f"about {self.credits} credits: run it again after the next hourly probe is "
                f"due{probe} (its first request asks CoinCap whether it still is), or after "
                f"the reset on {reset}"
            )
        return (
            f"the backfill needs about {self.credits} CoinCap credits ({self.requests} "
            f"requests) but only {self.left} of {self.budget} are left this billing period "
            f"(resets {reset}): narrow the range, use a coarser --interval, wait for the "
            "reset, or pass --allow-over-budget"
        )


@dataclass(frozen=True, slots=True)
class Window:
    asset: str
    start_ms: int
    end_ms: int

    @property
    def key(self) -> str:
        return f"{self.asset}:{self.start_ms}:{self.end_ms}"


@dataclass(slots=True)
class BackfillResult:
    windows: int = 0
    skipped_done: int = 0
    requests: int = 0
    rows_added: int = 0
    rows_invalid: int = 0
    incomplete: list[str] = field(default_factory=list)
    credits: int = 0
    #: Why the run stopped before the end (CoinCap's allowance or the budget is spent).
    stopped: str | None = None


def plan(
    assets: Iterable[str], start: dt.datetime, end: dt.datetime, interval: str
) -> list[Window]:
    """Windows cut at UTC midnights, each within the API's limit for ``interval``."""
    if interval not in INTERVALS:
        raise BackfillError(f"unknown interval {interval!r}: one of {', '.join(INTERVALS)}")
    if end <= start:
        raise BackfillError("--end must be after --start")
    step = dt.timedelta(days=INTERVALS[interval][1])
    windows = []
    for asset in assets:
        cursor = start
        while cursor < end:
            midnight = dt.datetime(cursor.year, cursor.month, cursor.day, tzinfo=dt.UTC)
            # Compared as a span, so a window near the calendar's end never overflows.
            stop = end if end - midnight <= step else midnight + step
            windows.append(Window(asset, _ms(cursor), _ms(stop)))
            cursor = stop
    return windows


def history_range(
    start: dt.datetime, end: dt.datetime | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime, str | None]:
    """The range to fetch: ``end`` (default ``now``) cut at ``now``, since no history
    exists after it and a window reaching past it would be marked done with rows still
    to come. Returns the range and, when ``end`` was cut, the line that says so.

    An ``end`` more than :data:`MAX_END_AHEAD` ahead is taken for a mistake (a typo in
    the year) and is a :class:`BackfillError`, as is a ``start`` that is not in the past.
    """
    if start >= now:
        raise BackfillError(
            f"--start {_day(start)} is not in the past: there is no history after now"
        )
    if end is None or end <= now:
        return start, end or now, None
    if end - now > MAX_END_AHEAD:
        raise BackfillError(
            f"--end {_day(end)} is more than {MAX_END_AHEAD.days} days ahead: history ends "
            "now; leave --end out to fetch up to now"
        )
    return start, now, f"--end {_day(end)} is in the future: cut at now ({_day(now)})"


def _day(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def _rows(window: Window, interval: str) -> int:
    step = INTERVALS[interval][0] * 1000
    return max(1, math.ceil((window.end_ms - window.start_ms) / step))


class Backfill:
    def __init__(
        self,
        config: Config,
        interval: str,
        *,
        max_requests: int | None = None,
        allow_over_budget: bool = False,
    ) -> None:
        self._config = config
        self._interval = interval
        self._max_requests = max_requests
        data_dir = config.storage.data_dir
        self._dir = data_dir / backfill_dir(interval)
        self._progress_file = data_dir / backfill_progress_file(interval)
        self._lock_file = data_dir / backfill_lock_file(interval)
        self._lock_fd: int | None = None
        self._names: dict[str, tuple[str, str]] = {}
        # Every answer's credits are in the file before the next request (and every
        # request's check reads the file, so the service's spend is seen at once): a
        # killed backfill loses at most the one answer it had not written yet.
        self.budget = CreditBudget(config, enforce=not allow_over_budget, flush_every=0.0)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This interval's backfill folder and progress for this process alone, for the
        ``with`` block (held already: nothing more). Another backfill of the interval on
        the data directory is a :class:`BackfillError`: two would rewrite each other's
        day files and progress record."""
        if self._lock_fd is not None:
            yield
            return
        try:
            self._lock_fd = hold(self._lock_file)
        except Held as exc:
            raise BackfillError(
                f"another backfill of {self._interval} is running on this data directory"
                f"{exc.who}: run this one when it has finished"
            ) from None
        except OSError as exc:
            raise BackfillError(f"cannot lock {self._lock_file}: {exc.strerror or exc}") from None
        try:
            yield
        finally:
            os.close(self._lock_fd)  # closing the only descriptor drops the flock
            self._lock_fd = None

    def estimate(self, windows: list[Window]) -> CostEstimate:
        """The credits the windows not yet done will cost (nothing is fetched)."""
        done = self._load_done()
        todo = [w for w in windows if w.key not in done]
        assets = {w.asset for w in todo}
        credits = sum(history_credits_estimate(_rows(w, self._interval)) for w in todo)
        credits += len(assets) * poll_credits_estimate(1)  # one /assets/{id} each
        plan = self.budget.plan()
        # After CoinCap's "spent" answer, the hourly probe: once due, the run's first
        # request is that probe (the same single request the service would send).
        probe = self.budget.next_probe()
        return CostEstimate(
            windows=len(todo),
            requests=len(todo) + len(assets),
            credits=credits,
            budget=plan.budget,
            left=plan.left,
            period_end=plan.period_end,
            spent_by_coincap=probe is not None and probe > self.budget.clock(),
            next_probe=dt.datetime.fromtimestamp(probe, tz=dt.UTC) if probe else None,
        )

    def _load_done(self) -> set[str]:
        try:
            return set(orjson.loads(self._progress_file.read_bytes())["done"])
        except FileNotFoundError:
            return set()
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("backfill_progress_unreadable", error=str(exc))
            return set()

    async def run(self, windows: list[Window], *, progress: bool | None = None) -> BackfillResult:
        """Fetch the windows not done yet (holding :meth:`locked` while it does)."""
        with self.locked():
            return await self._run(windows, progress)

    async def _run(self, windows: list[Window], progress: bool | None) -> BackfillResult:
        result = BackfillResult(windows=len(windows))
        done = self._load_done()
        todo = [w for w in windows if w.key not in done]
        result.skipped_done = len(windows) - len(todo)
        log.info(
            "backfill_planned",
            interval=self._interval,
            windows=len(windows),
            already_done=result.skipped_done,
            requests_needed=len(todo) + len({w.asset for w in todo}),
        )
        spent_before = self.budget.ledger.current().credits
        try:
            async with aiohttp.ClientSession() as session:
                client = CoinCapClient(
                    self._config.coincap, session, Metrics(), budget=self.budget, kind="backfill"
                )
                # Every asset first: an unknown one is said before any history is fetched.
                await self._names_of(client, sorted({w.asset for w in todo}), result)
                # The bar shows once the job can start, so no 0 % bar stands over an error.
                with Progress(
                    len(todo),
                    desc="backfill",
                    unit="window",
                    event="backfill_progress",
                    count_key="windows_done",
                    show=progress,
                ) as bar:
                    await self._windows(client, todo, done, result, bar)
        finally:
            self.budget.close()
            result.credits = self.budget.ledger.current().credits - spent_before
        log.info(
            "backfill_finished",
            rows_added=result.rows_added,
            rows_invalid=result.rows_invalid or None,
            requests=result.requests,
            credits=result.credits,
            incomplete=len(result.incomplete) or None,
            stopped=result.stopped,
        )
        return result

    async def _names_of(
        self, client: CoinCapClient, assets: list[str], result: BackfillResult
    ) -> None:
        """Symbol and name of each asset; raises BackfillError naming every unknown one."""
        unknown = []
        for asset in assets:
            try:
                await self._fetch_name(client, asset)
            except UnknownAsset:
                unknown.append(asset)
                continue
            except ApiError:
                continue  # said by the window that needs it (and retried there)
            result.requests += 1
        if unknown:
            names = ", ".join(repr(a) for a in unknown)
            raise BackfillError(
                f"unknown asset {names}: CoinCap does not know "
                f"{'it' if len(unknown) == 1 else 'them'} (ids look like bitcoin, binance-coin)"
            )

    async def _fetch_name(self, client: CoinCapClient, asset: str) -> None:
        body = await client.retrying(functools.partial(client.get_asset, asset))
        data = orjson.loads(body).get("data") or {}
        self._names[asset] = (str(data.get("symbol") or ""), str(data.get("name") or ""))

    async def _windows(
        self,
        client: CoinCapClient,
        todo: list[Window],
        done: set[str],
        result: BackfillResult,
        bar: Progress,
    ) -> None:
        for window in todo:
            if result.stopped or (
                self._max_requests is not None and result.requests >= self._max_requests
            ):
                result.incomplete.append(window.key)
                continue
            try:
                added, invalid, calls = await self._window(client, window)
            except AllowanceSpent as exc:
                # Every further request would be refused too: stop, keep what is done.
                log.error("backfill_stopped", window=window.key, reason=str(exc))
                result.stopped = str(exc)
                result.incomplete.append(window.key)
                continue
            except ApiError as exc:
                # This window stays undone; a re-run picks it up.
                log.error("backfill_window_failed", window=window.key, error=str(exc))
                result.incomplete.append(window.key)
                continue
            result.requests += calls
            result.rows_added += added
            result.rows_invalid += invalid
            done.add(window.key)
            self._progress_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._progress_file, orjson.dumps({"done": sorted(done)}))
            bar.update()

    async def _window(self, client: CoinCapClient, window: Window) -> tuple[int, int, int]:
        calls = 0
        if window.asset not in self._names:
            await self._fetch_name(client, window.asset)
            calls += 1
        symbol, name = self._names[window.asset]
        # Budgeted by its expected size, not one credit: a day of m1 is about 58.
        cost = history_credits_estimate(_rows(window, self._interval))
        response = await client.retrying(
            lambda: client.get_history(
                window.asset, self._interval, window.start_ms, window.end_ms, cost=cost
            )
        )
        calls += 1
        ticks: list[Tick] = []
        invalid = 0
        for row in response.records:
            try:
                ticks.append(_history_tick(row, window.asset, symbol, name))
            except InvalidTick as exc:
                invalid += 1
                log.warning("backfill_row_invalid", asset=window.asset, reason=exc.reason)
        ticks = [t for t in ticks if window.start_ms <= t.timestamp * 1000 < window.end_ms]
        return self._merge(ticks), invalid, calls

    def _merge(self, ticks: list[Tick]) -> int:
        """Add ``ticks`` to their day files; returns how many rows were new."""
        by_day: dict[str, list[Tick]] = {}
        for t in ticks:
            by_day.setdefault(day_name(t.timestamp), []).append(t)
        added = 0
        self._dir.mkdir(parents=True, exist_ok=True)
        for day, new in by_day.items():
            path = self._dir / f"{day}.csv"
            rows = {(t.id, t.timestamp): t for t in _read(path)}
            before = len(rows)
            for t in new:
                rows.setdefault((t.id, t.timestamp), t)
            if len(rows) == before:
                continue
            added += len(rows) - before
            ordered = sorted(rows.values(), key=lambda t: (t.timestamp, t.id))
            first: dict[str, str] = {}
            lines = [
                csv_line(t.with_first_value(first.setdefault(t.id, t.price_usd))) for t in ordered
            ]
            atomic_write(path, (HEADER + "".join(lines)).encode())
        return added


def _history_tick(row: object, asset: str, symbol: str, name: str) -> Tick:
    if not isinstance(row, dict):
        raise InvalidTick("not_an_object")
    try:
        ts = int(row["time"]) / 1000
    except (KeyError, TypeError, ValueError):
        raise InvalidTick("invalid_time") from None
    price = decimal_text(row.get("priceUsd"), field="price", required=True, allow_negative=False)
    assert price is not None
    return Tick(ts, asset, symbol, name, price, None, None, None, "coincap-history")


def _read(path: Path) -> list[Tick]:
    return [
        Tick(float(r[0]), r[1], r[2], r[3], r[4], r[5] or None, r[6] or None, r[7] or None)
        for r in read_rows(path)
    ]


def parse_when(text: str) -> dt.datetime:
    """``2025-03-01`` or ``2025-03-01T12:00[:00][Z|+00:00]``; naive means UTC."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except ValueError:
        raise BackfillError(f"not a date or date-time: {text!r} (e.g. 2025-03-01)") from None
    except OverflowError:  # e.g. 9999-12-31T23:00-05:00 is past the calendar's end in UTC
        raise BackfillError(f"not a date the calendar can hold in UTC: {text!r}") from None
