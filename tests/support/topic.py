"""Read a whole topic back with a real Kafka client, to compare with the CSV."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_topic(bootstrap: str, topic: str, timeout: float = 30) -> list[dict[str, object]]:
    """Every message value on ``topic`` (all partitions), decoded."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            partitions = consumer.partitions_for_topic(topic)
            while partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            values: list[dict[str, object]] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    values.extend(orjson.loads(m.value) for m in msgs)
            return values
    finally:
        await consumer.stop()


def csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def tick_key(row: dict[str, object]) -> tuple[str, str, str]:
    """Identity of a tick: asset, observation time, price (as in the sink's dedup)."""
    return (str(row["id"]), repr(float(str(row["timestamp"]))), str(row["priceUsd"]))
