"""Running contender processes and measuring them through the kernel."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: How often the peak RSS of a running contender is read (ms); its exit is seen at once.
_WATCH_MS = 50


class BenchError(Exception):
    """The harness or a contender broke; the message says which and why."""


@dataclass
class Finished:
    """A contender process that ran to its end."""

    wall: float
    cpu: float  # user + system seconds
    max_rss_mb: float
    result: dict[str, Any] = field(default_factory=dict)
    system: float = 0.0  # of ``cpu``, the system seconds (in the kernel, for system calls)


def run(
    name: str,
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
    log: Path,
    timeout: float,
    cwd: Path | None = None,
) -> Finished:
    """Run ``cmd`` to its end; CPU time from ``wait4``, peak RSS from ``VmHWM``.

    A Python contender prints its own result as one JSON line on stdout, which
    goes to ``log`` with ``.out`` (or to ``stdout``: then there is no result);
    stderr goes to ``log``. A non-zero exit or a timeout raises :class:`BenchError`.
    """
    out_path = stdout or log.with_suffix(".out")
    with log.open("wb") as err, out_path.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=err, cwd=cwd)
        try:
            status, usage, peak_kb = _wait(proc.pid, start + timeout, name)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"{name} exited with {proc.returncode}; see {log}:\n{_tail(log)}")
    result: dict[str, Any] = {}
    if stdout is None:
        lines = out_path.read_text().strip().splitlines()
        if not lines:
            raise BenchError(f"{name} printed no result; see {log}")
        result = json.loads(lines[-1])
    return Finished(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss_mb=peak_kb / 1024,
        result=result,
        system=usage.ru_stime,
    )


def last_json(path: Path) -> dict[str, Any]:
    """The last JSON object line of a file that may hold other lines too (a profiler's
    output around a contender's result); empty when there is none."""
    lines = path.read_text().splitlines() if path.exists() else []
    for line in reversed(lines):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    return {}


def _wait(pid: int, deadline: float, name: str) -> tuple[int, Any, int]:
    """Wait for the exit (at once, via a pidfd), watching the peak RSS meanwhile.

    The peak comes from ``VmHWM``, not from ``ru_maxrss``: the latter counts the
    harness's own memory, which the child held between fork and exec.
    """
    pidfd = os.pidfd_open(pid)
    peak_kb = 0
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(_WATCH_MS):
            peak_kb = max(peak_kb, _status_kb(pid, "VmHWM:"))
            if time.perf_counter() > deadline:
                raise BenchError(f"{name} did not finish in time")
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)
    return status, usage, peak_kb


def _status_kb(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Sample:
    wall: float  # time.time()
    rss_mb: float
    cpu: float  # user + system seconds so far


def cpu_times(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system; every thread) a running process has used so far:
    ``utime`` and ``stime`` of ``/proc/<pid>/stat``. Raises OSError once it is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces) start at field 3.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def sample(pid: int) -> Sample | None:
    """RSS (``VmRSS``) and CPU time (``utime + stime``) of a running process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        user, system = cpu_times(pid)
    except OSError:
        return None
    rss_kb = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )
    return Sample(time.time(), rss_kb / 1024, user + system)
