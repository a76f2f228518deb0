"""``cryptostream replay``: rebuild every CSV file from the topic's earliest offset.

It feeds the topic, from the beginning up to its end at start time, through the
same :class:`~cryptostream.sink.csvsink.CsvSink` the live service uses, into an
empty data directory. The sink's output is a pure function of the message
sequence, so with one partition (the default) the files are byte-identical to
the ones the live service wrote from the same messages; with several
partitions the rows are the same, their interleaving may differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from cryptostream.config import Config, KafkaConfig
from cryptostream.layout import DATA_FILE, SINK_STATE_FILE
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.progress import Progress
from cryptostream.sink.csvsink import CsvSink
from cryptostream.topic import client_options, fetch_max_wait_ms

log = get_logger(__name__)


class ReplayError(Exception):
    """A replay that cannot run; ``exit_code`` 2 for a usage error, else 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def replay(config: Config, target: Path, *, progress: bool | None = None) -> int:
    """Rebuild the files in ``target``; returns the number of messages read."""
    if (target / SINK_STATE_FILE).exists() or (target / DATA_FILE).exists():
        raise ReplayError(
            f"{target} already holds cryptostream files: replay into an empty directory "
            "(--to DIR) or move the old files away",
            exit_code=2,
        )
    kafka = config.kafka
    consumer = AIOKafkaConsumer(
        **client_options(kafka),
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=kafka.max_batch,
        # A partition read to its end must not hold up the others' fetches (see the key).
        fetch_max_wait_ms=fetch_max_wait_ms(kafka),
    )
    sink = CsvSink(
        target,
        kafka.topic,
        Metrics(),
        fsync=config.storage.fsync,
        retention_days=config.storage.retention_days,
        candles=config.storage.candles,
    )
    async with asyncio.timeout(kafka.request_timeout * 2):
        await consumer.start()
    try:
        async with asyncio.timeout(kafka.request_timeout * 2):
            partitions = await _partitions(kafka)
        if not partitions:
            raise ReplayError(f"topic {kafka.topic!r} not found on {kafka.bootstrap_servers}")
        tps = [TopicPartition(kafka.topic, p) for p in partitions]
        consumer.assign(tps)
        async with asyncio.timeout(kafka.request_timeout * 2):
            await consumer.seek_to_beginning(*tps)
            begins = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
        total = sum(ends[tp] - begins[tp] for tp in tps)
        sink.open()
        log.info("replay_started", topic=kafka.topic, messages=total, target=str(target))
        remaining = {tp for tp in tps if ends[tp] > begins[tp]}
        return await _copy(consumer, sink, remaining, ends, total, progress)
    finally:
        sink.close()
        await consumer.stop()


async def _partitions(kafka: KafkaConfig) -> list[int]:
    """The topic's partitions, asked of the cluster: a new consumer knows no topic yet.

    It asks about every topic, not ours by name: a request naming a missing
    topic makes a broker with ``auto.create.topics.enable`` create it.
    """
    admin = AIOKafkaAdminClient(**client_options(kafka))
    try:
        await admin.start()
        topics = await admin.describe_topics()
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await admin.close()
    for topic in topics:
        if topic["topic"] == kafka.topic and topic["error_code"] == 0:
            return sorted(p["partition"] for p in topic["partitions"])
    return []


async def _copy(
    consumer: AIOKafkaConsumer,
    sink: CsvSink,
    remaining: set[TopicPartition],
    ends: dict[TopicPartition, int],
    total: int,
    progress: bool | None,
) -> int:
    start = time.monotonic()
    written = 0
    with Progress(
        total,
        desc="replay",
        unit="msg",
        unit_scale=True,
        event="replay_progress",
        count_key="messages",
        show=progress,
    ) as bar:
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            # The client's records as fetched (the sink reads partition, offset, value).
            records: list[ConsumerRecord[Any, Any]] = []
            for tp, messages in sorted(batches.items(), key=lambda kv: kv[0].partition):
                records.extend(m for m in messages if m.offset < ends[tp])
            # Done with a partition when its position reached the end, not when a record
            # at end - 1 came: that offset may hold no data record (a transaction marker,
            # a record compacted away), and then no record ever says so.
            for tp in sorted(remaining, key=lambda t: t.partition):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if not records:
                continue
            written += sink.write(records).written
            bar.update(len(records))
    done = bar.done
    took = max(time.monotonic() - start, 1e-9)
    log.info(
        "replay_finished",
        messages=done,
        rows=written,
        seconds=round(took, 2),
        messages_per_second=round(done / took),
    )
    return done
