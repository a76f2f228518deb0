"""The producer hands Kafka whole record batches: same partitions as ``send()``, order kept.

Real broker, a three-partition topic. The ticks are large enough that a round of
``BATCH`` ticks fills more than one record batch, so the full-batch path runs too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from cryptostream.metrics import Metrics
from cryptostream.producer import BATCH, Producer
from cryptostream.queue import TickQueue
from cryptostream.tick import Tick
from cryptostream.topic import Topic
from tests.conftest import ConfigFactory

pytestmark = pytest.mark.integration

ASSETS = ("bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana", "cardano")
PARTITIONS = 3


def make_ticks(count: int) -> list[Tick]:
    # ~2.3 KB each: a round of BATCH ticks puts ~2 MB on each partition, so record
    # batches fill up (1 MB) and the next one starts.
    name = "N" * 2048
    return [
        Tick(
            1_700_000_000 + i / 1000,
            ASSETS[i % len(ASSETS)],
            "SYM",
            name,
            f"{i}.5",
            None,
            None,
            None,
        )
        for i in range(count)
    ]


async def read_partitions(bootstrap: str, topic: str) -> dict[int, list[tuple[bytes, dict]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[int, list[tuple[bytes, dict]]] = {p: [] for p in range(PARTITIONS)}
        async with asyncio.timeout(30):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    found[tp.partition] += [(m.key, orjson.loads(m.value)) for m in messages]
        return found
    finally:
        await consumer.stop()


async def test_batches_keep_send_partitions_and_per_key_order(
    make_config: ConfigFactory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    config = make_config(
        bootstrap=kafka_bootstrap, env={"CRYPTOSTREAM_KAFKA__PARTITIONS": str(PARTITIONS)}
    )
    metrics = Metrics()
    ticks = make_ticks(2 * BATCH + 123)
    queue = TickQueue(len(ticks), metrics)
    for tick in ticks:
        queue.put(tick)
    producer = Producer(config.kafka, Topic(config.kafka), queue, metrics, tmp_path / "data")
    producer.close()  # publish what is queued, then return
    await asyncio.wait_for(producer.run(), 60)
    assert producer.published == len(ticks)

    found = await read_partitions(kafka_bootstrap, config.kafka.topic)
    assert sum(len(v) for v in found.values()) == len(ticks)
    partitioner = DefaultPartitioner()
    all_partitions = list(range(PARTITIONS))
    for partition, messages in found.items():
        for key, _ in messages:
            # Where AIOKafkaProducer.send() would have put this key.
            assert partitioner(key, all_partitions, all_partitions) == partition
    used = {p for p, messages in found.items() if messages}
    assert len(used) > 1, "seven keys over three partitions should use more than one"
    # Per key, the ticks are on the topic in the order they were queued, each once.
    for asset in ASSETS:
        expected = [t.price_usd for t in ticks if t.id == asset]
        got = [v["priceUsd"] for msgs in found.values() for k, v in msgs if k == asset.encode()]
        assert got == expected
