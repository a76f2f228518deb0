"""Percentiles and the steady-state figures, from raw measurements."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.proc import Sample


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q % at or below it."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def read_latencies(path: Path) -> list[tuple[float, float]]:
    """The service probe's records: (observed at, latency) pairs, in write order."""
    raw = array("d")
    raw.frombytes(path.read_bytes())
    return list(zip(raw[0::2], raw[1::2], strict=True))


@dataclass
class Latency:
    rows: int
    rows_measured: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    startup_max_ms: float


@dataclass
class Transactions:
    """The sink's ``write`` calls as the service probe timed them."""

    count: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    fsyncs_per_transaction: float


def transactions(path: Path) -> Transactions:
    """Summary of the probe's (seconds, fsyncs) pairs; calls that wrote nothing (an idle
    fetch's empty batch, no fsync) are left out."""
    raw = array("d")
    raw.frombytes(path.read_bytes())
    pairs = [(sec, n) for sec, n in zip(raw[0::2], raw[1::2], strict=True) if n > 0]
    if not pairs:
        return Transactions(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    times = sorted(sec for sec, _ in pairs)
    return Transactions(
        count=len(pairs),
        mean_ms=sum(times) / len(times) * 1000,
        p50_ms=percentile(times, 50) * 1000,
        p99_ms=percentile(times, 99) * 1000,
        max_ms=times[-1] * 1000,
        fsyncs_per_transaction=sum(n for _, n in pairs) / len(pairs),
    )


def latency(records: list[tuple[float, float]], warmup: float) -> Latency:
    """Latency percentiles of the ticks observed ``warmup`` seconds or more after the first.

    The first seconds hold the ticks made while the Kafka clients were still
    connecting; they are a start-up cost, reported apart as ``startup_max_ms``.
    """
    if not records:
        raise ValueError("no rows were written")
    first = min(ts for ts, _ in records)
    measured = sorted(lat for ts, lat in records if ts >= first + warmup)
    early = [lat for ts, lat in records if ts < first + warmup]
    if not measured:
        raise ValueError("no rows after the warm-up")
    return Latency(
        rows=len(records),
        rows_measured=len(measured),
        p50_ms=percentile(measured, 50) * 1000,
        p99_ms=percentile(measured, 99) * 1000,
        max_ms=measured[-1] * 1000,
        startup_max_ms=max(early, default=0.0) * 1000,
    )


@dataclass
class Steady:
    seconds: float
    rows: int
    rows_per_second: float
    cpu_seconds: float
    cpu_per_1000: float
    cpu_percent: float
    rss_start_mb: float
    rss_end_mb: float
    rss_max_mb: float
    growth_percent: float
    slope_mb_per_hour: float


def steady(samples: list[Sample], records: list[tuple[float, float]], warmup: float) -> Steady:
    """CPU and memory of the service between ``warmup`` seconds after start and the stop.

    Rows are counted by the time they became durable (observed at + latency),
    so CPU time and rows cover the same interval.
    """
    if len(samples) < 3:
        raise ValueError("too few samples")
    begin = samples[0].wall + warmup
    window = [s for s in samples if s.wall >= begin]
    if len(window) < 2:
        raise ValueError("the run was shorter than its warm-up")
    a, b = window[0], window[-1]
    rows = sum(1 for ts, lat in records if a.wall < ts + lat <= b.wall)
    seconds = b.wall - a.wall
    cpu = b.cpu - a.cpu
    return Steady(
        seconds=seconds,
        rows=rows,
        rows_per_second=rows / seconds,
        cpu_seconds=cpu,
        cpu_per_1000=cpu / rows * 1000 if rows else math.nan,
        cpu_percent=cpu / seconds * 100,
        rss_start_mb=a.rss_mb,
        rss_end_mb=b.rss_mb,
        rss_max_mb=max(s.rss_mb for s in window),
        growth_percent=(b.rss_mb - a.rss_mb) / a.rss_mb * 100,
        slope_mb_per_hour=_slope([(s.wall, s.rss_mb) for s in window]) * 3600,
    )


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (MB per second): a trend that one step in RSS does not fake."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / var
