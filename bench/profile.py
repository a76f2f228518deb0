"""Where the sink's time goes: py-spy's raw (collapsed) stacks summed per cost centre.

Each sample is charged to the innermost frame that names a cost centre: a
frame that names none (libc, libpython, the standard library) counts for the
caller that does, so ``rename`` under ``atomic_write`` is a file write and
``gc_collect`` anywhere is the garbage collector.

    python -m bench.profile build/bench/<run>/profile-sink-py-spy.txt
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

WAITING = "waiting: for the GIL, or the sink's thread for a call (no CPU)"
#: (cost centre, substrings of a frame that belong to it), tried in this order per frame.
CENTRES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # py-spy's idle detection misses epoll here: a sample in epoll_wait is the event
    # loop with nothing to do, not work.
    ("idle: event loop waiting (epoll)", ("epoll_wait",)),
    ("fsync", ("fsync (", "fdatasync (")),
    ("garbage collector", ("gc_collect",)),
    # Two threads: a sample may be one waiting, not working — for the GIL (the other
    # thread holds it: take_gil waits on a condition) or, in the sink's thread, for
    # the next call. py-spy cannot tell them from work by itself.
    (WAITING, ("take_gil", "pthread_cond_timedwait", "PyThread_acquire_lock_timed")),
    ("JSON decoding of messages (msgspec; orjson)", ("orjson", "msgspec")),
    ("aiokafka: fetch, decode records, ConsumerRecord", ("aiokafka/",)),
    ("metrics (latency histogram)", ("prometheus_client/",)),
    ("candles", ("sink/candles.py",)),
    ("CSV formatting (csv_line)", ("cryptostream/csvrow.py",)),
    ("tick validation + Tick objects", ("cryptostream/tick.py",)),
    ("file writes, renames", ("cryptostream/files.py",)),
    ("sink loop: offsets, dedup, days, last values", ("sink/csvsink.py",)),
    ("consumer loop: batches, commit, latency buckets", ("cryptostream/consumer.py",)),
    ("the sink's thread: calls handed over", ("sink/worker.py", "concurrent/futures/")),
    ("web server (aiohttp: /healthz, metrics)", ("aiohttp/", "cryptostream/web.py")),
    ("event loop, sockets", ("asyncio/", "selectors.py")),
)
OTHER = "other (start-up, shutdown)"
IMPORTS = "imports"
STATE = "sink state file: serialising it (orjson)"
#: The benchmark's own tasks in the measured process: not the product's cost.
PROBE = "the benchmark's probes: loop-lag task, /healthz client, end-of-topic poll"
#: Frames of the probes themselves: never ``main`` of a contender, which is the root of
#: every stack of its event loop's thread.
_PROBE_MARKS = ("bench/lag.py", "consume (bench/sink_ours.py", "record (bench/service_probe.py")
#: Samples that are not CPU work of the process (py-spy samples every thread, busy or
#: not): the idle loop, waits for the GIL or a call, and fsync (a wait for the disk).
NOT_CPU = ("idle: event loop waiting (epoll)", WAITING, "fsync")


def centre_of(frames: list[str]) -> str:
    if any("importlib" in frame for frame in frames):
        return IMPORTS
    # By caller: orjson (or a write) under the state file is the state's cost.
    if any("_State.to_json" in frame for frame in frames):
        return STATE
    # By caller too: whatever the probes call (aiohttp's client, asyncio.sleep) is theirs.
    if any(mark in frame for frame in frames for mark in _PROBE_MARKS):
        return PROBE
    for frame in reversed(frames):
        for centre, marks in CENTRES:
            if any(mark in frame for mark in marks):
                return centre
    return OTHER


def summarize(path: Path) -> list[tuple[str, int, float]]:
    """(cost centre, samples, share in %) from a py-spy ``--format raw`` file, biggest first."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[centre_of(stack.split(";"))] += int(n)
    total = sum(counts.values()) or 1
    return [(centre, n, 100 * n / total) for centre, n in counts.most_common()]


def table(
    rows: list[tuple[str, int, float]], *, rows_done: int | None = None, rate: float = 200.0
) -> str:
    """The cost centres; with ``rows_done``, also CPU µs per row of each centre (a sample
    is 1/``rate`` s of one thread), whose sum over the CPU centres is the profile's own
    CPU per row, to hold against the measured one."""
    if not rows_done:
        lines = ["| cost centre | samples | share |", "|---|---:|---:|"]
        lines += [f"| {centre} | {n} | {share:.1f} % |" for centre, n, share in rows]
        return "\n".join(lines) + "\n"
    per_row = 1e6 / rate / rows_done
    lines = ["| cost centre | samples | share | CPU µs per row |", "|---|---:|---:|---:|"]
    cpu = 0.0
    for centre, n, share in rows:
        if centre in NOT_CPU:
            lines.append(f"| {centre} | {n} | {share:.1f} % | (a wait, no CPU) |")
            continue
        cpu += n * per_row
        lines.append(f"| {centre} | {n} | {share:.1f} % | {n * per_row:.2f} |")
    lines.append(f"| **all CPU centres** | | | **{cpu:.2f}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--rows", type=int, default=None, help="rows the profiled run wrote")
    parser.add_argument("--rate", type=float, default=200.0, help="py-spy's samples per second")
    args = parser.parse_args()
    sys.stdout.write(table(summarize(args.profile), rows_done=args.rows, rate=args.rate))


if __name__ == "__main__":
    main()
