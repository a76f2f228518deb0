"""The service process dies or freezes at any moment; the CSV files stay exact.

Guarantee 1 (exactly-once into every CSV file) under SIGKILL, and a consumer
frozen past ``max.poll.interval.ms`` that must come back by itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port, unique, wait_until
from tests.faults.harness import (
    ServiceProcess,
    assert_all_files_exact,
    audit,
    end_offsets,
    file_size,
    read_topic,
    row_count,
    service_env,
    sink_state,
    state_offsets,
)
from tests.support.fake_coincap import FakeCoinCap, Fault

pytestmark = pytest.mark.faults

KILLS = 50
TICKS = 100_000
RATE = 2500  # demo ticks per second


async def drain(svc: ServiceProcess, bootstrap: str, topic: str, data_dir: Path) -> int:
    """One last run that makes no new ticks: wait until the sink holds the whole topic,
    then stop it orderly. Returns the exit code."""
    # A demo rate this low makes its first tick after ~28 h: this run only consumes.
    await svc.start({"CRYPTOSTREAM_DEMO__RATE": "0.00001"})
    await svc.wait_event("service_started")
    ends = await end_offsets(bootstrap, topic)
    await wait_until(
        lambda: state_offsets(data_dir) == ends or not svc.running,
        timeout=90,
        what=f"the sink to reach the topic's end {ends}",
    )
    assert svc.running, svc.tail()
    return await svc.stop()


async def metric(port: int, name: str) -> float:
    """One unlabelled sample from the service's /metrics."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.timeout(900)
async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    fault_kafka, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CRYPTOSTREAM_FAULT_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    bootstrap = fault_kafka.bootstrap_servers
    topic, data_dir = unique("kill"), tmp_path / "data"
    csv_path = data_dir / "crypto_data.csv"
    svc = ServiceProcess(
        service_env(
            bootstrap=bootstrap,
            topic=topic,
            group=unique("kill-group"),
            data_dir=data_dir,
            extra={"CRYPTOSTREAM_DEMO__RATE": str(RATE)},
        ),
        tmp_path,
    )
    kills = while_writing = tails_seen = 0
    last_tail: tuple[int, int] | None = None
    try:
        produced = 0
        while kills < KILLS or produced < TICKS:
            assert kills < 4 * KILLS, f"only {produced} ticks after {kills} kills"
            await svc.start()
            if rng.random() < 0.3:
                # Any moment: start-up, recovery, joining the group, first publishes.
                await asyncio.sleep(rng.uniform(0.05, 2.5))
            else:
                # While the consumer writes: mid-append, mid-fsync, mid-rename, mid-commit.
                before = file_size(csv_path)
                await wait_until(
                    lambda b=before: file_size(csv_path) > b or not svc.running,
                    timeout=60,
                    what="the consumer to write",
                )
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                while_writing += 1
            assert svc.running, f"the service exited by itself:\n{svc.tail()}"
            await svc.kill()
            kills += 1
            # Was the transaction cut in the middle? (rows appended, state not yet replaced)
            recorded = sink_state(data_dir).get("files", {}).get("crypto_data.csv", 0)
            tail = (recorded, file_size(csv_path))
            if tail[1] > tail[0] and tail != last_tail:
                tails_seen += 1
            last_tail = tail
            if kills % 10 == 0 or kills >= KILLS:
                produced = sum((await end_offsets(bootstrap, topic)).values())

        assert await drain(svc, bootstrap, topic, data_dir) == 0, svc.tail()
    finally:
        await svc.ensure_stopped()

    content = await read_topic(bootstrap, topic)
    figures = audit(f"sigkill x{kills}", data_dir, content)
    figures.notes.update(
        seed=seed,
        messages_on_topic=len(content.ticks),
        kills_while_writing=while_writing,
        kills_mid_transaction=tails_seen,
        tails_cut_on_start=len(svc.events("sink_uncommitted_tail_removed")),
        candle_rebuilds_on_start=len(svc.events("candles_rebuilt")),
    )
    figures.report()
    assert kills >= KILLS and figures.produced >= TICKS
    assert_all_files_exact(figures)
    assert not content.others, "only ticks were published"
    # The kills did land inside transactions, not only between them.
    assert tails_seen > 0, figures.line()


@pytest.mark.timeout(240)
async def test_consumer_idle_and_frozen_past_max_poll_interval_consumes_new_ticks(
    fault_kafka, tmp_path: Path
) -> None:
    poll_limit = 4.0  # kafka.max_poll_interval, seconds
    bootstrap = fault_kafka.bootstrap_servers
    topic, data_dir = unique("idle"), tmp_path / "data"
    port = free_port()
    csv_path = data_dir / "crypto_data.csv"
    async with FakeCoinCap(api_key="idle-test-key-3f9a7c21") as fake:
        svc = ServiceProcess(
            service_env(
                bootstrap=bootstrap,
                topic=topic,
                group=unique("idle-group"),
                data_dir=data_dir,
                extra={
                    "CRYPTOSTREAM_SOURCE__NAME": "coincap",
                    "COINCAP_API_KEY": "idle-test-key-3f9a7c21",
                    "CRYPTOSTREAM_COINCAP__BASE_URL": fake.base_url,
                    "CRYPTOSTREAM_COINCAP__MAX_BACKOFF": "0.2",
                    "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "0.2",
                    "CRYPTOSTREAM_KAFKA__MAX_POLL_INTERVAL": str(poll_limit),
                    "CRYPTOSTREAM_WEB__PORT": str(port),
                },
            ),
            tmp_path,
        )
        try:
            await svc.start()
            await wait_until(lambda: row_count(csv_path) >= 12, 60, "first rows")

            # 1. Idle: the API answers errors, nothing new reaches the topic for
            #    longer than max.poll.interval; the consumer keeps polling an idle topic.
            polls = fake.calls("/v3/assets")
            fake.inject(Fault.status(503, times=None))
            # A request that got the fault means every earlier poll was answered and
            # its ticks counted: the fetched total is final; wait until all are rows.
            await fake.wait_for_calls(polls + 1, "/v3/assets", timeout=30)
            fetched = await metric(port, "cryptostream_ticks_fetched_total")
            await wait_until(lambda: row_count(csv_path) >= fetched, 30, "the last polls' rows")
            idle_from = row_count(csv_path)
            assert idle_from == fetched
            await asyncio.sleep(2 * poll_limit)
            assert row_count(csv_path) == idle_from and svc.running
            fake.clear_faults()
            await wait_until(
                lambda: row_count(csv_path) >= idle_from + 12, 30, "new ticks after idling"
            )

            # 2. Frozen: SIGSTOP past max.poll.interval + session timeout; the broker
            #    expels the member. After SIGCONT it must rejoin and consume by itself.
            svc.signal(signal.SIGSTOP)
            await asyncio.sleep(poll_limit + 2 + 3)
            frozen_at = row_count(csv_path)
            svc.signal(signal.SIGCONT)
            await wait_until(
                lambda: row_count(csv_path) >= frozen_at + 24, 60, "new ticks after the freeze"
            )
            assert svc.running
            assert await svc.stop() == 0, svc.tail()
        finally:
            await svc.ensure_stopped()

    content = await read_topic(bootstrap, topic)
    figures = audit("idle+frozen consumer", data_dir, content)
    figures.notes.update(
        assignments=len(svc.events("partitions_assigned")),
        task_failures=len(svc.events("task_failed")),
    )
    figures.report()
    assert_all_files_exact(figures)
    assert figures.notes["task_failures"] == 0
