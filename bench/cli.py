"""The benchmark's command line: standard library only, so ``./scripts/bench --help``
answers before anything is installed."""

from __future__ import annotations

import argparse
from pathlib import Path

#: The phases of a full run, in order.
PHASES = ("sink", "assets", "stalls", "producer", "latency", "steady")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./scripts/bench",
        description="Benchmark cryptostream against kcat and a naive consumer on a local "
        "Apache Kafka broker; prints the table of docs/performance.md.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run (CI)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: build/bench/<UTC time>)"
    )
    parser.add_argument(
        "--bootstrap", default=None, help="use this Kafka cluster instead of starting a broker"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="client port of the broker started here (default: a free one)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of each throughput contender; the best counts (default 1)",
    )
    parser.add_argument("--ticks", type=int, default=None, help="messages preloaded for the sink")
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=None,
        help="length of the 1,000 ticks/s run (default 300)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=(*PHASES, "profile"),
        default=None,
        help="run only these phases",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the sink (pyinstrument, and py-spy if installed)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the sink, producer and service (latency, steady) runs with the "
        "cryptostream package of another checkout (DIR holds its cryptostream/), side by "
        "side in the same run, for before/after figures",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="keep the web dashboard on in the service runs (it keeps 30 days of ticks in "
        "memory by design, which hides the pipeline's own memory figures)",
    )
    return parser


if __name__ == "__main__":
    parser().parse_args()
