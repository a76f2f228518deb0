#!/usr/bin/env python3
"""Measure how many demo ticks per second the real service gets into the CSV.

Runs ``cryptostream run`` (this checkout's ``.venv``) with ``source.name = demo`` at
``--rate`` ticks/s against a Kafka you run (``scripts/kafka_local.py start``), on a
fresh topic and a fresh data directory; after ``--warmup`` seconds it counts the
rows that land in ``crypto_data.csv`` for ``--seconds`` seconds, then stops the
service with SIGTERM (it drains), and checks that every tick fetched is in the CSV.

    python3 scripts/kafka_local.py start
    .venv/bin/python scripts/bench_demo.py --rate 10000 --seconds 60

Prints one line per 5 s (rows/s, queue depth, consumer lag) and a summary; exits
1 when the CSV rate fell short of the requested rate by more than 2 %, or ticks
were dropped or missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_rows(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0
    return max(0, lines - 1)


def metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    found = re.findall(r"^(cryptostream_[a-z_]+) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10_000.0, help="demo ticks per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="cryptostream-bench-"))
    port = free_port()
    run_id = uuid.uuid4().hex[:8]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CRYPTOSTREAM_") and key != "COINCAP_API_KEY"
    }
    env.update(
        {
            "CRYPTOSTREAM_SOURCE__NAME": "demo",
            "CRYPTOSTREAM_DEMO__RATE": str(args.rate),
            "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": args.bootstrap,
            "CRYPTOSTREAM_KAFKA__TOPIC": f"bench-{run_id}",
            "CRYPTOSTREAM_KAFKA__GROUP_ID": f"bench-{run_id}",
            "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
            "CRYPTOSTREAM_WEB__PORT": str(port),
            "CRYPTOSTREAM_LOG__FORMAT": "json",
            "CRYPTOSTREAM_LOG__LEVEL": "warning",
        }
    )
    csv_path = data_dir / "crypto_data.csv"
    log_path = data_dir.with_suffix(".log")
    print(f"bench: rate {args.rate:g}/s, Kafka {args.bootstrap}, data {data_dir}, log {log_path}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # the real service, as a user runs it
            [str(REPO / ".venv" / "bin" / "cryptostream"), "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
        try:
            deadline = time.monotonic() + 60
            while count_rows(csv_path) == 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(f"bench: no rows (service exit code {proc.poll()}); see {log_path}")
                    return 1
                time.sleep(0.2)
            time.sleep(args.warmup)
            start_rows, start = count_rows(csv_path), time.monotonic()
            last_print = start
            while (now := time.monotonic()) - start < args.seconds:
                time.sleep(0.5)
                if now - last_print >= 5:
                    last_print = now
                    m = metrics(port)
                    rows = count_rows(csv_path) - start_rows
                    print(
                        f"  {now - start:5.1f} s  {rows / (now - start):9.0f} rows/s  "
                        f"queue {m.get('cryptostream_queue_depth', 0):8.0f}  "
                        f"lag {m.get('cryptostream_consumer_lag', 0):8.0f}"
                    )
            rows, elapsed = count_rows(csv_path) - start_rows, time.monotonic() - start
            final = metrics(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
    fetched = final.get("cryptostream_ticks_fetched_total", 0.0)
    dropped = final.get("cryptostream_queue_dropped_total", 0.0)
    total = count_rows(csv_path)
    rate = rows / elapsed
    print(
        f"bench: {rate:.0f} ticks/s into the CSV over {elapsed:.1f} s "
        f"(requested {args.rate:g}/s); {total} rows after the drain, "
        f"{dropped:.0f} dropped, exit code {code}"
    )
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    ok = code == 0 and dropped == 0 and total >= fetched and rate >= 0.98 * args.rate
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
