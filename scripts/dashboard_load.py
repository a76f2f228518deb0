#!/usr/bin/env python3
"""Measure the dashboard on a big crypto_data.csv: load time, memory, API latency.

    .venv/bin/python scripts/dashboard_load.py                     # 1,000,000 rows over 365 days
    .venv/bin/python scripts/dashboard_load.py --rows 200000 --days 30
    .venv/bin/python scripts/dashboard_load.py --data-dir /tmp/big  # keep the folder (and reuse it)

Writes a CSV of random-walk ticks for six assets (the service's own format,
firstValue included), then runs the real dashboard and web server in this
process on 127.0.0.1 (no Kafka needed: only the history load and the API are
measured) and reports:

- load: seconds to read the CSV into memory (in a worker thread), and the
  longest the event loop went without running while it did (responsiveness);
- memory: resident set size before and after the load;
- API: time of GET /api/summary and /api/series for the whole range, the
  last day and the last hour, median and worst of several calls.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptostream.config import load_config  # noqa: E402
from cryptostream.csvrow import HEADER  # noqa: E402
from cryptostream.dashboard import Dashboard  # noqa: E402
from cryptostream.metrics import Metrics  # noqa: E402
from cryptostream.web import WebServer  # noqa: E402

ASSETS = [
    ("bitcoin", "BTC", "Bitcoin", 86466.98),
    ("ethereum", "ETH", "Ethereum", 2141.17),
    ("tether", "USDT", "Tether", 1.0),
    ("xrp", "XRP", "XRP", 2.43),
    ("binance-coin", "BNB", "BNB", 594.54),
    ("solana", "SOL", "Solana", 143.04),
]


def write_csv(path: Path, rows: int, days: float, seed: int) -> None:
    rnd = random.Random(seed)  # noqa: S311 - test data, not cryptography
    end = time.time()
    start = end - days * 86400
    per_asset = max(1, rows // len(ASSETS))
    step = (end - start) / per_asset
    prices = [a[3] for a in ASSETS]
    firsts: dict[tuple[int, int], float] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(HEADER)
        lines: list[str] = []
        for i in range(rows):
            k = i % len(ASSETS)
            ts = start + (i // len(ASSETS)) * step + k * 0.001
            prices[k] = max(1e-6, prices[k] * (1 + rnd.gauss(0, 0.002)))
            first = firsts.setdefault((k, int(ts // 86400)), prices[k])
            asset, symbol, name, _ = ASSETS[k]
            lines.append(
                f"{ts!r},{asset},{symbol},{name},{prices[k]:.16f},"
                f"{rnd.uniform(-6, 6):.16f},{first:.16f},{prices[k] * 0.999:.16f}\n"
            )
            if len(lines) >= 50_000:
                fh.write("".join(lines))
                lines.clear()
        fh.write("".join(lines))


def rss_mb() -> tuple[float, float]:
    """Resident and peak resident memory of this process, MB (Linux /proc)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


async def loop_lag(stop: asyncio.Event, worst: list[float]) -> None:
    """The longest a 10 ms sleep overshot: how long the loop was kept from running."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], loop.time() - t - 0.01)


async def timed(http: aiohttp.ClientSession, url: str, n: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        async with http.get(url) as r:
            body = await r.read()
            assert r.status == 200, (url, r.status, body[:200])
        times.append((time.perf_counter() - t) * 1000)
        size = len(body)
    return statistics.median(times), max(times), size


async def measure(data_dir: Path, calls: int) -> None:
    env = {
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "CRYPTOSTREAM_WEB__PORT": "0",
    }
    empty = data_dir / ".empty.toml"
    empty.write_text("")
    config = load_config(empty, env)
    metrics = Metrics()
    dashboard = Dashboard(config, metrics)
    web = WebServer(config.web, metrics, lambda: (True, {}), dashboard)
    await web.start()
    rss0, _ = rss_mb()
    stop = asyncio.Event()
    worst = [0.0]
    lag = asyncio.create_task(loop_lag(stop, worst))
    t = time.perf_counter()
    await dashboard.load()
    load_s = time.perf_counter() - t
    stop.set()
    await lag
    rss1, peak = rss_mb()
    store = dashboard.store
    print(f"rows loaded      {store.records:,} ({len(store.series)} assets, ", end="")
    print(f"{len(store.days)} days)")
    print(f"load             {load_s:.2f} s (worker thread)")
    print(f"event loop       longest stall during the load: {worst[0] * 1000:.0f} ms")
    print(f"memory (RSS)     {rss0:.0f} MB before, {rss1:.0f} MB after (+{rss1 - rss0:.0f} MB)")
    print(f"                 peak {peak:.0f} MB")
    span = store.span()
    assert span is not None
    last = span[1]
    base = f"http://127.0.0.1:{web.port}"
    queries = [
        ("summary", "/api/summary"),
        ("series, all, %", "/api/series?mode=pct&points=1500"),
        ("series, all, USD", "/api/series?mode=abs&points=1500"),
        ("series, last day", f"/api/series?mode=pct&points=1500&from={last - 86400}"),
        ("series, last hour", f"/api/series?mode=pct&points=1500&from={last - 3600}"),
    ]
    async with aiohttp.ClientSession() as http:
        for label, path in queries:
            median, worst_ms, size = await timed(http, base + path, calls)
            print(
                f"GET {label:<18} median {median:6.1f} ms, worst {worst_ms:6.1f} ms, "
                f"{size / 1024:.0f} KiB"
            )
    await web.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5, help="calls per API query")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder for crypto_data.csv (kept; reused if it has the same number of rows)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cryptostream-load-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        csv_path = data_dir / "crypto_data.csv"
        marker = data_dir / f".rows-{args.rows}-{args.days}-{args.seed}"
        if not (csv_path.exists() and marker.exists()):
            t = time.perf_counter()
            write_csv(csv_path, args.rows, args.days, args.seed)
            marker.touch()
            print(f"wrote {args.rows:,} rows in {time.perf_counter() - t:.1f} s")
        print(f"csv              {csv_path.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows")
        asyncio.run(measure(data_dir, args.calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
