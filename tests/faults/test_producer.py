"""Guarantee 3: the producer never counts a tick Kafka did not acknowledge, and never hangs.

A frozen broker (SIGSTOP: connections stay open, nothing answers) is the hang
that deadlines exist for. And the spool of unpublished ticks resumes where a
crash left it instead of publishing everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from cryptostream.metrics import Metrics
from cryptostream.producer import Producer
from cryptostream.queue import TickQueue
from cryptostream.tick import Tick
from cryptostream.topic import Topic
from tests.conftest import ConfigFactory, unique, wait_until
from tests.faults.conftest import start_cluster
from tests.faults.harness import assert_all_files_exact, audit, read_topic, row_count

pytestmark = pytest.mark.faults


def counter(running: Any, name: str, labels: dict[str, str] | None = None) -> int:
    registry = running.service.metrics.registry
    return int(registry.get_sample_value(f"cryptostream_{name}_total", labels or {}) or 0)


def spooled(data_dir: Path) -> int:
    try:
        return (data_dir / ".cryptostream" / "unpublished.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(300)
async def test_frozen_broker_no_hang_no_false_ack_nothing_lost(
    make_config: ConfigFactory, run_service
) -> None:
    cluster = await asyncio.to_thread(start_cluster, 1)
    pid = cluster.pid_of(1)
    try:
        env = {
            "CRYPTOSTREAM_SOURCE__NAME": "demo",
            "CRYPTOSTREAM_DEMO__RATE": "200",
            "CRYPTOSTREAM_KAFKA__SEND_TIMEOUT": "3",
            "CRYPTOSTREAM_KAFKA__REQUEST_TIMEOUT": "3",
            "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "6",
            "CRYPTOSTREAM_WEB__DASHBOARD": "false",
            "CRYPTOSTREAM_SHUTDOWN__TIMEOUT": "10",
        }
        config = make_config(bootstrap=cluster.bootstrap_servers, env=env)
        data_dir = config.storage.data_dir
        csv_path = data_dir / "crypto_data.csv"
        first = await run_service(config)
        await wait_until(lambda: row_count(csv_path) >= 400, 60, "rows before the freeze")

        os.kill(pid, signal.SIGSTOP)
        # Sends time out and are retried; nothing waits forever, polling goes on.
        await wait_until(
            lambda: (
                counter(first, "publish_errors", {"kind": "timeout"}) >= 1
                and not first.service.readiness()[0]
            ),
            30,
            "a publish timeout while the broker is frozen",
        )
        fetched_before_stop = counter(first, "ticks_fetched")
        await wait_until(
            lambda: counter(first, "ticks_fetched") > fetched_before_stop + 200,
            30,
            "the fetcher to go on",
        )
        # An orderly stop with the broker frozen must end (deadlines), spooling the rest.
        loop = asyncio.get_running_loop()
        began = loop.time()
        code = await first.stop(timeout=60)
        stop_took = loop.time() - began
        fetched, acked = counter(first, "ticks_fetched"), counter(first, "ticks_published")
        # Exactly the unacknowledged ticks wait on disk: none was counted as published
        # without Kafka's acknowledgement, none vanished.
        assert spooled(data_dir) == fetched - acked > 0

        os.kill(pid, signal.SIGCONT)
        second = await run_service(config)
        await wait_until(lambda: spooled(data_dir) == 0, 60, "the spool to be published")
        await wait_until(
            lambda: row_count(csv_path) >= fetched + 200, 60, "the spool and new ticks in the CSV"
        )
        assert await second.stop(timeout=60) == 0
        content = await read_topic(cluster.bootstrap_servers, config.kafka.topic)
        figures = audit("frozen broker", data_dir, content)
        total_fetched = fetched + counter(second, "ticks_fetched")
        figures.notes.update(
            fetched=total_fetched,
            acknowledged_before_freeze_stop=acked,
            spooled=fetched - acked,
            stop_exit_code=code,
            stop_took_s=round(stop_took, 1),
            copies_on_topic=len(content.ticks) - figures.produced,
        )
        figures.report()
        assert_all_files_exact(figures)
        assert figures.produced == total_fetched
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.stop)


def demo_ticks(n: int, start: float) -> list[Tick]:
    return [
        Tick(start + i * 0.001, "bitcoin", "BTC", "Bitcoin", f"{100 + i}.5", "-1", "100.5", None)
        for i in range(n)
    ]


@pytest.mark.parametrize("progress_matches", [True, False], ids=["resumed", "stale-progress"])
async def test_spool_publishing_resumes_after_a_crash(
    make_config: ConfigFactory, run_service, fault_kafka, progress_matches: bool
) -> None:
    config = make_config(
        bootstrap=fault_kafka.bootstrap_servers,
        topic=unique("spool"),
        env={
            "CRYPTOSTREAM_SOURCE__NAME": "demo",
            "CRYPTOSTREAM_DEMO__RATE": "0.00001",  # no new ticks: only the spool
            "CRYPTOSTREAM_WEB__DASHBOARD": "false",
        },
    )
    state = config.storage.data_dir / ".cryptostream"
    state.mkdir(parents=True)
    ticks = demo_ticks(5000, 1_760_000_000.0)
    spool = state / "unpublished.jsonl"
    spool.write_bytes(b"".join(t.to_json() + b"\n" for t in ticks))
    st = spool.stat()
    # As a crash after the first chunk (2000) was acknowledged leaves it.
    identity = [st.st_ino, st.st_size, st.st_mtime_ns + (0 if progress_matches else 1)]
    (state / "unpublished.progress").write_bytes(orjson.dumps({"spool": identity, "done": 2000}))

    running = await run_service(config)
    await wait_until(lambda: not spool.exists(), 60, "the spool to be published")
    assert await running.stop() == 0
    assert not (state / "unpublished.progress").exists()
    content = await read_topic(fault_kafka.bootstrap_servers, config.kafka.topic)
    expected = ticks[2000:] if progress_matches else ticks
    assert len(content.ticks) == len(expected)
    assert content.ticks == [(t.id, repr(t.timestamp), t.price_usd) for t in expected]


def spool_keys(data_dir: Path) -> list[tuple[str, str, str]]:
    path = data_dir / ".cryptostream" / "unpublished.jsonl"
    if not path.exists():
        return []
    return [
        (d["id"], repr(d["timestamp"]), d["priceUsd"])
        for d in map(orjson.loads, path.read_bytes().splitlines())
    ]


def make_producer(config: Any, queue_size: int = 100_000) -> tuple[Producer, TickQueue, Metrics]:
    metrics = Metrics()
    queue = TickQueue(queue_size, metrics)
    data_dir = config.storage.data_dir
    (data_dir / ".cryptostream").mkdir(parents=True, exist_ok=True)
    producer = Producer(config.kafka, Topic(config.kafka), queue, metrics, data_dir)
    return producer, queue, metrics


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_forced_stop_spools_only_what_kafka_did_not_take(
    make_config: ConfigFactory, fault_kafka
) -> None:
    """Ticks handed to the client but not yet acknowledged when the producer is cancelled:
    closing the client still delivers them, so they must not be spooled as well."""
    config = make_config(
        bootstrap=fault_kafka.bootstrap_servers,
        topic=unique("spool-once"),
        env={"CRYPTOSTREAM_KAFKA__LINGER_MS": "3000"},  # sends wait in the client's buffer
    )
    producer, queue, _ = make_producer(config)
    ticks = demo_ticks(501, 1_760_000_000.0)
    queue.put(ticks[0])
    task = asyncio.create_task(producer.run())
    try:
        await wait_until(lambda: producer.published == 1, 30, "a first acknowledged tick")
        for t in ticks[1:]:
            queue.put(t)
        await wait_until(lambda: len(queue) == 0, 10, "the batch handed to the client")
        await asyncio.sleep(0.3)  # every send is in the client's buffer, none acknowledged
    finally:
        await cancel(task)
    on_topic = (await read_topic(fault_kafka.bootstrap_servers, config.kafka.topic)).ticks
    in_spool = spool_keys(config.storage.data_dir)
    assert set(on_topic) & set(in_spool) == set(), "spooled and delivered"
    assert sorted(on_topic + in_spool) == sorted(
        (t.id, repr(t.timestamp), t.price_usd) for t in ticks
    )
    assert producer.published == len(on_topic)


async def test_the_spool_is_bounded_across_restarts_while_kafka_is_down(
    make_config: ConfigFactory,
) -> None:
    config = make_config(topic=unique("spool-bound"))  # no broker at this address
    data_dir = config.storage.data_dir
    (data_dir / ".cryptostream").mkdir(parents=True)
    ticks = demo_ticks(3500, 1_760_000_000.0)
    spool = data_dir / ".cryptostream" / "unpublished.jsonl"
    spool.write_bytes(b"".join(t.to_json() + b"\n" for t in ticks[:2000]))
    dropped = 0
    for run in range(3):  # three restarts, each with 500 new ticks in a queue of 500
        producer, queue, metrics = make_producer(config, queue_size=500)
        for t in ticks[2000 + run * 500 : 2500 + run * 500]:
            queue.put(t)
        task = asyncio.create_task(producer.run())
        await asyncio.sleep(1.0)
        await cancel(task)
        dropped += int(metrics.registry.get_sample_value("cryptostream_spool_dropped_total") or 0)
    # At most a full queue and a batch in hand (500 + 2000); the newest kept, as the
    # queue does; every drop counted.
    assert spool_keys(data_dir) == [(t.id, repr(t.timestamp), t.price_usd) for t in ticks[-2500:]]
    assert dropped == 1000
