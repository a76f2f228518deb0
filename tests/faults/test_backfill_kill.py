"""A backfill killed with SIGKILL in the middle of its run: the credit ledger holds every
credit of every answer it had received (at most the one in flight is not counted)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from cryptostream.credits import Ledger
from tests.conftest import API_KEY, wait_until
from tests.support.fake_coincap import FakeCoinCap, Fault

pytestmark = pytest.mark.faults

HISTORY = "/v3/assets/bitcoin/history"


async def test_a_killed_backfill_loses_at_most_one_requests_credits(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with FakeCoinCap(api_key=API_KEY) as fake:
        # Three day windows of m1 (58 credits each) answered at once, the fourth held
        # until the process is dead: it is killed between two requests' credits.
        fake.inject(
            Fault.delay(0, path_prefix=HISTORY, times=3),
            Fault.delay(60, path_prefix=HISTORY, times=None),
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cryptostream",
            "backfill",
            "--assets",
            "bitcoin",
            "--interval",
            "m1",
            "--start",
            "2025-03-01",
            "--end",
            "2025-03-07",
            "--no-progress",
            env={
                "PATH": os.environ["PATH"],
                "COINCAP_API_KEY": API_KEY,
                "CRYPTOSTREAM_COINCAP__BASE_URL": fake.base_url,
                "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "0",
                "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
            },
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_until(lambda: fake.calls(HISTORY) >= 4, timeout=60, what="4th window")
            served = fake.credits_served
            bills = list(fake.bills)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert bills[1:] == [58, 58, 58], "the asset lookup, then three day windows"
    counted = Ledger(data_dir).current().credits
    assert served - counted <= max(bills), "at most one request's credits lost"
    # Here the kill came while the fourth request was in flight: nothing is lost.
    assert counted == served == sum(bills)
