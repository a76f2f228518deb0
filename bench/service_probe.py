"""The real service, plus a record of every row's end-to-end latency.

This is ``cryptostream run`` (same configuration loading, logging and
:class:`~cryptostream.service.Service`) with one addition: an observer on the
sink — the hook the dashboard uses — that appends, for every row of every
durable batch, the tick's observation time and ``sink.last_write - timestamp``.
``last_write`` is the wall-clock time the sink took right after the batch's
state file was fsynced and renamed into place (the moment the rows count as
written), and ``timestamp`` is when the source observed the price (for the demo
source: ``time.time()`` when it made the tick). That difference is exactly
what the service's ``cryptostream_end_to_end_latency_seconds`` histogram
observes, per row instead of in buckets. The records go to a binary file of
float64 pairs through a small buffer, so the probe holds no growing state.

    python -m bench.service_probe --latencies FILE     # configuration from the environment
"""

from __future__ import annotations

import argparse
import asyncio
import os
from array import array
from pathlib import Path
from typing import BinaryIO


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latencies", type=Path, required=True, help="output file")
    args = parser.parse_args()

    from cryptostream import logs
    from cryptostream.config import load_config
    from cryptostream.service import Service
    from cryptostream.tick import Tick

    config = load_config(None, os.environ)
    logs.configure(config.log.level, config.log.format, secrets=config.secrets())

    async def run(out: BinaryIO) -> int:
        service = Service(config)
        sink = service.sink

        def record(ticks: list[Tick]) -> None:
            done = sink.last_write
            pairs = array("d")
            for tick in ticks:
                pairs.append(tick.timestamp)
                pairs.append(done - tick.timestamp)
            pairs.tofile(out)

        sink.subscribe(record)
        return await service.run()

    with args.latencies.open("wb") as out:
        try:
            return asyncio.run(run(out))
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
