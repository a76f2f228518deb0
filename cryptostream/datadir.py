"""One writer per data directory: an operating-system lock held for the life of the process.

Two processes on one directory (a compose stack and a local run on the same
``./data``) would cut each other's uncommitted rows on start and overwrite each
other's state. Every command that writes the sink's files (``run``, ``replay``)
takes an exclusive :func:`fcntl.flock` on ``.cryptostream/lock`` first; the
second one is refused. ``backfill`` writes only its own files (and adds to the
credit ledger under that file's own lock), so it runs beside the service; two
backfills of one interval would rewrite each other's day files and progress, so
each holds ``.cryptostream/backfill-<interval>.lock`` (:func:`hold`) while it runs.
The kernel drops the lock when its process ends, however it ends, so a crash never
leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".cryptostream/lock"


class DataDirError(Exception):
    """The data directory cannot be used by this process (a one-line message)."""


class DataDirLock:
    """Held from :meth:`acquire` to the end of its ``with`` block (or the process)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Raises :class:`DataDirError` when another process holds the directory."""
        try:
            return cls(hold(data_dir / LOCK_FILE))
        except OSError as exc:
            raise DataDirError(
                f"cannot use data directory {data_dir}: {exc.strerror or exc}"
            ) from None
        except Held as exc:
            raise DataDirError(
                f"data directory {data_dir} is in use by another cryptostream process"
                f"{exc.who}: stop it first, or set storage.data_dir to another directory"
            ) from None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1


class Held(Exception):
    """Another process holds the lock file."""

    def __init__(self, holder: int | None) -> None:
        super().__init__(holder)
        self.holder = holder

    @property
    def who(self) -> str:
        """`` (pid N)`` when the holder is known, for a message."""
        return f" (pid {self.holder})" if self.holder else ""


def hold(path: Path) -> int:
    """An exclusive :func:`fcntl.flock` on ``path`` (created if need be), without
    waiting: the descriptor that holds it (close it to let go). Raises :class:`Held`
    naming the holder's pid when another process has it, OSError when it cannot be made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise Held(holder) from None
    # The holder's pid, for the message of the one refused (the lock itself is the flock).
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
