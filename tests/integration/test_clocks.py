"""Clocks are inputs: a source's clock hours ahead of this machine's, through the real
pipeline (fake CoinCap on loopback → real Kafka → the real sink)."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
import structlog

from tests.conftest import ConfigFactory, wait_until
from tests.support.fake_coincap import FakeCoinCap
from tests.support.topic import csv_rows

pytestmark = pytest.mark.integration

AHEAD = 3 * 3600  # a laptop's clock 3 h behind after sleep: CoinCap's is 3 h ahead of it


def row_count(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


async def test_ticks_hours_ahead_of_this_clock_are_written_and_the_skew_said_once(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    fake_coincap.clock = lambda: time.time_ns() // 1_000_000 + AHEAD * 1000
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    with structlog.testing.capture_logs() as logs:
        running = await run_service(config)
        csv_path = running.data_dir / "crypto_data.csv"
        await wait_until(lambda: row_count(csv_path) >= 30, what="five polls in the CSV")
        base = f"http://127.0.0.1:{running.service.web.port}"
        async with aiohttp.ClientSession() as http, http.get(f"{base}/api/summary") as r:
            summary = await r.json()
        assert await running.stop() == 0

    # The ticks are data: every one in the CSV, with CoinCap's time; none refused.
    _, rows = csv_rows(csv_path)
    fetched = running.service.metrics.ticks_fetched._value.get()
    assert len(rows) == fetched >= 30
    now = time.time()
    assert all(now + AHEAD - 120 < float(r["timestamp"]) < now + AHEAD + 5 for r in rows)
    assert not (running.data_dir / "dead_letters.jsonl").exists()
    assert not [e for e in logs if e["event"] == "record_invalid"]
    # Said once, with both witnesses of CoinCap's clock.
    said = [e for e in logs if e["event"] == "clock_skew"]
    assert len(said) == 1, said
    assert said[0]["log_level"] == "warning" and said[0]["source"] == "coincap"
    assert abs(said[0]["skew_s"] - AHEAD) < 30
    assert abs(said[0]["date_header_skew_s"] - AHEAD) < 30
    # A metric, and a note on the dashboard.
    skew = running.service.metrics.registry.get_sample_value(
        "cryptostream_clock_skew_seconds", {"source": "coincap"}
    )
    assert skew is not None and abs(skew - AHEAD) < 30
    assert summary["clock"]["source"] == "coincap"
    assert abs(summary["clock"]["skewSeconds"] - AHEAD) < 30
    assert "3 h 0 min ahead of this machine's" in summary["clock"]["note"]


async def test_clocks_that_agree_say_nothing(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    with structlog.testing.capture_logs() as logs:
        running = await run_service(config)
        csv_path = running.data_dir / "crypto_data.csv"
        await wait_until(lambda: row_count(csv_path) >= 12, what="two polls in the CSV")
        summary = running.service.dashboard.summary() if running.service.dashboard else {}
        assert await running.stop() == 0
    assert not [e for e in logs if e["event"] == "clock_skew"]
    assert summary["clock"] is None
    skew = running.service.metrics.registry.get_sample_value(
        "cryptostream_clock_skew_seconds", {"source": "coincap"}
    )
    assert skew is not None and abs(skew) < 5
