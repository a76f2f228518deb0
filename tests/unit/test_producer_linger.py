"""The producer's linger: ticks that trickle in are grouped, a burst after a quiet spell
is not held back (no Kafka needed: this is how the producer takes its batches)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptostream.metrics import Metrics
from cryptostream.producer import Producer
from cryptostream.queue import TickQueue
from cryptostream.tick import Tick
from cryptostream.topic import Topic
from tests.conftest import ConfigFactory


def tick(n: int) -> Tick:
    return Tick(1_760_000_000.0 + n, "bitcoin", "BTC", "Bitcoin", f"{n}.5", None, None, None)


def producer_with(
    make_config: ConfigFactory, tmp_path: Path, linger_ms: int
) -> tuple[Producer, TickQueue]:
    config = make_config(env={"CRYPTOSTREAM_KAFKA__LINGER_MS": str(linger_ms)})
    metrics = Metrics()
    queue = TickQueue(1000, metrics)
    data_dir = tmp_path / "data"
    (data_dir / ".cryptostream").mkdir(parents=True)
    return Producer(config.kafka, Topic(config.kafka), queue, metrics, data_dir), queue


async def test_the_first_batch_and_one_after_a_quiet_spell_go_at_once(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    producer, queue = producer_with(make_config, tmp_path, linger_ms=600)
    queue.put(tick(0))
    # Lingering would take 0.6 s: the first batch has no earlier one to keep apart from.
    first = await asyncio.wait_for(producer._next_batch(), 0.4)
    assert [t.price_usd for t in first] == ["0.5"]
    await asyncio.sleep(0.7)  # longer than the linger since that batch
    queue.put(tick(1))
    later = await asyncio.wait_for(producer._next_batch(), 0.4)
    assert [t.price_usd for t in later] == ["1.5"]


async def test_ticks_soon_after_a_batch_wait_for_the_linger_and_go_together(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    producer, queue = producer_with(make_config, tmp_path, linger_ms=1500)
    queue.put(tick(0))
    await asyncio.wait_for(producer._next_batch(), 1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    queue.put(tick(1))
    task = asyncio.create_task(producer._next_batch())
    await asyncio.sleep(0.3)
    assert not task.done(), "a tick right after a batch went without lingering"
    queue.put(tick(2))
    batch = await asyncio.wait_for(task, 5)
    assert [t.price_usd for t in batch] == ["1.5", "2.5"]
    # It waited out the linger counted from the previous batch (1.5 s), not more.
    assert loop.time() - started < 1.5 + 1.0


async def test_no_linger_takes_what_is_queued_at_once(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    producer, queue = producer_with(make_config, tmp_path, linger_ms=0)
    for n in range(2):
        queue.put(tick(n))
        batch = await asyncio.wait_for(producer._next_batch(), 0.4)
        assert [t.price_usd for t in batch] == [f"{n}.5"]
