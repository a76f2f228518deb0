"""The consumer's fetches against a real broker: how long the broker may hold one.

aiokafka keeps one fetch in flight per broker and leaves out of it every partition
whose records are still being written; a partition read to its end makes the broker
hold the fetch for its ``max_wait``, and the other partitions' next fetch waits behind
it. Catching up on 1,000,000 ticks over three partitions of unequal length took 16.9 s
with aiokafka's default of 0.5 s and 10.0 s with 0.1 s (see docs/performance.md):
``kafka.fetch_max_wait`` is what every fetch must ask for.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest

from tests.conftest import ConfigFactory, wait_until
from tests.support.fake_coincap import FakeCoinCap
from tests.support.topic import csv_rows

pytestmark = pytest.mark.integration


async def test_every_fetch_asks_the_broker_to_wait_no_longer_than_fetch_max_wait(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[int] = []
    send = AIOKafkaClient.send

    async def spy(self: AIOKafkaClient, node_id: int, request: Any, **kw: Any) -> Any:
        # Observe what goes to the broker; the request itself is sent unchanged.
        if isinstance(request, FetchRequest):
            waits.append(request._max_wait_ms)
        return await send(self, node_id, request, **kw)

    monkeypatch.setattr(AIOKafkaClient, "send", spy)
    config = make_config(
        base_url=fake_coincap.base_url,
        bootstrap=kafka_bootstrap,
        env={"CRYPTOSTREAM_KAFKA__PARTITIONS": "3", "CRYPTOSTREAM_KAFKA__FETCH_MAX_WAIT": "0.04"},
    )
    running = await run_service(config)
    csv_path = running.data_dir / "crypto_data.csv"

    def rows() -> int:
        return len(csv_rows(csv_path)[1]) if csv_path.exists() else 0

    await wait_until(lambda: rows() >= 12, what="two polls in the CSV")
    assert await running.stop() == 0
    assert len(waits) >= 2
    assert set(waits) == {40}
