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

A file system that cannot lock (NFS without a lock daemon, some SMB and FUSE
mounts) is refused with one line naming the directory: without the lock, two
writers would go unnoticed. Local disks (ext4, xfs, btrfs, tmpfs, APFS), Docker
volumes and bind mounts of them, and NFS with locking work.

:func:`check_topic` refuses a data directory whose sink state belongs to another
Kafka topic (``kafka.topic`` changed in ``.env``): a configuration error, found
before anything starts (and by the compose ``preflight`` step).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

import orjson

from cryptostream.layout import SINK_STATE_FILE

LOCK_FILE = ".cryptostream/lock"
#: What flock answers on a file system that has no locks (NFS without lockd: ENOLCK).
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


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
        except Held as exc:
            raise DataDirError(
                f"data directory {data_dir} is in use by another cryptostream process"
                f"{exc.who}: stop it first, or set storage.data_dir to another directory"
            ) from None
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                raise _lock_error(data_dir, exc) from None
            raise DataDirError(
                f"cannot use data directory {data_dir}: {exc.strerror or exc}"
            ) from None

    @staticmethod
    def probe(data_dir: Path) -> None:
        """Raises :class:`DataDirError` when the directory's file system has no locks.

        A shared lock on the directory itself: it needs no write access (the compose
        preflight mounts the folder read-only) and never conflicts with a running
        service, which locks ``LOCK_FILE``. A directory that cannot be opened is left
        to :meth:`acquire`.
        """
        try:
            fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                raise _lock_error(data_dir, exc) from None
        finally:
            os.close(fd)

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
    naming the holder's pid when another process has it, OSError when the file cannot
    be made or locked (``errno`` in ``_NO_LOCKS``: a file system without locks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise Held(holder) from None
    except OSError:
        os.close(fd)
        raise
    # The holder's pid, for the message of the one refused (the lock itself is the flock).
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _lock_error(data_dir: Path, exc: OSError) -> DataDirError:
    if exc.errno not in _NO_LOCKS:
        return DataDirError(f"cannot lock data directory {data_dir}: {exc.strerror or exc}")
    return DataDirError(
        f"data directory {data_dir} is on a file system without file locks "
        f"({exc.strerror or exc}): use a local disk or a Docker volume, or an NFS "
        "mount with locking (see docs/reliability.md)"
    )


def check_topic(data_dir: Path, topic: str) -> None:
    """Raises :class:`DataDirError` when the directory holds data of another topic.

    Reads only the sink state's topic name; a missing or unreadable state is left
    to the sink (it has its own, more detailed, answers).
    """
    try:
        raw = orjson.loads((data_dir / SINK_STATE_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return
    stored = raw.get("topic") if isinstance(raw, dict) else None
    if isinstance(stored, str) and stored != topic:
        raise DataDirError(
            f"{data_dir} holds data consumed from topic {stored!r}, not {topic!r}: "
            "use another storage.data_dir (or set kafka.topic back)"
        )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
