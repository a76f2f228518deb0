"""A data directory the service cannot use is a configuration error: one line, exit 2.

Two cases a user meets: ``CRYPTOSTREAM_KAFKA__TOPIC`` changed in ``.env`` while
``./data`` still holds the old topic's files (under compose, an exit 1 restarted
the app in a loop), and a data directory on a file system without file locks
(NFS without a lock daemon, some SMB/FUSE mounts: a raw ``OSError`` traceback).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from cryptostream.cli import main
from cryptostream.metrics import Metrics
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.tick import Tick

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``main()`` points the logs at this test's captured stderr: put them back, or
    every later test logs to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)


def written_by_the_sink(data_dir: Path, topic: str) -> bytes:
    """A data directory as the service leaves it: one committed batch of ``topic``."""
    sink = CsvSink(data_dir, topic, Metrics(), fsync=False)
    sink.open()
    tick = Tick(1_700_000_000.5, "bitcoin", "BTC", "Bitcoin", "60000.1", "1.2", "60000.1", None)
    sink.write([Record(0, 0, tick.to_json())])
    sink.close()
    return (data_dir / "crypto_data.csv").read_bytes()


def env_for(data_dir: Path, topic: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        # Nothing listens there: a refusal must come before any connection.
        "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "CRYPTOSTREAM_KAFKA__TOPIC": topic,
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "CRYPTOSTREAM_WEB__PORT": "0",
    }


async def cryptostream(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptostream",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [("run",), ("run", "--preflight")])
async def test_data_of_another_topic_exits_2_with_one_line_naming_both(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    data_dir = tmp_path / "data"
    before = written_by_the_sink(data_dir, "crypto_prices")
    code, out, err = await cryptostream(env_for(data_dir, "prices_v2"), tmp_path, *args)
    assert code == 2, out[-2000:] + err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "'crypto_prices'" in lines[0] and "'prices_v2'" in lines[0], lines
    assert str(data_dir) in lines[0]
    assert "Traceback" not in out + err
    assert (data_dir / "crypto_data.csv").read_bytes() == before


@pytest.mark.timeout(60)
async def test_preflight_of_a_usable_data_dir_prints_the_plan_and_exits_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    written_by_the_sink(data_dir, "crypto_prices")
    code, out, err = await cryptostream(
        env_for(data_dir, "crypto_prices"), tmp_path, "run", "--preflight"
    )
    assert code == 0, err[-2000:]
    assert "credit" in out.lower(), out


def _no_locks(fd: Any, operation: int) -> None:
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


@pytest.mark.parametrize("args", [["run"], ["run", "--preflight"], ["replay"]])
def test_a_file_system_without_locks_exits_2_naming_the_directory_and_the_cause(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    """No NFS server here: flock answers as it does on NFS without lockd (ENOLCK)."""
    data_dir = tmp_path / "share"
    data_dir.mkdir()
    for key, value in env_for(data_dir, "crypto_prices").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CRYPTOSTREAM_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    monkeypatch.setattr(fcntl, "flock", _no_locks)
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(data_dir) in lines[0] and "No locks available" in lines[0], lines
    assert "without file locks" in lines[0]


async def test_preflight_with_a_coin_no_exchange_lists_starts_on_coincap(tmp_path: Path) -> None:
    # A key, source.name = auto and an asset Binance and Kraken do not list: before, the
    # implicit Binance fallback vetoed the start (exit 2) although CoinCap prices it.
    env = {
        **env_for(tmp_path / "data", "crypto_prices"),
        "COINCAP_API_KEY": "test-key-not-real",
        "CRYPTOSTREAM_SOURCE__NAME": "auto",
        "CRYPTOSTREAM_SOURCE__ASSETS": "a-new-coin",
    }
    code, out, err = await cryptostream(env, tmp_path, "run", "--preflight")
    assert code == 0, err[-2000:]
    assert "Binance symbol" not in out + err
