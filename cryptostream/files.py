"""Durable file primitives: atomic replace and an append-only file with a known size."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, *, fsync: bool = True, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """Write the new content of ``path`` to the file yielded; on success it replaces
    ``path`` whole, so a reader sees the old or the new file, never a mix.

    With ``fsync`` the data is on disk before the rename, so even after a power cut
    the file is the old one or the new one; ``sync_dir`` then also makes the rename
    itself durable (skip it only for files rebuilt from durable state at start-up).

    The temporary file's name is unique (pid and a random part before the name), so two
    writers of one path never write into, rename or delete each other's.
    """
    tmp = path.with_name(f".{os.getpid()}-{secrets.token_hex(4)}.{path.name}.tmp")
    try:
        # The mode of the append-only files too (the umask still applies).
        with open(tmp, "wb", opener=lambda name, flags: os.open(name, flags, 0o644)) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync and sync_dir:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, fsync: bool = True, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` (see :func:`replacing`)."""
    with replacing(path, fsync=fsync, sync_dir=sync_dir) as fh:
        fh.write(data)


class AppendFile:
    """An append-only file whose durable length the sink records in its state.

    ``size`` is the length after the last successful :meth:`append`;
    :meth:`truncate` cuts the file back to a recorded length, which is how a
    torn or uncommitted tail is removed after a crash or a failed write.
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        existed = path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size
        if not existed and fsync:
            fsync_dir(path.parent)

    def read_head(self, n: int) -> bytes:
        return os.pread(self._fd, n, 0)

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def read_tail(self, n: int) -> bytes:
        start = max(0, self.size - n)
        return os.pread(self._fd, self.size - start, start)

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end and make it durable; on error the size is unchanged."""
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(self._fd)
        self.size += len(data)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        if self._fsync:
            os.fsync(self._fd)
        self.size = size

    def actual_size(self) -> int:
        return os.fstat(self._fd).st_size

    def change(self, expected: int) -> str | None:
        """How the file at :attr:`path` differs from the one open here, ``expected`` bytes
        long: ``deleted``, ``replaced`` (another file renamed over it: a "Save"),
        ``appended``, ``shortened``, ``emptied``; None when it is the same file and length."""
        try:
            named = self.path.stat()
        except FileNotFoundError:
            return "deleted"
        own = os.fstat(self._fd)
        if (named.st_dev, named.st_ino) != (own.st_dev, own.st_ino):
            return "replaced"
        if own.st_size > expected:
            return "appended"
        if own.st_size < expected:
            return "emptied" if own.st_size == 0 else "shortened"
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
