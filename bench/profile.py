"""Where the sink's time goes: py-spy's raw (collapsed) stacks summed per cost centre.

The benchmark records with ``--gil``: only the thread holding the GIL is sampled,
never a thread blocked on the GIL, the disk or the network (without it, such
waits were counted as work). A sample is still wall time, not CPU: it counts
while that thread waits for a core or is paused by the profiler. So the table
reads samples as shares only, and shares out a CPU per row measured apart from
them (see :func:`table`).

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
#: The row of a profile's table for the CPU no sample sees: the kernel's, in system calls.
KERNEL = "kernel: system calls (writes, fsyncs, sockets, polling)"


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
    rows: list[tuple[str, int, float]],
    *,
    rows_done: int | None = None,
    rate: float = 200.0,
    cpu: dict[str, float] | None = None,
    source: str = "measured",
    own: dict[str, float] | None = None,
) -> str:
    """The cost centres; with ``rows_done`` and ``cpu``, the CPU µs per row of each.

    A sample is 1/``rate`` s of wall time of the thread holding the GIL: it counts
    while that thread waits for a core or is paused by the profiler too, so samples
    are read as shares, not as time. ``cpu`` is a CPU per row taken without sampling
    (``user`` and ``system`` µs; ``source`` says whose): the user part is shared out
    by the CPU samples, and the system part, time in system calls no GIL sample
    sees, is a row of its own, so the column adds up to ``cpu``. ``own`` is the
    profiled process's own CPU per row, held against the samples in a note.
    """
    if not rows_done or cpu is None:
        lines = ["| cost centre | samples | share |", "|---|---:|---:|"]
        lines += [f"| {centre} | {n} | {share:.1f} % |" for centre, n, share in rows]
        return "\n".join(lines) + "\n"
    cpu_n = sum(n for centre, n, _ in rows if centre not in NOT_CPU)
    cpu_samples = cpu_n or 1
    user, system = cpu["user"], cpu["system"]
    lines = [
        "| cost centre | samples | share of the CPU samples | CPU µs per row |",
        "|---|---:|---:|---:|",
    ]
    for centre, n, _ in rows:
        if centre in NOT_CPU:
            lines.append(f"| {centre} | {n} | (a wait) | (no CPU) |")
            continue
        share = n / cpu_samples
        lines.append(f"| {centre} | {n} | {100 * share:.1f} % | {user * share:.2f} |")
    lines.append(f"| {KERNEL} | | | {system:.2f} |")
    lines.append(f"| **all** | | | **{user + system:.2f}** |")
    notes = [
        f"CPU µs per row: {source}, {user + system:.2f} µs per row ({user:.2f} in user "
        f"space, {system:.2f} in the kernel), the user part shared out by the samples."
    ]
    if own is not None:
        sampled = cpu_n / rate / rows_done
        whole = own["user"] + own["system"]
        notes.append(
            f"Under the profiler the process used {whole:.2f} CPU µs per row "
            f"({own['user']:.2f} user, {own['system']:.2f} system), while its CPU samples "
            f"add up to {sampled * 1e6:.2f} µs of wall time per row: a sample also counts "
            "while the thread holding the GIL waits for a core or is paused to be read."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--rows", type=int, default=None, help="rows the profiled run wrote")
    parser.add_argument("--rate", type=float, default=200.0, help="py-spy's samples per second")
    parser.add_argument(
        "--cpu",
        type=float,
        nargs=2,
        metavar=("USER", "SYSTEM"),
        default=None,
        help="user and system CPU µs per row measured without a profiler (with --rows)",
    )
    args = parser.parse_args()
    cpu = {"user": args.cpu[0], "system": args.cpu[1]} if args.cpu else None
    sys.stdout.write(table(summarize(args.profile), rows_done=args.rows, rate=args.rate, cpu=cpu))


if __name__ == "__main__":
    main()
