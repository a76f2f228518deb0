"""The dashboard's state: the price history, its loading, and the live feed.

Start-up without losing or doubling a tick: the sink calls :meth:`Dashboard.on_batch`
after every durable batch, in the event loop. :meth:`Dashboard.load` first
notes how long ``crypto_data.csv`` is and keeps the file open — in one loop
step, so no batch can land in between — and from then on buffers live
ticks. The worker thread reads the file only up to that length; the
buffered ticks follow it. Ticks written before that moment are in the part
of the file being read, so they are ignored as live ticks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import orjson

from cryptostream.config import Config
from cryptostream.dashboard.live import Broadcaster
from cryptostream.dashboard.store import (
    FULL_DETAIL_DAYS,
    HistorySnapshot,
    LoadCancelled,
    PriceStore,
    Series,
    SeriesView,
    day_of,
    downsample,
    iso_day,
    load_history,
)
from cryptostream.days import DAY
from cryptostream.layout import DATA_FILE, TICKS_DIR
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.tick import Tick

log = get_logger(__name__)

#: Live events are sent at most this often: "within a second", without a
#: message per tick when the demo source runs at thousands of ticks a second.
FLUSH_INTERVAL = 0.25
#: Seconds between thinnings of the ticks that grew older than FULL_DETAIL_DAYS.
COMPACT_EVERY = 3600.0
#: Points per asset in one live event; more are thinned like a range query.
LIVE_POINTS = 40
DEMO_MARK = "[demo]"

Mode = Literal["pct", "abs"]


class Dashboard:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._data_dir = config.storage.data_dir
        self._metrics = metrics
        self.source: str = config.source.name
        self._order = {asset: i for i, asset in enumerate(config.source.assets)}
        self.store = PriceStore()
        #: waiting: not loading yet; loading: reading the CSV; ready: live.
        self.state: Literal["waiting", "loading", "ready"] = "waiting"
        self.load_seconds: float | None = None
        self.load_error: str | None = None
        self._buffer: list[Tick] = []
        self._cancel = threading.Event()
        self.live = Broadcaster(metrics)
        #: Live ticks not yet sent to the pages: asset -> [(time, price, variation)].
        self._pending: dict[str, list[tuple[float, float, float | None]]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._compacted_at = time.monotonic()
        #: The CoinCap credit card's data (``/api/credits``), set by the service.
        self.credits: Callable[[], dict[str, Any]] | None = None
        #: A source's clock far from this machine's (``clock`` in the summary), set by
        #: the service; None when the clocks agree.
        self.clock: Callable[[], dict[str, Any] | None] | None = None

    # -- feeding -------------------------------------------------------------------

    def on_batch(self, ticks: list[Tick]) -> None:
        """Sink observer: the ticks of a batch that just became durable."""
        if ticks:
            # The source in use, as the ticks say: after a failover it is not the
            # configured one.
            self.source = ticks[-1].source
        if self.state == "ready":
            self._add(ticks)
        elif self.state == "loading":
            self._buffer.extend(ticks)
        # "waiting": these rows are in the part of the file the load will read.

    def _add(self, ticks: Iterable[Tick]) -> None:
        store = self.store
        pending = self._pending
        for tick in ticks:
            price, base = store.add_tick(tick)
            pct = _round((price / base - 1.0) * 100.0) if base > 0 else None
            pending.setdefault(tick.id, []).append((tick.timestamp, price, pct))
        now = time.monotonic()
        if now - self._compacted_at >= COMPACT_EVERY:
            self._compacted_at = now
            store.compact(time.time() - FULL_DETAIL_DAYS * DAY)
        self._metrics.dashboard_points.set(store.points)
        if pending and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        ticks: dict[str, list[list[float | None]]] = {}
        assets = []
        for asset, points in pending.items():
            ts, prices, _ = zip(*points, strict=True)
            kept = downsample(ts, prices, 0, len(points), LIVE_POINTS)
            ticks[asset] = [list(points[i]) for i in kept]
            assets.append(self._asset_json(self.store.series[asset]))
        payload = {
            "ticks": ticks,
            "assets": assets,
            "totals": self._totals(),
            "source": self.source,
        }
        self.live.send("ticks", orjson.dumps(payload))

    # -- loading -------------------------------------------------------------------

    async def load(self) -> None:
        """Read the CSV history in a worker thread, then go live. Never raises for bad data."""
        started = time.perf_counter()
        snapshot = self._snapshot()  # from here on, batches are buffered
        try:
            store = await asyncio.to_thread(load_history, snapshot, self._cancel)
        except LoadCancelled:
            return
        except OSError as exc:
            self._unreadable(exc)
            store = PriceStore()
        finally:
            if snapshot.data is not None:
                snapshot.data.close()
        for reason, count in sorted(store.skipped.items()):
            self._metrics.dashboard_rows_skipped.labels(reason).inc(count)
            log.warning("dashboard_rows_skipped", reason=reason, count=count)
        self.store = store
        self.state = "ready"
        buffered, self._buffer = self._buffer, []
        self._add(buffered)
        self.load_seconds = time.perf_counter() - started
        self._metrics.dashboard_load_seconds.set(self.load_seconds)
        log.info(
            "dashboard_loaded",
            records=store.records,
            assets=len(store.series),
            days=len(store.days),
            seconds=round(self.load_seconds, 3),
        )
        # Pages opened during the load show an empty chart: tell them to fetch again.
        self.live.send("reload", b"{}")

    def _snapshot(self) -> HistorySnapshot:
        """The files as they are now; sets the state to loading (no await in here)."""
        data = None
        size = 0
        try:
            data = (self._data_dir / DATA_FILE).open("rb")
            size = os.fstat(data.fileno()).st_size
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._unreadable(exc)
        daily = tuple(_daily_files(self._data_dir / TICKS_DIR))
        self.state = "loading"
        return HistorySnapshot(data, size, daily, day_of(time.time()))

    def _unreadable(self, exc: OSError) -> None:
        self.load_error = f"cannot read {DATA_FILE}: {exc.strerror or exc}"
        self._metrics.dashboard_rows_skipped.labels("unreadable_file").inc()
        log.error("dashboard_history_unreadable", file=DATA_FILE, error=exc.strerror)

    def close(self) -> None:
        """Stop a load in progress and end the live streams."""
        self._cancel.set()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.live.close()

    # -- reading -------------------------------------------------------------------

    def ordered(self, assets: Iterable[str] | None = None) -> list[Series]:
        """Series in the configured asset order, then any others by id."""
        series = self.store.series
        wanted = series.keys() if assets is None else [a for a in assets if a in series]
        ids = sorted(wanted, key=lambda a: (self._order.get(a, len(self._order)), a))
        return [series[a] for a in ids]

    def views(self, assets: Iterable[str] | None = None) -> list[SeriesView]:
        """:meth:`ordered` as views for :meth:`series_json`; call it in the loop."""
        return [s.view() for s in self.ordered(assets)]

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.state,
            "loadSeconds": self.load_seconds,
            "loadError": self.load_error,
            "clock": self.clock() if self.clock is not None else None,
            "days": [iso_day(d) for d in sorted(self.store.days)],
            "assets": [self._asset_json(s) for s in self.ordered()],
            "totals": self._totals(),
        }

    def _totals(self) -> dict[str, Any]:
        store = self.store
        span = store.span()
        return {
            "records": store.records,
            "assets": len(store.series),
            "days": len(store.days),
            "first": span[0] if span else None,
            "last": span[1] if span else None,
            "lastDay": iso_day(max(store.days)) if store.days else None,
        }

    @staticmethod
    def _asset_json(s: Series) -> dict[str, Any]:
        last = s.last
        # The newest point is the last one: the series is in time order.
        variation = _round(s.variation(len(s.ts) - 1)) if s.ts else None
        return {
            "id": s.id,
            "symbol": s.symbol,
            "name": s.name,
            "demo": s.name.endswith(DEMO_MARK),
            "points": len(s.ts),
            "last": last.as_json() if last is not None else None,
            "variation": variation,
        }

    @staticmethod
    def series_json(
        series: list[SeriesView], start: float, end: float, points: int, mode: Mode
    ) -> dict[str, Any]:
        """The chart's data for a range; safe to run in a worker thread on views
        (see :meth:`views`), while the loop goes on adding ticks.

        Each series is a list of ``[time, value]``; ``[time, null]`` marks a gap.
        The chart spaces its points evenly whatever their times, so a day the
        service was down would otherwise vanish: gaps get empty points on a grid
        shared by all series, one per ``step`` seconds, and time reads true again.
        """
        t0 = step = 0.0
        bounds = [(s, *s.bounds(start, end)) for s in series]
        spans = [(s.ts[lo], s.ts[hi - 1]) for s, lo, hi in bounds if hi > lo]
        if spans:
            t0 = min(a for a, _ in spans)
            step = (max(b for _, b in spans) - t0) / max(1, points // 2)
        out = []
        for s in series:
            picked, total = s.window(start, end, points)
            ts = s.ts
            values: Points
            if mode == "pct":
                values = [[ts[i], v] for i in picked if (v := _round(s.variation(i))) is not None]
            else:
                price = s.price
                values = [[ts[i], price[i]] for i in picked]
            if step > 0:
                values = _with_gaps(values, t0, step)
            out.append(
                {
                    "id": s.id,
                    "symbol": s.symbol,
                    "name": s.name,
                    "total": total,
                    "points": values,
                }
            )
        return {"from": start, "to": end, "mode": mode, "series": out}


Points = list[list[float | None]]


def _with_gaps(values: Points, t0: float, step: float) -> Points:
    """Insert ``[t, None]`` on the grid ``t0 + k * step`` inside gaps of the series.

    A gap is a pause over two grid steps and over three times the series'
    usual spacing (its median), so a sparse but regular series stays whole.
    """
    times = [v[0] for v in values if v[0] is not None]
    if len(times) < 2:
        return values
    spacing = statistics.median(b - a for a, b in itertools.pairwise(times))
    gap = max(2 * step, 3 * spacing)
    out: Points = []
    prev: float | None = None
    for item in values:
        t = item[0]
        assert t is not None
        if prev is not None and t - prev > gap:
            g = t0 + (math.floor((prev - t0) / step) + 1) * step
            while g <= t - step:
                if g - prev >= step:
                    out.append([g, None])
                g += step
        out.append(item)
        prev = t
    return out


def _round(value: float | None) -> float | None:
    # Six decimals of a percentage is far below what a chart or a person sees.
    return None if value is None else round(value, 6)


def _daily_files(folder: Path) -> Iterable[tuple[int, Path, int]]:
    try:
        paths = sorted(folder.glob("*.csv"))
    except OSError:
        return
    for path in paths:
        try:
            day = dt.date.fromisoformat(path.stem)
            size = path.stat().st_size
        except (ValueError, OSError):
            continue  # not a daily file of ours
        yield (day - dt.date(1970, 1, 1)).days, path, size
