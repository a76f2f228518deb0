"""Atomic replace: two writers of one path never touch each other's temporary file."""

from __future__ import annotations

from pathlib import Path

from cryptostream.files import atomic_write, replacing


def test_two_writers_of_one_path_each_replace_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "2025-03-07.csv"
    # Interleaved as two backfill processes would: the second starts before the first
    # has renamed its file (with one shared temporary name its rename took the first's
    # file away and the first's rename failed: FileNotFoundError).
    with replacing(path) as outer:
        outer.write(b"outer\n")
        with replacing(path) as inner:
            inner.write(b"inner\n")
        assert path.read_bytes() == b"inner\n"
    assert path.read_bytes() == b"outer\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    try:
        with replacing(path) as fh:
            fh.write(b"half")
            raise RuntimeError("disk gone")
    except RuntimeError:
        pass
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
