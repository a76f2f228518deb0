"""A credit ledger that cannot be read: ``run`` and ``backfill`` do not start (exit 1,
one line naming the file and what to do), ``credits`` and the compose preflight say so
without touching the file; a file that turns unreadable while a process runs is set
aside under a name of its own."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from cryptostream.credits import Ledger
from cryptostream.credits.ledger import LEDGER_FILE
from tests.conftest import API_KEY
from tests.integration.test_backfill import cli_backfill
from tests.support.fake_coincap import FakeCoinCap

pytestmark = pytest.mark.integration

BROKEN = {
    "truncated": b"",
    "cut short": b'{\n  "version": 2,\n  "days": {\n    "2026-12-0',
    "hand-edited": b'{"version": 2, "days": {"2026-12-01": {"credits": "lots"}}}',
    "not an object": b"[1, 2, 3]",
}


def broken_ledger(data_dir: Path, content: bytes) -> Path:
    path = data_dir / LEDGER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


async def cli(data_dir: Path, *args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptostream",
        *args,
        env={
            "PATH": os.environ["PATH"],
            "COINCAP_API_KEY": API_KEY,
            "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
            "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "CRYPTOSTREAM_WEB__PORT": "0",
            **env,
        },
        cwd=data_dir.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("content", BROKEN.values(), ids=BROKEN.keys())
async def test_credits_and_the_preflight_say_so_and_leave_the_file_alone(
    tmp_path: Path, content: bytes
) -> None:
    data_dir = tmp_path / "data"
    path = broken_ledger(data_dir, content)
    before = siblings(path)
    for args in (("credits",), ("credits", "--json"), ("run", "--preflight")):
        code, out, err = await cli(data_dir, *args)
        assert code == 1, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"cryptostream: cannot read the CoinCap credit ledger {path}")
        assert "restore it from a backup, or move it away" in lines[0]
        assert path.read_bytes() == content, "never rewritten"
        assert siblings(path) == before, "never renamed, nothing set aside"


async def test_run_does_not_start_on_an_unreadable_ledger(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = broken_ledger(data_dir, BROKEN["cut short"])
    code, out, _ = await cli(data_dir, "run", CRYPTOSTREAM_LOG__FORMAT="json")
    assert code == 1
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    [event] = [e for e in events if e["event"] == "credit_ledger_unreadable"]
    assert event["path"] == str(path)
    assert "restore it from a backup" in event["hint"]
    assert path.read_bytes() == BROKEN["cut short"]


async def test_backfill_does_not_start_on_an_unreadable_ledger(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    path = broken_ledger(data_dir, BROKEN["truncated"])
    code, _, err = await cli_backfill(
        fake_coincap, data_dir, "--assets", "bitcoin", "--interval", "h1"
    )
    assert code == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"cryptostream: cannot read the CoinCap credit ledger {path}: empty (truncated)"
        )
    )
    assert fake_coincap.calls() == 0, "nothing is spent against a count of nothing"


def test_a_ledger_that_turns_unreadable_while_running_is_set_aside_under_its_own_name(
    tmp_path: Path,
) -> None:
    now = 1796169600.0 + 3600  # the same second for every set-aside
    ledger = Ledger(tmp_path / "data", clock=lambda: now, fsync=False)
    ledger.load()
    ledger.charge("poll", 2)
    ledger.flush()
    path = ledger.path
    for garbage in (b"{", b"garbage"):
        path.write_bytes(garbage)
        ledger.charge("poll", 2)
        ledger.flush()
    aside = sorted(p for p in siblings(path) if ".unreadable-" in p)
    assert aside == [
        "coincap-credits.json.unreadable-20261202T010000Z",
        "coincap-credits.json.unreadable-20261202T010000Z-2",
    ]
    assert [(path.parent / a).read_bytes() for a in aside] == [b"{", b"garbage"]
    assert Ledger(tmp_path / "data", clock=lambda: now).current().credits == 6, "counted on"
