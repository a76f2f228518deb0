"""A broker that lost the tail of its log is not a new topic.

One broker, a power cut: the records it had not flushed are gone, so the log now
ends below the offset the sink stored. Same cluster, same log start, and the last
record left is one the files already hold: the topic was truncated, not
recreated. Read again from 0 as if it were a reset, every record older than the
sink's duplicate window would be written a second time. The service says what
was lost (one error event ``topic_truncated``, a metric), moves its offset to the
log end and reads on from there; every tick stays in every file exactly once.

The broker's loss is real: the node is SIGKILLed and its active segment cut in
the middle of a record batch (a torn write); Kafka's recovery after an unclean
shutdown cuts the segment back to the last whole batch. No recovery-point
checkpoint stands in the way: a broker's recovery point advances only when a
segment is flushed (at a roll, by default), so the active segment of a short
test topic is always recovered from its start, and its index files are rebuilt
by that recovery.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kafkalocal.protocol import probe_metadata
from tests.conftest import free_port, unique, wait_until
from tests.faults.conftest import start_cluster
from tests.faults.harness import (
    ServiceProcess,
    TopicContent,
    assert_all_files_exact,
    audit,
    create_topic,
    end_offsets,
    metric,
    numbered_tick,
    partition_leader,
    publish,
    read_csv,
    read_topic,
    service_env,
    settle,
    sink_state,
    state_offsets,
)

pytestmark = pytest.mark.faults

FIRST = 5000  # ticks before the power cut
SECOND = 500  # ticks after it
#: Where in the active segment the torn write falls (a fraction of its size).
TEAR_AT = 0.6


def batches(segment: Path) -> list[tuple[int, int, int]]:
    """(position, base offset, size in bytes) of every record batch of a segment file.

    A batch starts with its base offset (int64) and the length of the rest (int32).
    """
    data = segment.read_bytes()
    found, position = [], 0
    while position + 12 <= len(data):
        base, length = struct.unpack(">qi", data[position : position + 12])
        found.append((position, base, 12 + length))
        position += 12 + length
    return found


def tear_active_segment(cluster: Any, node_id: int, topic: str) -> int:
    """Cut partition 0's active segment in the middle of the batch at TEAR_AT of its
    size (the node must be down); the offset the log ends at once recovered."""
    segment = cluster.data_dir_of(node_id) / f"{topic}-0" / "00000000000000000000.log"
    found = batches(segment)
    size = segment.stat().st_size
    target = int(size * TEAR_AT)
    position, base, length = next(b for b in found if b[0] <= target < b[0] + b[2])
    assert base > 0, found[:3]
    with segment.open("r+b") as fh:
        fh.truncate(position + length // 2)
    return int(base)


async def log_start(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with asyncio.timeout(30):
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            return int((await consumer.beginning_offsets([tp]))[tp])
        finally:
            await consumer.stop()


def cluster_id(cluster: Any, node_id: int) -> str | None:
    metadata = probe_metadata(cluster.port_of(node_id))
    return None if metadata is None else metadata.cluster_id


async def log_end_when_served(bootstrap: str, topic: str, timeout: float = 60) -> int:
    """The partition's end offset once its restarted leader serves it again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (await end_offsets(bootstrap, topic, timeout=10))[0]
        except (KafkaError, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def lose_the_tail(cluster: Any, topic: str) -> tuple[int, int]:
    """A power cut of the topic's only broker that tears the tail of its log:
    (log end before, log end after). Asserts it is the same cluster and log start."""
    bootstrap = cluster.bootstrap_servers
    node_id, _ = await partition_leader(bootstrap, topic)
    before = (await end_offsets(bootstrap, topic))[0]
    identity = cluster_id(cluster, node_id)
    cluster.kill_node(node_id)
    expected_end = tear_active_segment(cluster, node_id, topic)
    cluster.start_node(node_id)
    end = await log_end_when_served(bootstrap, topic)
    assert end == expected_end < before, (end, expected_end, before)
    assert await log_start(bootstrap, topic) == 0
    assert identity is not None and cluster_id(cluster, node_id) == identity
    return before, end


def service(cluster: Any, tmp_path: Path, name: str) -> tuple[ServiceProcess, str, Path, int]:
    """The service on ``cluster``'s topic, with only the ticks the test publishes."""
    topic, data_dir, port = unique(name), tmp_path / "data", free_port()
    env = service_env(
        bootstrap=cluster.bootstrap_servers,
        topic=topic,
        group=unique(f"{name}-group"),
        data_dir=data_dir,
        extra={"CRYPTOSTREAM_WEB__PORT": str(port), "CRYPTOSTREAM_DEMO__RATE": "0.00001"},
    )
    return ServiceProcess(env, tmp_path), topic, data_dir, port


async def first_life(
    svc: ServiceProcess, bootstrap: str, topic: str, data_dir: Path, now: float
) -> TopicContent:
    """FIRST ticks published and all in the sink; the topic as it was."""
    await create_topic(bootstrap, topic)
    await svc.start()
    await svc.wait_event("service_started")
    await publish(bootstrap, topic, [(b"bitcoin", numbered_tick(i, now)) for i in range(FIRST)])
    await wait_until(lambda: state_offsets(data_dir).get(0) == FIRST, 90, "all ticks")
    return await read_topic(bootstrap, topic)


async def second_life(
    svc: ServiceProcess, bootstrap: str, topic: str, data_dir: Path, port: int, now: float
) -> tuple[tuple[bool, bool], tuple[float, float]]:
    """After the loss: the sink at the log's end, SECOND new ticks, the sink at the end
    again, the service stopped; (answered, caught up), (truncated, resets metrics)."""
    answered = await settle(svc, bootstrap, topic, data_dir)
    new = [(b"bitcoin", numbered_tick(FIRST + i, now)) for i in range(SECOND)]
    await publish(bootstrap, topic, new)
    caught_up = await settle(svc, bootstrap, topic, data_dir)
    truncated = await metric(port, "cryptostream_records_truncated_total")
    resets = await metric(port, "cryptostream_topic_resets_total")
    assert await svc.stop() == 0, svc.tail()
    return (answered, caught_up), (truncated, resets)


@pytest.mark.timeout(300)
async def test_a_log_that_lost_its_tail_is_read_on_from_its_end(tmp_path: Path) -> None:
    cluster = start_cluster(1)
    try:
        bootstrap = cluster.bootstrap_servers
        svc, topic, data_dir, port = service(cluster, tmp_path, "truncated")
        now = time.time()
        try:
            old = await first_life(svc, bootstrap, topic, data_dir, now)
            assert await svc.stop() == 0, svc.tail()
            stored = state_offsets(data_dir)[0]

            before, log_end = await lose_the_tail(cluster, topic)

            await svc.start()
            await svc.wait_event("service_started")
            # The truncation is answered before anything new lands on the log.
            settled, metrics = await second_life(svc, bootstrap, topic, data_dir, port, now)
        finally:
            await svc.ensure_stopped()
        new = await read_topic(bootstrap, topic)
    finally:
        cluster.stop()

    check_truncation_followed(
        "truncated log (power cut, service stopped)",
        svc,
        data_dir,
        topic,
        old + new,
        stored=stored,
        before=before,
        log_end=log_end,
        settled=settled,
        metrics=metrics,
    )


@pytest.mark.timeout(300)
async def test_a_log_that_lost_its_tail_under_a_running_service_is_read_on_from_its_end(
    tmp_path: Path,
) -> None:
    """The same power cut while the service runs: the consumer meets the shorter log
    again at its next fetch ("out of range" at the stored offset) or assignment (the
    group's coordinator was on the broker too), and tells the truncation apart the
    same way either time."""
    cluster = start_cluster(1)
    try:
        bootstrap = cluster.bootstrap_servers
        svc, topic, data_dir, port = service(cluster, tmp_path, "truncated-live")
        now = time.time()
        try:
            old = await first_life(svc, bootstrap, topic, data_dir, now)
            stored = state_offsets(data_dir)[0]

            before, log_end = await lose_the_tail(cluster, topic)
            await svc.wait_event("topic_truncated", timeout=90)
            settled, metrics = await second_life(svc, bootstrap, topic, data_dir, port, now)
        finally:
            await svc.ensure_stopped()
        new = await read_topic(bootstrap, topic)
    finally:
        cluster.stop()

    check_truncation_followed(
        "truncated log (power cut, service running)",
        svc,
        data_dir,
        topic,
        old + new,
        stored=stored,
        before=before,
        log_end=log_end,
        settled=settled,
        metrics=metrics,
    )


def check_truncation_followed(
    case: str,
    svc: ServiceProcess,
    data_dir: Path,
    topic: str,
    produced: Any,
    *,
    stored: int,
    before: int,
    log_end: int,
    settled: tuple[bool, bool],
    metrics: tuple[float, float],
) -> None:
    """One truncation event and metric, no reset, every tick once in every file."""
    answered, caught_up = settled
    truncated, resets = metrics
    lost = stored - log_end
    rows = len(read_csv(data_dir / "crypto_data.csv").rows)
    truncations = svc.events("topic_truncated")
    reset_events = svc.events("topic_reset")
    figures = audit(case, data_dir, produced)
    figures.notes.update(
        stored_offset=stored,
        log_end_before=before,
        log_end_after=log_end,
        lost=lost,
        new_messages=SECOND,
        answered=answered,
        caught_up=caught_up,
        csv_rows=rows,
        truncated_events=len(truncations),
        reset_events=len(reset_events),
        truncated_metric=int(truncated),
        reset_metric=int(resets),
    )
    figures.report()
    assert_all_files_exact(figures)
    assert rows == FIRST + SECOND, figures.line()
    assert not reset_events and resets == 0, reset_events
    assert len(truncations) == 1, truncations
    event = truncations[0]
    assert event["level"] == "error", event
    assert (event["topic"], event["partition"]) == (topic, 0), event
    assert (event["next_offset"], event["log_start"], event["log_end"]) == (FIRST, 0, log_end)
    assert event["lost"] == lost == FIRST - log_end, event
    assert truncated == lost, figures.line()
    assert answered and caught_up, figures.line()
    assert state_offsets(data_dir) == {0: log_end + SECOND}
    assert sink_state(data_dir)["kafka"]["cluster_id"]
