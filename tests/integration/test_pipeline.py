"""The real pipeline: fake CoinCap → fetcher → real Kafka → consumer → CSV."""

from __future__ import annotations

import asyncio
import collections
import socket
from pathlib import Path

import aiohttp
import pytest

from cryptostream.csvrow import COLUMNS
from tests.conftest import ConfigFactory, unique, wait_until
from tests.support.fake_coincap import FakeCoinCap, Fault
from tests.support.topic import csv_rows, read_topic, tick_key

pytestmark = pytest.mark.integration

ASSETS = {"bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana"}


def row_count(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


async def test_ticks_reach_the_csv_exactly_once_and_stop_drains(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    running = await run_service(config)
    csv_path = running.data_dir / "crypto_data.csv"
    await wait_until(lambda: row_count(csv_path) >= 18, what="three polls in the CSV")
    assert await running.stop() == 0

    header, rows = csv_rows(csv_path)
    assert header == list(COLUMNS)
    assert {r["id"] for r in rows} == ASSETS
    messages = await read_topic(kafka_bootstrap, config.kafka.topic)
    # Every tick on the topic is in the CSV once, and nothing else is.
    assert sorted(tick_key(r) for r in rows) == sorted(tick_key(m) for m in messages)
    assert len({tick_key(r) for r in rows}) == len(rows)
    # Every tick the fetcher got was published (drained on stop).
    fetched = running.service.metrics.ticks_fetched._value.get()
    assert len(rows) == fetched
    # Decimals are the exact strings the API sent, never floats.
    btc = [r for r in rows if r["id"] == "bitcoin"]
    assert btc[0]["priceUsd"] == "86466.9872578656434844"
    assert btc[1]["priceUsd"] == "86459.0779056053871826"
    assert all(r["firstValue"] == btc[0]["priceUsd"] for r in btc)
    solana_later = [r for r in rows if r["id"] == "solana"][1]
    assert solana_later["vwap24Hr"] == ""  # null in the API → empty cell
    # The last-values file holds the newest row of each asset.
    _, last = csv_rows(running.data_dir / "crypto_last_values.csv")
    newest = {}
    for r in rows:
        if r["id"] not in newest or float(r["timestamp"]) >= float(newest[r["id"]]["timestamp"]):
            newest[r["id"]] = r
    assert {r["id"]: r for r in last} == newest


async def test_restart_continues_the_same_files_without_duplicates(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service,
    tmp_path,
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    csv_path = config.storage.data_dir / "crypto_data.csv"
    for target in (12, 30):
        running = await run_service(config)
        await wait_until(lambda t=target: row_count(csv_path) >= t, what=f"{target} rows")
        assert await running.stop() == 0
    _, rows = csv_rows(csv_path)
    assert csv_path.read_text().count("timestamp,id,") == 1
    messages = await read_topic(kafka_bootstrap, config.kafka.topic)
    assert sorted(tick_key(r) for r in rows) == sorted(tick_key(m) for m in messages)
    # firstValue survived the restart: one value per asset for the day.
    first = collections.defaultdict(set)
    for r in rows:
        first[r["id"]].add(r["firstValue"])
    assert all(len(v) == 1 for v in first.values()), first


async def test_kafka_unavailable_at_start_then_arriving(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, run_service
) -> None:
    import kafkalocal

    cluster = kafkalocal.KafkaCluster(nodes=1)  # ports are chosen now, broker started later
    config = make_config(base_url=fake_coincap.base_url, bootstrap=cluster.bootstrap_servers)
    running = await run_service(config)
    try:
        metrics = running.service.metrics
        # Polling goes on while Kafka is away; ticks wait in the bounded queue.
        await wait_until(lambda: metrics.ticks_fetched._value.get() >= 24, what="polls")
        assert metrics.ticks_published._value.get() == 0
        assert len(running.service.queue) >= 12
        ready, details = running.service.readiness()
        assert not ready and details["kafka"] == "unreachable"
        await asyncio.to_thread(cluster.start, 180)
        csv_path = running.data_dir / "crypto_data.csv"
        await wait_until(lambda: row_count(csv_path) >= 30, timeout=60, what="rows after Kafka")
        assert running.service.readiness()[0]
        assert await running.stop() == 0
        _, rows = csv_rows(csv_path)
        fetched = running.service.metrics.ticks_fetched._value.get()
        assert len(rows) == fetched, "every tick fetched while Kafka was down is in the CSV"
        assert len({tick_key(r) for r in rows}) == len(rows)
        assert running.service.metrics.queue_dropped._value.get() == 0
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_bad_responses_and_records_lose_nothing_good(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    good = {
        "id": "bitcoin",
        "symbol": "BTC",
        "name": "Bitcoin",
        "priceUsd": "7.25",
        "changePercent24Hr": "-0.5",
        "vwap24Hr": "7",
    }
    fake_coincap.inject(
        Fault.status(429, headers={"Retry-After": "0.3"}),
        Fault.status(502, body="<html>bad gateway</html>", content_type="text/html"),
        Fault.body('{"data": [{"id"'),
        Fault.records(
            [
                good,
                {**good, "id": "ethereum", "priceUsd": "NaN"},
                {**good, "id": "xrp", "symbol": "=1+2", "name": "X\nR,P", "priceUsd": "2"},
            ]
        ),
    )
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    running = await run_service(config)
    csv_path = running.data_dir / "crypto_data.csv"
    await wait_until(lambda: row_count(csv_path) >= 8, what="rows after the faults")
    assert await running.stop() == 0
    _, rows = csv_rows(csv_path)
    first_two = rows[:2]
    assert {(r["id"], r["priceUsd"]) for r in first_two} == {("bitcoin", "7.25"), ("xrp", "2")}
    xrp = next(r for r in first_two if r["id"] == "xrp")
    assert xrp["symbol"] == "'=1+2" and xrp["name"] == "X R,P"
    assert not any(r["priceUsd"] in ("NaN", "") for r in rows)
    m = running.service.metrics.registry
    assert (
        m.get_sample_value("cryptostream_ticks_invalid_total", {"reason": "non_finite_price"}) == 1
    )
    assert m.get_sample_value("cryptostream_api_requests_total", {"outcome": "429"}) == 1


async def test_health_ready_and_metrics_endpoints(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    running = await run_service(config)
    csv_path = running.data_dir / "crypto_data.csv"
    await wait_until(lambda: row_count(csv_path) >= 6, what="first rows")
    base = f"http://127.0.0.1:{running.service.web.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["kafka"] == "ok"
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
    for name in (
        "cryptostream_ticks_fetched_total",
        "cryptostream_ticks_published_total",
        "cryptostream_ticks_written_total",
        "cryptostream_queue_depth",
        "cryptostream_consumer_lag",
        "cryptostream_end_to_end_latency_seconds_bucket",
    ):
        assert name in text
    assert await running.stop() == 0


async def test_a_failing_task_stops_the_service_with_exit_1(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(
            base_url=fake_coincap.base_url,
            bootstrap=kafka_bootstrap,
            env={"CRYPTOSTREAM_WEB__PORT": str(port)},
        )
        running = await run_service(config)
        code = await asyncio.wait_for(running.task, 30)
    assert code == 1
    assert running.service.failed == "web"
    assert running.service.metrics.task_failures.labels("web")._value.get() == 1


async def test_second_signal_forces_exit_and_spools_unpublished_ticks(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service,
    tmp_path: Path,
) -> None:
    import signal

    data_dir = tmp_path / "data"
    topic = unique("spool")
    # Kafka unreachable: ticks pile up in the queue.
    down = make_config(base_url=fake_coincap.base_url, data_dir=data_dir, topic=topic)
    running = await run_service(down)
    await fake_coincap.wait_for_calls(3, timeout=20)
    running.service.handle_signal(signal.SIGTERM)
    running.service.handle_signal(signal.SIGTERM)  # impatient user: force it
    assert await asyncio.wait_for(running.task, 10) == 1
    spooled = running.service.metrics.ticks_fetched._value.get()
    assert spooled >= 12
    assert (data_dir / ".cryptostream/unpublished.jsonl").read_bytes().count(b"\n") == spooled

    # Next start, Kafka is there: the spooled ticks are published first, then deleted.
    up = make_config(
        base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap, data_dir=data_dir, topic=topic
    )
    again = await run_service(up)
    csv_path = data_dir / "crypto_data.csv"
    await wait_until(lambda: row_count(csv_path) >= spooled + 6, what="spooled rows")
    assert await again.stop() == 0
    assert not (data_dir / ".cryptostream/unpublished.jsonl").exists()
    _, rows = csv_rows(csv_path)
    assert len(rows) == spooled + again.service.metrics.ticks_fetched._value.get()
    assert len({tick_key(r) for r in rows}) == len(rows)


# -- the CoinCap credit ledger across SIGTERM, SIGKILL and restarts -------------------------


def ledger_total(data_dir: Path) -> int:
    from cryptostream.credits import Ledger

    return sum(p.credits for p in Ledger(data_dir).periods().values())


async def test_the_ledger_counts_what_coincap_served_and_survives_sigkill(
    fake_coincap: FakeCoinCap, kafka_bootstrap: str, tmp_path: Path
) -> None:
    import os
    import signal
    import sys

    from tests.conftest import API_KEY

    data_dir = tmp_path / "data"
    env = {
        "PATH": os.environ["PATH"],
        "COINCAP_API_KEY": API_KEY,
        "CRYPTOSTREAM_COINCAP__BASE_URL": fake_coincap.base_url,
        "CRYPTOSTREAM_SOURCE__NAME": "coincap",
        "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "0",
        "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "0.2",
        "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CRYPTOSTREAM_KAFKA__TOPIC": unique("ledger-prices"),
        "CRYPTOSTREAM_KAFKA__GROUP_ID": unique("ledger-group"),
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "CRYPTOSTREAM_WEB__PORT": "0",
    }

    async def run_until(polls: int, signum: signal.Signals) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cryptostream",
            "run",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            target = fake_coincap.answered(200, "/v3/assets") + polls
            await wait_until(
                lambda: fake_coincap.answered(200, "/v3/assets") >= target, what="polls"
            )
            proc.send_signal(signum)
            await asyncio.wait_for(proc.wait(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == (0 if signum == signal.SIGTERM else -signal.SIGKILL)

    # An orderly stop writes every credit the fake billed (six assets: 2 a poll).
    await run_until(10, signal.SIGTERM)
    first = fake_coincap.credits_served
    assert first >= 20 and set(fake_coincap.bills) == {2}
    assert ledger_total(data_dir) == first
    # SIGKILL within the minute between two flushes loses that minute, no more:
    # the count is never reset.
    await run_until(10, signal.SIGKILL)
    after_kill = ledger_total(data_dir)
    assert first <= after_kill <= fake_coincap.credits_served
    # And a restart counts on from what was written.
    served_before = fake_coincap.credits_served
    await run_until(5, signal.SIGTERM)
    assert ledger_total(data_dir) == after_kill + fake_coincap.credits_served - served_before
