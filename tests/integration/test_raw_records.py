"""Raw records against a real broker: transactions' markers and aborted batches.

A topic written by a transactional producer holds control batches (the commit and
abort markers) and, read committed, batches to skip. The adapter of
:mod:`cryptostream.rawrecords` must leave aiokafka's handling of both as it is:
every committed message once, as a :class:`RawRecord`, and the position at the
log's end.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cryptostream.rawrecords import RawRecord, raw_values
from tests.conftest import unique
from tests.faults.harness import create_topic


async def test_markers_and_aborted_batches_are_skipped_and_the_position_reaches_the_end(
    kafka_bootstrap: str,
) -> None:
    topic = unique("raw")
    await create_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(5):
                await producer.send(topic, f"committed-{i}".encode())
        await producer.begin_transaction()
        for i in range(3):
            await producer.send(topic, f"aborted-{i}".encode())
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-5")
    finally:
        await producer.stop()

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        value_deserializer=raw_values,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        got = []
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                batches = await consumer.getmany(tp, timeout_ms=500)
                got.extend(batches.get(tp, []))
    finally:
        await consumer.stop()
    assert all(type(r) is RawRecord for r in got)
    assert [r.value for r in got] == [f"committed-{i}".encode() for i in range(6)]
    # 6 messages, 3 aborted ones and 3 markers: the offsets skip the batches not read.
    assert [r.offset for r in got] == [0, 1, 2, 3, 4, 10]
    assert end == 12 and all(r.partition == 0 for r in got)
