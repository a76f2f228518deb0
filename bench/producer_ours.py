"""Contender: the service's own producer (``acks=all``, idempotent) publishing N ticks.

The ticks are read from the payload file and put in the service's queue
before the clock starts; the clock then runs from before the Kafka client is
created until the producer returns, i.e. until Kafka acknowledged every tick.
Building each message (``Tick.to_json()``) is part of the measured work, as in
the service.

    CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS=... CRYPTOSTREAM_KAFKA__TOPIC=... \\
    python -m bench.producer_ours --config EMPTY.toml --payloads FILE
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from bench.common import now, report
from bench.payloads import read_payloads


async def publish(args: argparse.Namespace) -> dict[str, Any]:
    from cryptostream.config import load_config
    from cryptostream.metrics import Metrics
    from cryptostream.producer import Producer
    from cryptostream.queue import TickQueue
    from cryptostream.tick import tick_from_json
    from cryptostream.topic import Topic

    config = load_config(args.config, os.environ)
    metrics = Metrics()
    ticks = [tick_from_json(value) for _, value in read_payloads(args.payloads)]
    queue = TickQueue(len(ticks), metrics)
    for tick in ticks:
        queue.put(tick)
    del ticks
    topic = Topic(config.kafka)
    await topic.ensure()  # created before the clock starts, as for kcat
    producer = Producer(config.kafka, topic, queue, metrics, config.storage.data_dir)
    producer.close()  # publish what is queued, then return
    start = now()
    await producer.run()
    return {"ticks": producer.published, "seconds": now() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="(empty) config file")
    parser.add_argument("--payloads", type=Path, required=True)
    args = parser.parse_args()
    from cryptostream import logs

    logs.configure("warning", "json", stream=sys.stderr)
    report(asyncio.run(publish(args)))


if __name__ == "__main__":
    main()
