"""The running service while another process holds the credit ledger's lock (a
``backfill`` suspended with Ctrl-Z in the middle of its flush)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

import aiohttp
import pytest

from cryptostream.credits import Ledger
from cryptostream.credits import ledger as ledger_module
from cryptostream.layout import CREDITS_LOCK_FILE
from tests.conftest import ConfigFactory, python, wait_until
from tests.support.fake_coincap import FakeCoinCap

pytestmark = pytest.mark.integration

#: Takes the lock, says so, and holds it until its stdin closes or ``argv[2]`` seconds
#: pass (so a service that waits for it on its event loop fails the test, not hangs it).
HOLD = """
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
"""


def held(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def on_file(data_dir: Path) -> int:
    """Credits in the file (a fresh ledger with nothing to add only reads it)."""
    return sum(p.credits for p in Ledger(data_dir).periods().values())


async def test_a_held_ledger_lock_stalls_no_poll_and_no_answer(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ledger_module, "FLUSH_EVERY", 0.5)  # a flush falls due every poll
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    running = await run_service(config)
    data_dir = running.data_dir

    def polls() -> int:
        return fake_coincap.answered(200, "/v3/assets")

    await wait_until(lambda: polls() >= 2, what="polls")
    lock = data_dir / CREDITS_LOCK_FILE
    holder = await asyncio.create_subprocess_exec(
        python(),
        "-c",
        HOLD,
        str(lock),
        "10",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert await holder.stdout.readline() == b"locked\n"
        before = polls()
        await wait_until(lambda: polls() >= before + 5, what="polls while the lock is held")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{running.service.web.port}/healthz") as answer,
        ):
            assert answer.status == 200
        assert held(lock), "the lock was held all along"
        served = fake_coincap.credits_served
        assert on_file(data_dir) < served, "what was spent since waits for the lock"
        holder.stdin.close()
        await holder.wait()
        await wait_until(lambda: on_file(data_dir) >= served, what="the flush after release")
    finally:
        if holder.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
            await holder.wait()
    assert await running.stop() == 0
    assert on_file(data_dir) == fake_coincap.credits_served, "every credit, once"
