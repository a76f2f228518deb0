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


async def test_kafka_not_there_yet_is_one_warning_per_retry_then_every_tick_lands(
    fake_coincap: FakeCoinCap, tmp_path: Path
) -> None:
    """Compose starts the app while the broker is still starting: the log says so in our
    words, once per back-off step and client, with the next attempt's time; aiokafka's
    own "Unable connect" errors (several a second) stay at debug. Then the rows come."""
    import kafkalocal

    cluster = kafkalocal.KafkaCluster(nodes=1)  # ports are chosen now, broker started later
    data_dir = tmp_path / "data"
    topic = unique("cli-late-kafka")
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cryptostream",
            "run",
            env=service_env(fake_coincap, cluster.bootstrap_servers, data_dir, topic),
            cwd=tmp_path,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )

    def events() -> list[dict[str, object]]:
        text = log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def unreachable(client: str) -> list[dict[str, object]]:
        return [e for e in events() if e["event"] == "kafka_unreachable" and e["client"] == client]

    try:
        await wait_until(
            lambda: len(unreachable("producer")) >= 3 and len(unreachable("consumer")) >= 3,
            timeout=60,
            what="three retry steps of each client",
        )
        before = events()
        await asyncio.to_thread(cluster.start, 180)
        csv_path = data_dir / "crypto_data.csv"
        await wait_until(lambda: rows_in(csv_path) >= 24, timeout=90, what="rows after Kafka")
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0, log_path.read_text()[-3000:]
        messages = await read_topic(cluster.bootstrap_servers, topic)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(cluster.stop)
    text = log_path.read_text()
    assert "Unable connect" not in text
    assert [e for e in before if e["level"] == "error"] == []
    for client in ("producer", "consumer"):
        steps = unreachable(client)
        # One line per back-off step: attempts 1, 2, 3 ... each once.
        assert [e["attempt"] for e in steps] == list(range(1, len(steps) + 1))
        for step in steps:
            assert step["level"] == "warning"
            assert step["bootstrap_servers"] == cluster.bootstrap_servers
            assert isinstance(step["retry_in"], float | int) and step["retry_in"] > 0
            assert str(step["retry_at"]).endswith("Z")
            # The reason aiokafka gave (only in its own, now debug, line) travels with ours.
            assert "Connect call failed" in str(step["cause"]), step
    _, rows = csv_rows(data_dir / "crypto_data.csv")
    assert sorted(tick_key(r) for r in rows) == sorted(tick_key(m) for m in messages)
    assert len(rows) == len(messages) >= 24
