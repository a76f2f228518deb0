"""`cryptostream run` as a real process: SIGTERM drains and exits 0, logs are JSON, no secrets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import API_KEY, unique, wait_until
from tests.support.fake_coincap import FakeCoinCap
from tests.support.topic import csv_rows, read_topic, tick_key

pytestmark = pytest.mark.integration


def service_env(fake: FakeCoinCap, bootstrap: str, data_dir: Path, topic: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "COINCAP_API_KEY": API_KEY,
        "CRYPTOSTREAM_COINCAP__BASE_URL": fake.base_url,
        "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "0.2",
        "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "CRYPTOSTREAM_KAFKA__TOPIC": topic,
        "CRYPTOSTREAM_KAFKA__GROUP_ID": unique("cli-group"),
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "CRYPTOSTREAM_WEB__PORT": "0",
    }


def rows_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n") - 1
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_and_exits_0(
    fake_coincap: FakeCoinCap, kafka_bootstrap: str, tmp_path: Path, signum: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    topic = unique("cli-prices")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptostream",
        "run",
        env=service_env(fake_coincap, kafka_bootstrap, data_dir, topic),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        csv_path = data_dir / "crypto_data.csv"
        await wait_until(lambda: rows_in(csv_path) >= 24, timeout=60, what="rows from the process")
        loop = asyncio.get_running_loop()
        sent = loop.time()
        proc.send_signal(signum)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        took = loop.time() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert took < 10, f"shutdown took {took:.1f} s"
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    events = [entry["event"] for entry in lines]
    for step in (
        "service_started",
        "shutdown_requested",
        "producer_stopped",
        "consumer_stopped",
        "service_stopped",
    ):
        assert step in events
    assert API_KEY not in out.decode()
    _, rows = csv_rows(data_dir / "crypto_data.csv")
    messages = await read_topic(kafka_bootstrap, topic)
    assert sorted(tick_key(r) for r in rows) == sorted(tick_key(m) for m in messages)
    assert len(rows) == len(messages) >= 24
