"""Brokers restart, die and stay away; every acknowledged tick still reaches the CSV once.

The service runs in-process here (nothing kills it), so the test reads its
counters directly: ticks fetched, acknowledged by Kafka, dropped by the
bounded queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ConfigFactory, unique, wait_until
from tests.faults.conftest import start_cluster
from tests.faults.harness import (
    assert_all_files_exact,
    audit,
    partition_leader,
    read_topic,
    row_count,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def kafka_trio() -> Iterator[Any]:
    """Three brokers; topics get replication factor 3 and min.insync.replicas=2."""
    cluster = start_cluster(3)
    try:
        yield cluster
    finally:
        cluster.stop()


def demo_env(rate: float, **more: str) -> dict[str, str]:
    return {
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_DEMO__RATE": str(rate),
        "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "6",
        "CRYPTOSTREAM_KAFKA__SEND_TIMEOUT": "10",
        "CRYPTOSTREAM_WEB__DASHBOARD": "false",
        "CRYPTOSTREAM_SHUTDOWN__TIMEOUT": "30",
        **more,
    }


def counter(service: Any, name: str) -> float:
    value = service.metrics.registry.get_sample_value(f"cryptostream_{name}_total")
    return float(value or 0.0)


def all_labels(service: Any, name: str) -> int:
    """A labelled counter summed over its labels."""
    total = 0.0
    for metric in service.metrics.registry.collect():
        if metric.name == f"cryptostream_{name}":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return int(total)


async def finish(case: str, running: Any, bootstrap: str, topic: str) -> tuple[Any, Any]:
    """Stop orderly, then compare the topic with the files and with the counters."""
    assert await running.stop(60) == 0
    service = running.service
    assert not (running.data_dir / ".cryptostream" / "unpublished.jsonl").exists()
    content = await read_topic(bootstrap, topic)
    figures = audit(case, running.data_dir, content)
    fetched = int(counter(service, "ticks_fetched"))
    figures.notes.update(
        fetched=fetched,
        acknowledged=int(counter(service, "ticks_published")),
        dropped=int(counter(service, "queue_dropped")),
        copies_on_topic=len(content.ticks) - figures.produced,
        duplicates_skipped=int(counter(service, "duplicates_skipped")),
        publish_errors=all_labels(service, "publish_errors"),
        task_failures=all_labels(service, "task_failures"),
    )
    return figures, content


@pytest.mark.timeout(300)
async def test_single_broker_restart_mid_run(
    make_config: ConfigFactory, run_service, tmp_path: Path
) -> None:
    cluster = await asyncio.to_thread(start_cluster, 1)
    try:
        bootstrap = cluster.bootstrap_servers
        config = make_config(bootstrap=bootstrap, env=demo_env(400))
        running = await run_service(config)
        csv_path = running.data_dir / "crypto_data.csv"
        service = running.service
        await wait_until(lambda: row_count(csv_path) >= 1000, 60, "rows before the restart")

        await asyncio.to_thread(cluster.stop_node, 1)
        down_at = counter(service, "ticks_fetched")
        # While the broker is away the fetcher goes on and ticks wait in the queue.
        await wait_until(
            lambda: (
                counter(service, "ticks_fetched") >= down_at + 2000 and not service.readiness()[0]
            ),
            60,
            "polling to go on while Kafka is down, and /readyz to say so",
        )
        rows_down = row_count(csv_path)
        await asyncio.to_thread(cluster.start_node, 1, 120)
        loop = asyncio.get_running_loop()
        up_at = loop.time()
        # Resumes by itself (same process, same tasks) within 30 s of the broker's return.
        await wait_until(
            lambda: row_count(csv_path) > rows_down + 2000 and service.readiness()[0],
            30,
            "the service to resume after the broker restart",
        )
        resumed_in = loop.time() - up_at
        figures, _ = await finish("broker restart", running, bootstrap, config.kafka.topic)
        figures.notes["resumed_in_s"] = round(resumed_in, 1)
        figures.report()
        assert_all_files_exact(figures)
        assert figures.notes["task_failures"] == 0
        # Every tick fetched was acknowledged and is in the CSV, once.
        assert figures.produced == figures.notes["fetched"] == figures.notes["acknowledged"]
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.mark.timeout(420)
async def test_partition_leader_sigkilled_five_times(
    make_config: ConfigFactory, run_service, kafka_trio: Any
) -> None:
    bootstrap = kafka_trio.bootstrap_servers
    config = make_config(
        bootstrap=bootstrap,
        topic=unique("leader-kill"),
        env=demo_env(
            400,
            CRYPTOSTREAM_KAFKA__REPLICATION_FACTOR="3",
            CRYPTOSTREAM_KAFKA__MIN_INSYNC_REPLICAS="2",
        ),
    )
    running = await run_service(config)
    csv_path = running.data_dir / "crypto_data.csv"
    topic = config.kafka.topic
    await wait_until(lambda: row_count(csv_path) >= 500, 60, "rows before the first kill")
    killed = []
    for _ in range(5):
        leader, isr = await partition_leader(bootstrap, topic)
        assert len(isr) == 3, f"ISR {isr} before a kill"
        await asyncio.to_thread(kafka_trio.kill_node, leader)
        killed.append(leader)
        # A new leader takes over; the service writes on without a restart.
        rows = row_count(csv_path)
        await wait_until(lambda r=rows: row_count(csv_path) >= r + 1000, 90, "rows after the kill")
        await asyncio.to_thread(kafka_trio.start_node, leader, 120)

        async def isr_full() -> bool:
            try:
                return len((await partition_leader(bootstrap, topic))[1]) == 3
            except Exception:
                return False

        for _attempt in range(120):
            if await isr_full():
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("the restarted broker did not rejoin the ISR in 60 s")

    figures, _ = await finish("leader SIGKILL x5", running, bootstrap, topic)
    figures.notes["leaders_killed"] = ",".join(map(str, killed))
    figures.report()
    assert_all_files_exact(figures)
    assert figures.notes["task_failures"] == 0
    # Every acknowledged tick (here: every fetched one, nothing was dropped) is in the CSV.
    assert figures.produced == figures.notes["acknowledged"] == figures.notes["fetched"]


@pytest.mark.timeout(420)
async def test_two_of_three_brokers_down_for_60_s(
    make_config: ConfigFactory, run_service, kafka_trio: Any
) -> None:
    queue_size, rate = 5000, 300
    bootstrap = kafka_trio.bootstrap_servers
    config = make_config(
        bootstrap=bootstrap,
        topic=unique("two-down"),
        env=demo_env(
            rate,
            CRYPTOSTREAM_KAFKA__REPLICATION_FACTOR="3",
            CRYPTOSTREAM_KAFKA__MIN_INSYNC_REPLICAS="2",
            CRYPTOSTREAM_SOURCE__QUEUE_SIZE=str(queue_size),
        ),
    )
    running = await run_service(config)
    service = running.service
    csv_path = running.data_dir / "crypto_data.csv"
    topic = config.kafka.topic
    await wait_until(lambda: row_count(csv_path) >= 500, 60, "rows before the outage")

    # Kill the two followers: the leader stays, accepts appends it can never
    # replicate (no quorum, no ISR change), and every retry appends the batch again.
    leader, _ = await partition_leader(bootstrap, topic)
    followers = [n for n in kafka_trio.node_ids() if n != leader]
    for node in followers:
        await asyncio.to_thread(kafka_trio.kill_node, node)
    fetched_at_kill = counter(service, "ticks_fetched")
    await asyncio.sleep(60)
    fetched_during = counter(service, "ticks_fetched") - fetched_at_kill
    dropped_during = counter(service, "queue_dropped")
    await asyncio.gather(
        *(asyncio.to_thread(kafka_trio.start_node, node, 120) for node in followers)
    )
    # Everything queued drains: the queue empties and the CSV catches up.
    await wait_until(
        lambda: (
            len(service.queue) < 2 * rate
            and row_count(csv_path) >= counter(service, "ticks_published") - 2 * rate
        ),
        120,
        "the backlog to drain after the brokers returned",
    )

    figures, _ = await finish("2 of 3 brokers down 60 s", running, bootstrap, topic)
    figures.notes.update(
        fetched_while_down=int(fetched_during),
        dropped_while_down=int(dropped_during),
        queue_size=queue_size,
    )
    figures.report()
    assert_all_files_exact(figures)
    assert figures.notes["task_failures"] == 0
    fetched, dropped = figures.notes["fetched"], figures.notes["dropped"]
    # The fetcher kept polling into the bounded buffer the whole minute...
    assert fetched_during >= 0.8 * 60 * rate
    # ...the overflow was dropped oldest-first and counted exactly:
    assert dropped > 0
    assert fetched == figures.notes["acknowledged"] + dropped
    assert figures.produced == fetched - dropped
