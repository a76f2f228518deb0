"""The topic behind the stored offsets is not the one they were taken from.

``docker compose down -v`` without deleting ``data/``, a topic deleted and
created again, ``bootstrap_servers`` pointed at another cluster with the same
topic name: the sink state says "next offset N", and the topic now in front of
it starts again at 0. Read naively, every new record is below N and is dropped
without a word. The sink records the cluster id and the log's start and end
with its offsets, detects a reset, says so (error event, metric) and by default
follows the new topic from its beginning; ``kafka.on_topic_reset = "stop"``
exits 1 instead, naming the topic.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, unique, wait_until
from tests.faults.conftest import start_cluster
from tests.faults.harness import (
    ServiceProcess,
    assert_all_files_exact,
    audit,
    create_topic,
    delete_topic,
    metric,
    numbered_tick,
    publish,
    read_csv,
    read_topic,
    row_count,
    service_env,
    settle,
    sink_state,
    state_offsets,
)

pytestmark = pytest.mark.faults

FAST = "400"  # demo ticks per second of the first life of the topic
SLOW = "50"  # ... of the second: it stays below the stored offset for a while


async def first_life(svc: ServiceProcess, data_dir: Path, rows: int) -> None:
    await svc.start({"CRYPTOSTREAM_DEMO__RATE": FAST})
    await wait_until(lambda: row_count(data_dir / "crypto_data.csv") >= rows, 60, "first rows")
    assert await svc.stop() == 0, svc.tail()


@pytest.mark.timeout(240)
async def test_a_topic_deleted_and_created_again_is_followed_from_its_beginning(
    fault_kafka, tmp_path: Path
) -> None:
    bootstrap = fault_kafka.bootstrap_servers
    topic, data_dir, port = unique("reset"), tmp_path / "data", free_port()
    env = service_env(
        bootstrap=bootstrap,
        topic=topic,
        group=unique("reset-group"),
        data_dir=data_dir,
        extra={"CRYPTOSTREAM_WEB__PORT": str(port)},
    )
    svc = ServiceProcess(env, tmp_path)
    try:
        await first_life(svc, data_dir, 2000)
        old = await read_topic(bootstrap, topic)
        stored = state_offsets(data_dir)
        await delete_topic(bootstrap, topic)

        # The second life: new ticks land at offsets below the stored one.
        await svc.start({"CRYPTOSTREAM_DEMO__RATE": SLOW})
        await svc.wait_event("service_started")
        await wait_until(lambda: row_count(data_dir / "crypto_data.csv") > 0, 30, "rows")
        await asyncio.sleep(3)
        caught_up = await settle(svc, bootstrap, topic, data_dir)
        resets = await metric(port, "cryptostream_topic_resets_total")
        skipped = await metric(port, "cryptostream_records_skipped_below_offset_total")
        assert await svc.stop() == 0, svc.tail()
    finally:
        await svc.ensure_stopped()

    new = await read_topic(bootstrap, topic)
    figures = audit("reset topic (recreated)", data_dir, old + new)
    events = svc.events("topic_reset")
    figures.notes.update(
        old_messages=sum(stored.values()),
        new_messages=len(new.ticks),
        caught_up=caught_up,
        reset_events=len(events),
        reset_metric=int(resets),
        skipped_below_offset=int(skipped),
    )
    figures.report()
    assert_all_files_exact(figures)
    assert len(events) == 1 and events[0]["level"] == "error", events
    assert events[0]["old"]["next_offset"] == stored[0] and events[0]["policy"] == "follow"
    assert caught_up and resets == 1 and skipped == 0
    assert sink_state(data_dir)["kafka"]["cluster_id"]


@pytest.mark.timeout(240)
async def test_stop_policy_exits_1_naming_the_topic_and_writes_nothing(
    fault_kafka, tmp_path: Path
) -> None:
    bootstrap = fault_kafka.bootstrap_servers
    topic, data_dir = unique("reset-stop"), tmp_path / "data"
    env = service_env(
        bootstrap=bootstrap, topic=topic, group=unique("reset-stop-group"), data_dir=data_dir
    )
    svc = ServiceProcess(env, tmp_path)
    try:
        await first_life(svc, data_dir, 1000)
        old = await read_topic(bootstrap, topic)
        state_before = sink_state(data_dir)
        csv_before = (data_dir / "crypto_data.csv").read_bytes()
        await delete_topic(bootstrap, topic)
        await svc.start(
            {"CRYPTOSTREAM_DEMO__RATE": SLOW, "CRYPTOSTREAM_KAFKA__ON_TOPIC_RESET": "stop"}
        )
        await wait_until(lambda: not svc.running, 60, "the service to stop by itself")
        assert svc.proc is not None
        code = svc.proc.returncode
    finally:
        await svc.ensure_stopped()

    output = svc.output(this_run=True)
    assert code == 1, output[-3000:]
    events = svc.events("topic_reset", this_run=True)
    assert events and events[0]["policy"] == "stop", output[-3000:]
    failed = svc.events("task_failed", this_run=True)
    assert failed and topic in failed[0]["error"], failed
    assert sink_state(data_dir)["offsets"] == state_before["offsets"]
    assert (data_dir / "crypto_data.csv").read_bytes() == csv_before
    figures = audit("reset topic (stop)", data_dir, old)
    figures.notes.update(exit_code=code, state_unchanged=True)
    figures.report()
    assert_all_files_exact(figures)


def foreign_tick(i: int, now: float) -> bytes:
    return numbered_tick(i, now, source="other-cluster")


@pytest.mark.timeout(300)
async def test_another_cluster_with_the_same_topic_name_is_detected(
    fault_kafka, tmp_path: Path
) -> None:
    """The new cluster's topic is longer than the stored offset: only its identity
    (the cluster id) tells that offsets 0..N-1 there were never read."""
    bootstrap = fault_kafka.bootstrap_servers
    topic, data_dir, port = unique("reset-cluster"), tmp_path / "data", free_port()
    env = service_env(
        bootstrap=bootstrap,
        topic=topic,
        group=unique("reset-cluster-group"),
        data_dir=data_dir,
        extra={"CRYPTOSTREAM_WEB__PORT": str(port)},
    )
    svc = ServiceProcess(env, tmp_path)
    other = start_cluster(1)
    try:
        await first_life(svc, data_dir, 1000)
        old = await read_topic(bootstrap, topic)
        stored = state_offsets(data_dir)[0]
        old_cluster = sink_state(data_dir)["kafka"]["cluster_id"]
        # The other cluster already holds more messages than the stored offset.
        now = time.time()
        await create_topic(other.bootstrap_servers, topic)
        await publish(
            other.bootstrap_servers,
            topic,
            [(b"bitcoin", foreign_tick(i, now)) for i in range(stored + 1000)],
        )
        await svc.start(
            {
                "CRYPTOSTREAM_DEMO__RATE": SLOW,
                "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": other.bootstrap_servers,
            }
        )
        await svc.wait_event("service_started")
        await asyncio.sleep(2)
        caught_up = await settle(svc, other.bootstrap_servers, topic, data_dir)
        resets = await metric(port, "cryptostream_topic_resets_total")
        assert await svc.stop() == 0, svc.tail()
        new = await read_topic(other.bootstrap_servers, topic)
    finally:
        await svc.ensure_stopped()
        other.stop()

    figures = audit("reset topic (other cluster)", data_dir, old + new)
    events = svc.events("topic_reset")
    figures.notes.update(
        stored_offset=stored,
        other_cluster_messages=len(new.ticks),
        caught_up=caught_up,
        reset_events=len(events),
        reset_metric=int(resets),
    )
    figures.report()
    assert_all_files_exact(figures)
    assert len(events) == 1 and events[0]["reason"] == "cluster_changed", events
    assert events[0]["old"]["cluster_id"] == old_cluster != events[0]["new"]["cluster_id"]
    assert caught_up and resets == 1
    assert sink_state(data_dir)["kafka"]["cluster_id"] == events[0]["new"]["cluster_id"]
    assert len(read_csv(data_dir / "crypto_data.csv").rows) == len(old.distinct | new.distinct)


@pytest.mark.timeout(240)
async def test_a_topic_recreated_while_the_service_runs_is_followed(
    fault_kafka, tmp_path: Path
) -> None:
    """Deleted and created again under a running consumer: the fetch at the stored
    offset finds nothing there ("out of range"), which is answered, never skipped."""
    bootstrap = fault_kafka.bootstrap_servers
    topic, data_dir, port = unique("reset-live"), tmp_path / "data", free_port()
    env = service_env(
        bootstrap=bootstrap,
        topic=topic,
        group=unique("reset-live-group"),
        data_dir=data_dir,
        # Only the ticks this test publishes: it knows both lives of the topic exactly.
        extra={"CRYPTOSTREAM_WEB__PORT": str(port), "CRYPTOSTREAM_DEMO__RATE": "0.00001"},
    )
    svc = ServiceProcess(env, tmp_path)
    now = time.time()
    try:
        await svc.start()
        await svc.wait_event("service_started")
        await publish(bootstrap, topic, [(b"bitcoin", foreign_tick(i, now)) for i in range(1500)])
        await wait_until(lambda: state_offsets(data_dir).get(0) == 1500, 60, "the first life")
        old = await read_topic(bootstrap, topic)
        await delete_topic(bootstrap, topic)
        await create_topic(bootstrap, topic)
        second = [(b"bitcoin", foreign_tick(i, now + 5000)) for i in range(300)]
        await publish(bootstrap, topic, second)
        caught_up = await settle(svc, bootstrap, topic, data_dir)
        resets = await metric(port, "cryptostream_topic_resets_total")
        skipped = await metric(port, "cryptostream_records_skipped_below_offset_total")
        assert await svc.stop() == 0, svc.tail()
    finally:
        await svc.ensure_stopped()

    new = await read_topic(bootstrap, topic)
    figures = audit("reset topic (live)", data_dir, old + new)
    events = svc.events("topic_reset")
    figures.notes.update(
        old_messages=len(old.ticks),
        new_messages=len(new.ticks),
        caught_up=caught_up,
        reset_events=len(events),
        reset_metric=int(resets),
        skipped_below_offset=int(skipped),
    )
    figures.report()
    assert_all_files_exact(figures)
    assert caught_up and len(new.ticks) == 300 and resets >= 1 and events, events
