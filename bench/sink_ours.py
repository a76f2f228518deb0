"""Contender: the service's own consumer and exactly-once CSV sink, fsync on.

The same objects ``cryptostream run`` wires together (``Consumer`` with a fresh
consumer group, ``CsvSink`` with its defaults: fsync per batch, daily files,
candles), configured the way users configure the service: environment
variables over an empty config file. The clock runs from before the Kafka
client is created until the sink's state file records the last offset, i.e.
until the last row is durable under the exactly-once guarantee.

Meanwhile a probe task measures the event loop's stalls (:mod:`bench.lag`) and
a client in the same process asks the service's web server for ``/healthz``
every 20 ms: both report what the sink's file work costs the rest of the
service (heartbeats, fetches, the producer, the web server share that loop).

    CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS=... CRYPTOSTREAM_KAFKA__TOPIC=... \\
    CRYPTOSTREAM_STORAGE__DATA_DIR=... python -m bench.sink_ours --config EMPTY.toml --end N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from bench.common import now, report
from bench.lag import LagProbe, healthz_summary, poll_healthz, probing


async def consume(args: argparse.Namespace) -> dict[str, Any]:
    from cryptostream.config import load_config
    from cryptostream.consumer import Consumer
    from cryptostream.metrics import Metrics
    from cryptostream.sink.csvsink import CsvSink
    from cryptostream.topic import Topic
    from cryptostream.web import WebServer

    config = load_config(args.config, os.environ)
    metrics = Metrics()
    csv_sink = CsvSink(
        config.storage.data_dir,
        config.kafka.topic,
        metrics,
        fsync=config.storage.fsync,
        retention_days=config.storage.retention_days,
        candles=config.storage.candles,
    )
    sink: Any
    try:
        from cryptostream.sink.worker import SinkWorker, tune_interpreter
    except ImportError:  # a --baseline checkout from before the sink had its own thread
        sink = csv_sink
        sink.open()
    else:
        sink = SinkWorker(csv_sink)
        await sink.open()
        tune_interpreter()  # as the service does after opening the sink
    consumer = Consumer(config.kafka, Topic(config.kafka), sink, metrics)
    web_config = msgspec.structs.replace(config.web, host="127.0.0.1", port=0)
    web = WebServer(web_config, metrics, lambda: (True, {}))
    await web.start()
    healthz: list[float] = []
    poller = asyncio.create_task(poll_healthz(web.port or 0, healthz))
    probe: LagProbe
    async with probing() as probe:
        start = now()
        task = asyncio.create_task(consumer.run())
        first_write: float | None = None
        # Offsets start at 0 on the bench's fresh topics: their sum is the rows committed.
        while sum(sink.committed_offsets().values()) < args.end:
            if task.done():
                task.result()  # raises what stopped the consumer
                raise SystemExit("consumer stopped before the end of the topic")
            if first_write is None and sink.last_write:
                first_write = now()
            await asyncio.sleep(0.005)
        done = now()
    poller.cancel()
    await web.stop()
    consumer.close()
    await task
    sink.close()
    return {
        "loop_lag": probe.summary(),
        "healthz": healthz_summary(healthz),
        "rows": consumer.written,
        "seconds": done - start,
        "first_batch_seconds": (first_write or done) - start,
        "offset": sum(sink.committed_offsets().values()),
        "code": str(Path(sys.modules["cryptostream"].__file__ or "").parent),
        # This process's own CPU (every thread, start-up included; a profiler's is not in
        # it): the profile's table holds its samples against it.
        "cpu_user_seconds": (times := os.times()).user,
        "cpu_system_seconds": times.system,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="(empty) config file")
    parser.add_argument(
        "--end", type=int, required=True, help="messages to consume (all partitions)"
    )
    args = parser.parse_args()
    from cryptostream import logs

    logs.configure("warning", "json", stream=sys.stderr)
    report(asyncio.run(consume(args)))


if __name__ == "__main__":
    main()
