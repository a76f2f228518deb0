"""Contender: a consumer written the way the original hobby scripts did it.

One message at a time, ``json.loads``, ``csv.DictWriter.writerow`` per message,
the consumer group's offsets auto-committed in the background. Generous to it:
the CSV file is opened once (not per message) and fsynced once at the end,
where the original never fsynced. It promises nothing: a crash can lose rows
(auto-commit ran ahead) or duplicate them (it lagged behind).

    python -m bench.naive_consumer --bootstrap HOST:PORT --topic T --out FILE --end N
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from bench.common import COLUMNS, fsync_file, now, report


async def consume(args: argparse.Namespace) -> dict[str, Any]:
    start = now()
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=f"naive-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=True,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    rows = 0
    try:
        with args.out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            while True:
                message = await consumer.getone()
                data = json.loads(message.value)
                writer.writerow(data)
                rows += 1
                if rows >= args.end:
                    break
        fsync_file(args.out)
        done = now()
    finally:
        await consumer.stop()
    return {"rows": rows, "seconds": done - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--end", type=int, required=True, help="messages to consume (all partitions)"
    )
    report(asyncio.run(consume(args=parser.parse_args())))


if __name__ == "__main__":
    main()
