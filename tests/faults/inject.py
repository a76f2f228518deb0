"""Disk errors on chosen files, injected in this process.

A real disk rarely fails on demand, and a failing ``fsync`` or ``rename`` is
exactly where a sink's commit logic goes wrong. :class:`DiskFaults` wraps the
``os`` functions the sink's file helpers call (``os.fsync``, ``os.replace``,
``os.ftruncate``) and makes chosen calls fail with a chosen ``errno``, the way
the kernel reports it. Everything else passes through untouched.

    faults = DiskFaults.install(monkeypatch)
    fault = faults.add("fsync_dir", ends_with(".cryptostream"), errno.EIO, times=1)

Operations: ``fsync_file`` and ``fsync_dir`` (``os.fsync`` of a file or of a
directory), ``replace`` (``os.replace``, matched on its target), ``ftruncate``.
"""

from __future__ import annotations

import errno as errnos
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

Op = str  # "fsync_file" | "fsync_dir" | "replace" | "ftruncate"
OPS = ("fsync_file", "fsync_dir", "replace", "ftruncate")


class Crash(BaseException):
    """The process dies at this call: no ``except OSError`` (no rollback) runs."""


@dataclass
class Fault:
    op: Op
    match: Callable[[str], bool]
    errno: int
    #: How many matching calls fail (None: every one until removed).
    times: int | None = 1
    #: Raise :class:`Crash` instead of an OSError.
    crash: bool = False
    fired: int = 0

    def hit(self, op: Op, path: str) -> bool:
        if op != self.op or not self.match(path):
            return False
        return self.times is None or self.fired < self.times


def ends_with(*suffixes: str) -> Callable[[str], bool]:
    return lambda path: path.endswith(suffixes)


def _fd_path(fd: int) -> str:
    try:
        return str(Path(f"/proc/self/fd/{fd}").readlink())
    except OSError:
        return ""


class DiskFaults:
    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self._fsync = os.fsync
        self._replace = os.replace
        self._ftruncate = os.ftruncate

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> DiskFaults:
        faults = cls()
        monkeypatch.setattr(os, "fsync", faults.fsync)
        monkeypatch.setattr(os, "replace", faults.replace)
        monkeypatch.setattr(os, "ftruncate", faults.ftruncate)
        return faults

    def add(
        self,
        op: Op,
        match: Callable[[str], bool],
        errno: int = errnos.EIO,
        *,
        times: int | None = 1,
        crash: bool = False,
    ) -> Fault:
        assert op in OPS, op
        fault = Fault(op, match, errno, times, crash)
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def _check(self, op: Op, path: str) -> None:
        for fault in self.faults:
            if fault.hit(op, path):
                fault.fired += 1
                if fault.crash:
                    raise Crash(f"{op} {path}")
                raise OSError(fault.errno, os.strerror(fault.errno), path)

    def fsync(self, fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        self._check("fsync_dir" if is_dir else "fsync_file", _fd_path(fd))
        self._fsync(fd)

    def replace(self, src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        self._check("replace", os.fspath(dst))
        self._replace(src, dst, *args, **kwargs)

    def ftruncate(self, fd: int, length: int) -> None:
        self._check("ftruncate", _fd_path(fd))
        self._ftruncate(fd, length)
