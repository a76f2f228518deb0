"""The sources through the real pipeline: local fakes → fetcher → real Kafka → CSV.

Failover is driven by faults in the fakes (an API answering 503, a silent price
stream) and checked end to end: which source produced each tick (the Kafka
message says), that the CSV holds every tick on the topic exactly once, and that
every answer of the active source reached the CSV.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from cryptostream.metrics import Metrics
from tests.conftest import API_KEY, ConfigFactory, wait_until
from tests.support.fake_binance import FakeBinance
from tests.support.fake_coincap import FakeCoinCap, Fault
from tests.support.fake_coincap_ws import FakeCoinCapWs
from tests.support.fake_kraken import FakeKraken
from tests.support.topic import csv_rows, read_topic, tick_key

pytestmark = pytest.mark.integration


@pytest.fixture
async def fake_binance() -> AsyncIterator[FakeBinance]:
    async with FakeBinance() as fake:
        yield fake


@pytest.fixture
async def fake_kraken() -> AsyncIterator[FakeKraken]:
    async with FakeKraken() as fake:
        yield fake


@pytest.fixture
async def fake_ws() -> AsyncIterator[FakeCoinCapWs]:
    async with FakeCoinCapWs(api_key=API_KEY, interval=0.1) as fake:
        yield fake


def row_count(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def switches(metrics: Metrics, frm: str, to: str) -> float:
    value = metrics.registry.get_sample_value(
        "cryptostream_source_switches_total", {"from": frm, "to": to}
    )
    return value or 0.0


def runs(messages: list[dict[str, Any]], asset: str) -> list[str]:
    """Run-length sequence of the sources of one asset's messages, in topic order
    (one asset is one key, so one partition: the topic keeps their order)."""
    seq: list[str] = []
    for m in messages:
        if m["id"] == asset and (not seq or seq[-1] != m["source"]):
            seq.append(str(m["source"]))
    return seq


def exchange_env(binance: FakeBinance, kraken: FakeKraken) -> dict[str, str]:
    return {
        "CRYPTOSTREAM_BINANCE__BASE_URL": binance.base_url,
        "CRYPTOSTREAM_BINANCE__TIMEOUT": "2",
        "CRYPTOSTREAM_BINANCE__MAX_BACKOFF": "0.2",
        "CRYPTOSTREAM_KRAKEN__BASE_URL": kraken.base_url,
        "CRYPTOSTREAM_KRAKEN__TIMEOUT": "2",
        "CRYPTOSTREAM_KRAKEN__MAX_BACKOFF": "0.2",
    }


async def test_binance_down_fails_over_to_kraken_and_back_without_dups_or_gaps(
    make_config: ConfigFactory,
    fake_binance: FakeBinance,
    fake_kraken: FakeKraken,
    kafka_bootstrap: str,
    run_service,
) -> None:
    config = make_config(
        bootstrap=kafka_bootstrap,
        env={
            "CRYPTOSTREAM_SOURCE__NAME": "binance",
            "CRYPTOSTREAM_SOURCE__FALLBACKS": "kraken",
            "CRYPTOSTREAM_SOURCE__FAILOVER_AFTER": "1",
            **exchange_env(fake_binance, fake_kraken),
        },
    )
    running = await run_service(config)
    service = running.service
    metrics = service.metrics
    csv_path = running.data_dir / "crypto_data.csv"

    await wait_until(lambda: row_count(csv_path) >= 10, what="rows from binance")
    fake_binance.inject(Fault.status(503, times=None))  # Binance goes down
    await wait_until(lambda: switches(metrics, "binance", "kraken") == 1, what="failover")
    await wait_until(lambda: fake_kraken.answered(200) >= 3, what="polls of kraken")
    fake_binance.clear_faults()  # Binance is back
    await wait_until(lambda: switches(metrics, "kraken", "binance") == 1, what="switch back")
    back = fake_binance.answered(200)
    await wait_until(lambda: fake_binance.answered(200) >= back + 3, what="binance again")
    assert await running.stop() == 0

    messages = await read_topic(kafka_bootstrap, config.kafka.topic)
    _, rows = csv_rows(csv_path)
    # The CSV holds every tick on the topic exactly once, and every tick fetched.
    assert sorted(tick_key(r) for r in rows) == sorted(tick_key(m) for m in messages)
    assert len({tick_key(r) for r in rows}) == len(rows)
    assert len(rows) == metrics.ticks_fetched._value.get()
    # One source at a time, in the order of events; the tick says which.
    for asset in ("bitcoin", "ethereum", "xrp", "solana"):
        assert runs(messages, asset) == ["binance", "kraken", "binance"], asset
    assert runs(messages, "binance-coin") == ["binance"]  # not on Kraken: a pause only
    assert runs(messages, "tether") == ["kraken"]  # not on Binance
    # No gaps: every answer of the source in use is in the CSV; at most one poll in
    # flight at a switch back (kraken's) or at the stop (binance's) is abandoned whole.
    by_source: dict[str, int] = {}
    for m in messages:
        by_source[str(m["source"])] = by_source.get(str(m["source"]), 0) + 1
    assert 0 <= 5 * fake_binance.answered(200) - by_source["binance"] <= 5
    assert 0 <= 5 * fake_kraken.answered(200) - by_source["kraken"] <= 5
    # Binance's own answers are what the CSV says (exact text, closeTime as time).
    btc = [m for m in messages if m["id"] == "bitcoin"]
    assert btc[0]["priceUsd"] == "86466.98000000" and btc[0]["changePercent24Hr"] == "-2.728"
    assert next(m for m in btc if m["source"] == "kraken")["changePercent24Hr"] is None
    assert (
        metrics.registry.get_sample_value("cryptostream_source_active", {"source": "binance"}) == 1
    )


async def test_silent_price_stream_fails_over_to_binance_and_back(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    fake_ws: FakeCoinCapWs,
    fake_binance: FakeBinance,
    fake_kraken: FakeKraken,
    kafka_bootstrap: str,
    run_service,
) -> None:
    config = make_config(
        base_url=fake_coincap.base_url,
        bootstrap=kafka_bootstrap,
        env={
            "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
            "CRYPTOSTREAM_SOURCE__FALLBACKS": "binance",
            "CRYPTOSTREAM_SOURCE__FAILOVER_AFTER": "1",
            "CRYPTOSTREAM_COINCAP__WS_URL": fake_ws.ws_url,
            "CRYPTOSTREAM_COINCAP__WS_SILENCE_TIMEOUT": "0.5",
            **exchange_env(fake_binance, fake_kraken),
        },
    )
    running = await run_service(config)
    metrics = running.service.metrics
    csv_path = running.data_dir / "crypto_data.csv"

    await wait_until(lambda: row_count(csv_path) >= 12, what="rows from the stream")
    fake_ws.pause()  # still connected, but no frame comes any more
    await wait_until(lambda: switches(metrics, "coincap-ws", "binance") == 1, what="failover")
    await wait_until(lambda: fake_binance.answered(200) >= 3, what="polls of binance")
    fake_ws.resume()
    await wait_until(lambda: switches(metrics, "binance", "coincap-ws") == 1, what="back")
    n = row_count(csv_path)
    await wait_until(lambda: row_count(csv_path) >= n + 6, what="stream rows again")
    sent_before_stop = list(fake_ws.sent)
    assert await running.stop() == 0

    messages = await read_topic(kafka_bootstrap, config.kafka.topic)
    _, rows = csv_rows(csv_path)
    assert sorted(tick_key(r) for r in rows) == sorted(tick_key(m) for m in messages)
    assert len({tick_key(r) for r in rows}) == len(rows)
    assert len(rows) == metrics.ticks_fetched._value.get()
    assert runs(messages, "bitcoin") == ["coincap-ws", "binance", "coincap-ws"]
    silent = metrics.registry.get_sample_value(
        "cryptostream_ws_reconnects_total", {"reason": "silent"}
    )
    assert silent is not None and silent >= 1
    # The recorded frames reached the CSV with their exact digits, in order.
    btc = [r["priceUsd"] for r in rows if r["id"] == "bitcoin"]
    assert btc[:3] == ["86466.98", "86467.12", "86467.40"]
    # No frame lost: per asset, the stream's ticks on the topic are the prices the
    # server sent, in order, all of them but at most one still in flight at the stop.
    for asset in ("bitcoin", "ethereum", "xrp", "solana", "tether", "binance-coin"):
        got = [m["priceUsd"] for m in messages if m["id"] == asset and m["source"] == "coincap-ws"]
        sent = [
            json.loads(text)[asset] for _, text in sent_before_stop if asset in json.loads(text)
        ]
        assert got == sent[: len(got)], asset
        assert len(got) >= len(sent) - 1, asset


async def test_demo_ticks_are_marked_as_demo_everywhere(
    make_config: ConfigFactory, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(
        bootstrap=kafka_bootstrap,
        env={"CRYPTOSTREAM_SOURCE__NAME": "demo", "CRYPTOSTREAM_DEMO__RATE": "2000"},
    )
    with structlog.testing.capture_logs() as logs:
        running = await run_service(config)
        csv_path = running.data_dir / "crypto_data.csv"
        await wait_until(lambda: row_count(csv_path) >= 3000, what="demo rows")
        assert await running.stop() == 0
    warning = next(e for e in logs if e["event"] == "demo_source_active")
    assert warning["log_level"] == "warning" and "not real" in warning["note"]
    messages = await read_topic(kafka_bootstrap, config.kafka.topic)
    assert {m["source"] for m in messages} == {"demo"}
    _, rows = csv_rows(csv_path)
    assert all(r["name"].endswith(" [demo]") for r in rows)
    assert sorted(tick_key(r) for r in rows) == sorted(tick_key(m) for m in messages)
    assert len({tick_key(r) for r in rows}) == len(rows)
    assert len(rows) == running.service.metrics.ticks_fetched._value.get()


# -- CoinCap credits: the budget, CoinCap's own "spent" answer, the reset -------------------


class SimClock:
    """The billing period's clock, moved by the test (the rest of the service keeps real
    time: polls, failover, Kafka)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MARCH_10 = 1741608000.0  # 2025-03-10T12:00:00Z
APRIL_1 = 1743465600.0  # 2025-04-01T00:00:00Z


def coincap_then_binance(
    fake: FakeCoinCap, binance: FakeBinance, kraken: FakeKraken, **env: str
) -> dict[str, str]:
    return {
        "CRYPTOSTREAM_COINCAP__BASE_URL": fake.base_url,
        "CRYPTOSTREAM_SOURCE__NAME": "coincap",
        "CRYPTOSTREAM_SOURCE__FALLBACKS": "binance",
        # Long: a spent allowance must hand over at once, not after this.
        "CRYPTOSTREAM_SOURCE__FAILOVER_AFTER": "60",
        **exchange_env(binance, kraken),
        **env,
    }


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def test_spent_budget_hands_over_at_once_and_coincap_returns_at_the_reset(
    make_config: ConfigFactory,
    fake_binance: FakeBinance,
    fake_kraken: FakeKraken,
    kafka_bootstrap: str,
    run_service,
) -> None:
    async with FakeCoinCap(api_key=API_KEY) as fake:
        config = make_config(
            bootstrap=kafka_bootstrap,
            env=coincap_then_binance(
                fake, fake_binance, fake_kraken, CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS="20"
            ),
        )
        with structlog.testing.capture_logs() as logs:
            running = await run_service(config)
            service = running.service
            clock = SimClock(MARCH_10)
            service.credits.clock = clock  # from the next poll on: mid-March
            metrics = service.metrics
            await wait_until(lambda: switches(metrics, "coincap", "binance") == 1, what="handover")
            served_in_march = fake.credits_served
            await wait_until(lambda: fake_binance.answered(200) >= 3, what="binance polls")
            # No request to CoinCap while its budget is spent.
            assert fake.credits_served == served_in_march
            march = service.credits.ledger.current()
            assert 20 - 2 < march.credits <= 20, "spent to the budget, never over"
            assert gauge(metrics, "cryptostream_coincap_exhausted") == 1
            assert gauge(metrics, "cryptostream_coincap_credits_used") == march.credits
            assert gauge(metrics, "cryptostream_coincap_credits_budget") == 20
            assert gauge(metrics, "cryptostream_coincap_credits_projected") == 20
            clock.now = APRIL_1 + 60  # the reset
            await wait_until(lambda: switches(metrics, "binance", "coincap") == 1, what="return")
            assert gauge(metrics, "cryptostream_coincap_exhausted") == 0
            assert await running.stop() == 0
    plan = next(e for e in logs if e["event"] == "coincap_credit_plan")
    assert plan["log_level"] == "warning" and plan["budget"] == 20
    assert plan["then"].startswith("hand over to binance")
    switch = next(e for e in logs if e["event"] == "source_switched")
    assert switch["reason"] == "allowance_spent"
    messages = await read_topic(kafka_bootstrap, config.kafka.topic)
    assert runs(messages, "bitcoin") == ["coincap", "binance", "coincap"]
    # Every credit CoinCap billed is in the ledger: this period's and the last one's.
    periods = service.credits.ledger.periods()
    assert sum(p.credits for p in periods.values()) == fake.credits_served


async def test_coincaps_spent_answer_hands_over_at_once_and_is_probed_hourly(
    make_config: ConfigFactory,
    fake_binance: FakeBinance,
    fake_kraken: FakeKraken,
    kafka_bootstrap: str,
    run_service,
) -> None:
    async with FakeCoinCap(api_key=API_KEY) as fake:
        config = make_config(
            bootstrap=kafka_bootstrap,
            env=coincap_then_binance(fake, fake_binance, fake_kraken),
        )
        running = await run_service(config)
        service = running.service
        clock = SimClock(MARCH_10)
        service.credits.clock = clock
        metrics = service.metrics
        await wait_until(lambda: fake.answered(200, "/v3/assets") >= 3, what="coincap polls")
        fake.spend_allowance()
        await wait_until(lambda: switches(metrics, "coincap", "binance") == 1, what="handover")
        refused = fake.answered(429)
        assert refused == 1, "one spent answer is enough: no retry, no hammering"
        await wait_until(lambda: fake_binance.answered(200) >= 5, what="binance polls")
        assert fake.answered(429) == refused
        assert gauge(metrics, "cryptostream_coincap_exhausted") == 1
        clock.now += 3601  # an hour later: one probe, still spent
        await wait_until(lambda: fake.answered(429) == refused + 1, what="the probe")
        await wait_until(lambda: fake_binance.answered(200) >= 8, what="binance polls")
        assert fake.answered(429) == refused + 1
        fake.renew_allowance()  # CoinCap serves again (the reset on its side)
        clock.now += 3601
        await wait_until(lambda: switches(metrics, "binance", "coincap") == 1, what="return")
        assert await running.stop() == 0
    assert gauge(metrics, "cryptostream_coincap_exhausted") == 0


async def test_an_asset_coincap_does_not_know_is_said_once_and_in_a_metric(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(
        base_url=fake_coincap.base_url,
        bootstrap=kafka_bootstrap,
        env={"CRYPTOSTREAM_SOURCE__ASSETS": "bitcoin,nosuchcoin"},
    )
    with structlog.testing.capture_logs() as logs:
        running = await run_service(config)
        await wait_until(lambda: fake_coincap.answered(200) >= 5, what="polls")
        assert await running.stop() == 0
    said = [e for e in logs if e["event"] == "assets_unknown"]
    assert len(said) == 1 and said[0]["assets"] == ["nosuchcoin"]
    sample = running.service.metrics.registry.get_sample_value
    labels = {"source": "coincap"}
    assert sample("cryptostream_assets_unknown", {**labels, "asset": "nosuchcoin"}) == 1
    assert sample("cryptostream_assets_unknown", {**labels, "asset": "bitcoin"}) == 0
