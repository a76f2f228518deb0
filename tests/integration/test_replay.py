"""`cryptostream replay` rebuilds byte-identical files from the topic."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cryptostream.replay import replay
from cryptostream.tick import Tick
from tests.conftest import API_KEY, ConfigFactory, unique, wait_until
from tests.support.fake_coincap import FakeCoinCap

pytestmark = pytest.mark.integration


def files(root: Path) -> dict[str, bytes]:
    skip = {".cryptostream"}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


async def test_replay_equals_live_output(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service,
    tmp_path: Path,
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    running = await run_service(config)
    csv_path = running.data_dir / "crypto_data.csv"
    await wait_until(lambda: csv_path.read_bytes().count(b"\n") > 12, what="live rows")
    # A poison message and a duplicate, to be handled the same way in both runs.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(config.kafka.topic, b"{not json", key=b"x")
    finally:
        await producer.stop()
    await wait_until(
        lambda: (running.data_dir / "errors/dead_letters.jsonl").stat().st_size > 0,
        what="dead letter",
    )
    await wait_until(lambda: csv_path.read_bytes().count(b"\n") > 30, what="more live rows")
    assert await running.stop() == 0

    target = tmp_path / "replayed"
    env = {
        "PATH": os.environ["PATH"],
        "COINCAP_API_KEY": API_KEY,
        "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CRYPTOSTREAM_KAFKA__TOPIC": config.kafka.topic,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptostream",
        "replay",
        "--to",
        str(target),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b"replay_finished" in err and b"messages_per_second" in err
    live, replayed = files(running.data_dir), files(target)
    assert "history/ticks" in " ".join(live) and "history/candles/1m" in " ".join(live)
    assert live.keys() == replayed.keys()
    for name in live:
        assert live[name] == replayed[name], f"{name} differs"

    # Replaying into a directory that already has files is refused, nothing touched.
    again = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptostream",
        "replay",
        "--to",
        str(target),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err2 = await asyncio.wait_for(again.communicate(), 60)
    assert again.returncode == 2  # a usage error, as `cryptostream --help` says
    assert b"already holds cryptostream files" in err2


async def test_replay_finishes_when_the_last_offset_is_a_transaction_marker(
    make_config: ConfigFactory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    config = make_config(bootstrap=kafka_bootstrap)
    topic = config.kafka.topic
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    # Another application writes with transactions: every commit leaves a control
    # record (no data) at the end of each partition it wrote to.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    ticks = [
        Tick(1741305600.0 + i, asset, asset[:3].upper(), asset, f"{100 + i}.5", "1", None, None)
        for i in range(20)
        for asset in ("bitcoin", "ethereum")
    ]
    try:
        async with producer.transaction():
            for t in ticks:
                await producer.send(topic, t.to_json(), key=t.key(), partition=len(t.id) % 2)
    finally:
        await producer.stop()

    target = tmp_path / "replayed"
    async with asyncio.timeout(60):
        read = await replay(config, target, progress=False)
    assert read == len(ticks)
    assert (target / "crypto_data.csv").read_bytes().count(b"\n") == 1 + len(ticks)
