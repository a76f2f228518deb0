"""Guarantee 3: the producer never counts a tick Kafka did not acknowledge, and never hangs.

A frozen broker (SIGSTOP: connections stay open, nothing answers) is the hang
that deadlines exist for. And the spool of unpublished ticks resumes where a
crash left it instead of publishing everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from cryptostream.tick import Tick
from tests.conftest import ConfigFactory, unique, wait_until
from tests.faults.conftest import start_cluster
from tests.faults.harness import assert_all_files_exact, audit, read_topic, row_count

pytestmark = pytest.mark.faults


def counter(running: Any, name: str, labels: dict[str, str] | None = None) -> int:
    registry = running.service.metrics.registry
    return int(registry.get_sample_value(f"cryptostream_{name}_total", labels or {}) or 0)


def spooled(data_dir: Path) -> int:
    try:
        return (data_dir / ".cryptostream" / "unpublished.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(300)
async def test_frozen_broker_no_hang_no_false_ack_nothing_lost(
    make_config: ConfigFactory, run_service
) -> None:
    cluster = await asyncio.to_thread(start_cluster, 1)
    pid = cluster.pid_of(1)
    try:
        env = {
            "CRYPTOSTREAM_SOURCE__NAME": "demo",
            "CRYPTOSTREAM_DEMO__RATE": "200",
            "CRYPTOSTREAM_KAFKA__SEND_TIMEOUT": "3",
            "CRYPTOSTREAM_KAFKA__REQUEST_TIMEOUT": "3",
            "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "6",
            "CRYPTOSTREAM_WEB__DASHBOARD": "false",
            "CRYPTOSTREAM_SHUTDOWN__TIMEOUT": "10",
        }
        config = make_config(bootstrap=cluster.bootstrap_servers, env=env)
        data_dir = config.storage.data_dir
        csv_path = data_dir / "crypto_data.csv"
        first = await run_service(config)
        await wait_until(lambda: row_count(csv_path) >= 400, 60, "rows before the freeze")

        os.kill(pid, signal.SIGSTOP)
        # Sends time out and are retried; nothing waits forever, polling goes on.
        await wait_until(
            lambda: (
                counter(first, "publish_errors", {"kind": "timeout"}) >= 1
                and not first.service.readiness()[0]
            ),
            30,
            "a publish timeout while the broker is frozen",
        )
        fetched_before_stop = counter(first, "ticks_fetched")
        await wait_until(
            lambda: counter(first, "ticks_fetched") > fetched_before_stop + 200,
            30,
            "the fetcher to go on",
        )
        # An orderly stop with the broker frozen must end (deadlines), spooling the rest.
        loop = asyncio.get_running_loop()
        began = loop.time()
        code = await first.stop(timeout=60)
        stop_took = loop.time() - began
        fetched, acked = counter(first, "ticks_fetched"), counter(first, "ticks_published")
        # Exactly the unacknowledged ticks wait on disk: none was counted as published
        # without Kafka's acknowledgement, none vanished.
        assert spooled(data_dir) == fetched - acked > 0

        os.kill(pid, signal.SIGCONT)
        second = await run_service(config)
        await wait_until(lambda: spooled(data_dir) == 0, 60, "the spool to be published")
        await wait_until(
            lambda: row_count(csv_path) >= fetched + 200, 60, "the spool and new ticks in the CSV"
        )
        assert await second.stop(timeout=60) == 0
        content = await read_topic(cluster.bootstrap_servers, config.kafka.topic)
        figures = audit("frozen broker", data_dir, content)
        total_fetched = fetched + counter(second, "ticks_fetched")
        figures.notes.update(
            fetched=total_fetched,
            acknowledged_before_freeze_stop=acked,
            spooled=fetched - acked,
            stop_exit_code=code,
            stop_took_s=round(stop_took, 1),
            copies_on_topic=len(content.ticks) - figures.produced,
        )
        figures.report()
        assert_all_files_exact(figures)
        assert figures.produced == total_fetched
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.stop)


def demo_ticks(n: int, start: float) -> list[Tick]:
    return [
        Tick(start + i * 0.001, "bitcoin", "BTC", "Bitcoin", f"{100 + i}.5", "-1", "100.5", None)
        for i in range(n)
    ]


@pytest.mark.parametrize("progress_matches", [True, False], ids=["resumed", "stale-progress"])
async def test_spool_publishing_resumes_after_a_crash(
    make_config: ConfigFactory, run_service, fault_kafka, progress_matches: bool
) -> None:
    config = make_config(
        bootstrap=fault_kafka.bootstrap_servers,
        topic=unique("spool"),
        env={
            "CRYPTOSTREAM_SOURCE__NAME": "demo",
            "CRYPTOSTREAM_DEMO__RATE": "0.00001",  # no new ticks: only the spool
            "CRYPTOSTREAM_WEB__DASHBOARD": "false",
        },
    )
    state = config.storage.data_dir / ".cryptostream"
    state.mkdir(parents=True)
    ticks = demo_ticks(5000, 1_760_000_000.0)
    spool = state / "unpublished.jsonl"
    spool.write_bytes(b"".join(t.to_json() + b"\n" for t in ticks))
    st = spool.stat()
    # As a crash after the first chunk (2000) was acknowledged leaves it.
    identity = [st.st_ino, st.st_size, st.st_mtime_ns + (0 if progress_matches else 1)]
    (state / "unpublished.progress").write_bytes(orjson.dumps({"spool": identity, "done": 2000}))

    running = await run_service(config)
    await wait_until(lambda: not spool.exists(), 60, "the spool to be published")
    assert await running.stop() == 0
    assert not (state / "unpublished.progress").exists()
    content = await read_topic(fault_kafka.bootstrap_servers, config.kafka.topic)
    expected = ticks[2000:] if progress_matches else ticks
    assert len(content.ticks) == len(expected)
    assert content.ticks == [(t.id, repr(t.timestamp), t.price_usd) for t in expected]
