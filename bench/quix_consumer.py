"""Contender: Quix Streams draining the topic into its stock ``CSVSink``.

Written the way Quix Streams' documentation shows a sink: an ``Application`` with a
consumer group reading from the earliest offset, a JSON topic, a
``StreamingDataFrame`` that sinks into ``CSVSink``, run until it has seen the
topic's messages. Its CSV is its own format (``key,value,timestamp,topic,
partition,offset``, the value as a JSON cell), written in batches at each
checkpoint; it is at-least-once and never fsyncs (we fsync it once at the end, as
for the naive consumer), so it promises less than the sink it is compared with.

    python -m bench.quix_consumer --bootstrap HOST:PORT --topic T --out FILE --end N
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.common import fsync_file, now, report


def consume(args: argparse.Namespace) -> dict[str, Any]:
    start = now()
    # Imported here: the import itself (confluent-kafka, its own dependencies) is part
    # of the start-up the other contenders pay too.
    from quixstreams import Application
    from quixstreams.sinks.core.csv import CSVSink

    with tempfile.TemporaryDirectory(prefix="quix-state-") as state:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            state_dir=state,
            loglevel=logging.WARNING,
        )
        topic = app.topic(args.topic, value_deserializer="json")
        sdf = app.dataframe(topic)
        sdf.sink(CSVSink(path=str(args.out)))
        app.run(count=args.end, timeout=args.timeout, collect=False)
    fsync_file(args.out)
    done = now()
    with args.out.open("rb") as fh:
        rows = sum(1 for _ in fh) - 1
    return {"rows": rows, "seconds": done - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--end", type=int, required=True, help="messages to consume")
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="give up after this many seconds"
    )
    report(consume(parser.parse_args()))


if __name__ == "__main__":
    main()
