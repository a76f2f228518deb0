"""The consumer's pipelined group commit against a real broker: the next fetch is in
flight while a transaction is being made durable, and the writer hands everything
pending to the sink as one transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from cryptostream.config import Config
from cryptostream.consumer import Consumer
from cryptostream.metrics import Metrics
from cryptostream.sink.csvsink import CsvSink
from cryptostream.sink.worker import SinkWorker
from cryptostream.sinkport import BatchResult, KafkaRecord
from cryptostream.tick import Tick
from cryptostream.topic import Topic
from tests.conftest import ConfigFactory, wait_until

pytestmark = pytest.mark.integration


class GatedSink(SinkWorker):
    """The real sink, with its first transaction held until the test lets it go."""

    def __init__(self, sink: CsvSink) -> None:
        super().__init__(sink)
        self.gate = asyncio.Event()
        self.in_first = asyncio.Event()
        self.batches: list[int] = []

    async def write(self, records: Sequence[KafkaRecord]) -> BatchResult:
        if not self.batches:
            self.in_first.set()
            await self.gate.wait()
        self.batches.append(len(records))
        return await super().write(records)


def tick(i: int) -> bytes:
    now = time.time() - 600
    return Tick(
        now + i, "bitcoin", "BTC", "Bitcoin", f"{60000 + i}.5", "0.1", None, "6e4"
    ).to_json()


async def produce(config: Config, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers)
    await producer.start()
    try:
        for value in values:
            await producer.send(config.kafka.topic, value, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def test_the_next_fetch_is_pending_while_a_transaction_runs_and_joins_the_next_one(
    make_config: ConfigFactory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    config = make_config(bootstrap=kafka_bootstrap, data_dir=tmp_path / "data")
    sink = GatedSink(CsvSink(tmp_path / "data", config.kafka.topic, Metrics()))
    await sink.open()
    consumer = Consumer(config.kafka, Topic(config.kafka), sink, Metrics())
    task = asyncio.create_task(consumer.run())
    try:
        await produce(config, [tick(0)])
        await asyncio.wait_for(sink.in_first.wait(), 60)
        # The first transaction is held; 300 more ticks arrive meanwhile. Before the
        # pipeline, nothing was fetched until the write returned.
        await produce(config, [tick(i) for i in range(1, 301)])
        await wait_until(lambda: len(consumer.pending) == 300, timeout=30)
        sink.gate.set()
        await wait_until(lambda: consumer.written == 301, timeout=30)
        # Everything that was pending went into the sink as one transaction.
        assert sink.batches == [1, 300]
        lines = (tmp_path / "data/crypto_data.csv").read_text().splitlines()
        assert len(lines) == 302
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sink.close()
