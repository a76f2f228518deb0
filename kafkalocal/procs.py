"""Processes by pid: is it there, is it ours (a marker on its command line), signal it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, command line) of process ``pid``, or None when there is none.

    The command line is empty for a process that is exiting (after the kernel released its
    memory, before it closed its files and sockets), so it still counts as there.
    """
    proc = Path("/proc")
    if proc.is_dir():
        try:
            stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        state = stat.rsplit(")", 1)[-1].split()[0]
        return state, raw.replace(b"\0", b" ").decode("utf-8", "replace")
    ps = shutil.which("ps")  # macOS and other systems without /proc
    if ps is None:
        return None
    result = subprocess.run(
        [ps, "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    fields = result.stdout.strip().split(None, 1)
    if result.returncode != 0 or not fields:
        return None
    return fields[0][:1], fields[1] if len(fields) > 1 else ""


def process_exists(pid: int) -> bool:
    """A process (not a zombie) with this id exists, even if it is just exiting."""
    state = _process_state(pid)
    return state is not None and state[0] not in {"Z", "X"}


def _read_cmdline(pid: int) -> str | None:
    """The command line of a live process, or None."""
    state = _process_state(pid)
    if state is None or state[0] in {"Z", "X"} or not state[1]:
        return None
    return state[1]


def pid_matches(pid: int, marker: str) -> bool:
    cmdline = _read_cmdline(pid)
    return cmdline is not None and marker in cmdline


def send_signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
