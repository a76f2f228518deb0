"""The CoinCap v3 fake behaves like the API it stands in for (and like its docstring says)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.fake_coincap import (
    FIXTURES_DIR,
    HISTORY_INTERVALS_MS,
    HISTORY_MAX_WINDOW_MS,
    FakeCoinCap,
    Fault,
)

KEY = "s3cret-key-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
IDS = "bitcoin,ethereum,tether,xrp,binance-coin,solana"
REPO_ROOT = Path(__file__).resolve().parent.parent


def fixture(name: str) -> Any:
    return json.loads((FIXTURES_DIR / name).read_text(encoding="utf-8"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeCoinCap]:
    async with FakeCoinCap(api_key=KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, url: str, **params: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, params=params) as resp:
        return resp.status, await resp.json()


# --- lifecycle & auth ------------------------------------------------------------------


async def test_base_url_and_lifecycle() -> None:
    fake = FakeCoinCap()
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    await fake.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v3", fake.base_url)
        assert fake.port > 0
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer test-key"}  # the default key
            async with session.get(f"{fake.base_url}/assets", headers=headers) as resp:
                assert resp.status == 200
    finally:
        await fake.stop()
    await fake.stop()  # idempotent


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": KEY}, {}),  # no scheme
        ({"Authorization": f"Basic {KEY}"}, {}),
        ({}, {"apiKey": "wrong"}),
    ],
    ids=["missing", "wrong-bearer", "no-scheme", "basic", "wrong-query"],
)
async def test_rejects_missing_or_wrong_key(
    fake: FakeCoinCap, headers: dict[str, str], params: dict[str, str]
) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}/assets"
        async with session.get(url, headers=headers, params=params) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/json"
            body = await resp.json()
            text = await resp.text()
    assert set(body) == set(fixture("error_not_found.json")) == {"error", "timestamp"}
    assert KEY not in text
    assert fake.requests[-1].status == 401


async def test_accepts_bearer_header_or_api_key_query(fake: FakeCoinCap) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}/assets"
        async with session.get(url, headers={"Authorization": f"bearer {KEY}"}) as resp:
            assert resp.status == 200
        async with session.get(url, params={"apiKey": KEY}) as resp:
            assert resp.status == 200
    first, second = fake.requests
    assert first.header("authorization") == f"bearer {KEY}"
    assert second.query == {"apiKey": KEY}


async def test_key_is_masked_in_repr_and_absent_from_logs(
    fake: FakeCoinCap, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with http.get(f"{fake.base_url}/assets", params={"apiKey": KEY}) as resp:
            assert resp.status == 200
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(fake.requests)
    assert "/v3/assets" in caplog.text  # the access log did run ...
    assert KEY not in caplog.text  # ... without the key


# --- /v3/assets -----------------------------------------------------------------------


async def test_ids_filter_keeps_requested_order_and_drops_unknown(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    status, body = await get_json(
        http, f"{fake.base_url}/assets", ids="solana,nope,bitcoin,solana, xrp"
    )
    assert status == 200
    assert [a["id"] for a in body["data"]] == ["solana", "bitcoin", "xrp"]
    by_id = {a["id"]: a for a in fixture("assets.json")["data"]}
    assert body["data"] == [by_id["solana"], by_id["bitcoin"], by_id["xrp"]]


async def test_limit_offset_and_no_ids(fake: FakeCoinCap, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/assets"
    _, body = await get_json(http, url)
    assert [a["id"] for a in body["data"]] == IDS.split(",")
    _, body = await get_json(http, url, limit="2", offset="1")
    assert [a["id"] for a in body["data"]] == ["ethereum", "tether"]
    _, body = await get_json(http, url, ids="xrp,bitcoin,solana", limit="1", offset="1")
    assert [a["id"] for a in body["data"]] == ["bitcoin"]
    for bad in ({"limit": "2001"}, {"limit": "x"}, {"offset": "-1"}):
        status, body = await get_json(http, url, **bad)
        assert status == 400
        assert set(body) == {"error", "timestamp"}
    assert fake.tick == 3  # rejected requests do not move the market


async def test_prices_move_fixture_then_later_then_exact_decimal_walk(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.clock = lambda: 1_700_000_000_123
    url = f"{fake.base_url}/assets"
    bodies = [(await get_json(http, url, ids=IDS))[1] for _ in range(12)]

    assert bodies[0] == {**fixture("assets.json"), "timestamp": 1_700_000_000_123}
    assert bodies[1] == {**fixture("assets_later.json"), "timestamp": 1_700_000_000_123}
    assert {b["timestamp"] for b in bodies} == {1_700_000_000_123}

    later = {a["id"]: a for a in fixture("assets_later.json")["data"]}
    for previous, current in itertools.pairwise(bodies):
        for before, after in zip(previous["data"], current["data"], strict=True):
            price = after["priceUsd"]
            assert isinstance(price, str)
            assert re.fullmatch(r"\d+\.\d{16}", price), price  # fixture's 16 decimals
            assert price != before["priceUsd"]
            change = abs(Decimal(price) / Decimal(before["priceUsd"]) - 1)
            assert change < Decimal("0.05")
    for body in bodies[1:]:
        for asset in body["data"]:
            # only the price moves after the second tick; solana's vwap24Hr stays null
            assert {**asset, "priceUsd": None} == {**later[asset["id"]], "priceUsd": None}
    assert all(
        next(a for a in b["data"] if a["id"] == "solana")["vwap24Hr"] is None for b in bodies[1:]
    )


async def test_walk_is_deterministic_per_seed(http: aiohttp.ClientSession) -> None:
    async def prices(seed: int, ids: str) -> list[list[str]]:
        async with FakeCoinCap(api_key=KEY, seed=seed) as server:
            out = []
            for _ in range(6):
                _, body = await get_json(http, f"{server.base_url}/assets", ids=ids)
                out.append([a["priceUsd"] for a in body["data"] if a["id"] == "bitcoin"])
            return out

    first = await prices(7, IDS)
    assert first == await prices(7, "bitcoin")  # independent of which ids are asked
    assert first != await prices(8, IDS)


async def test_clock_defaults_to_real_time(fake: FakeCoinCap, http: aiohttp.ClientSession) -> None:
    now_ms = time.time() * 1000
    _, body = await get_json(http, f"{fake.base_url}/assets", ids="bitcoin")
    assert abs(body["timestamp"] - now_ms) < 5_000


# --- /v3/assets/{id} ----------------------------------------------------------------


async def test_single_asset_and_not_found(fake: FakeCoinCap, http: aiohttp.ClientSession) -> None:
    fake.clock = lambda: 1741381815467
    status, body = await get_json(http, f"{fake.base_url}/assets/bitcoin")
    assert (status, body) == (200, fixture("asset_bitcoin.json"))

    status, body = await get_json(http, f"{fake.base_url}/assets/bitcoin2")
    assert (status, body) == (404, fixture("error_not_found.json"))

    # follows the last tick served by /assets, without advancing it
    await get_json(http, f"{fake.base_url}/assets", ids="bitcoin")
    await get_json(http, f"{fake.base_url}/assets", ids="bitcoin")
    _, body = await get_json(http, f"{fake.base_url}/assets/bitcoin")
    assert body["data"]["priceUsd"] == fixture("assets_later.json")["data"][0]["priceUsd"]
    assert fake.tick == 2


async def test_unknown_path_is_json_404(fake: FakeCoinCap, http: aiohttp.ClientSession) -> None:
    status, body = await get_json(http, f"{fake.base_url}/markets")
    assert status == 404
    assert set(body) == {"error", "timestamp"}


# --- /v3/assets/{id}/history --------------------------------------------------------


async def test_history_reproduces_recorded_rows(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    recorded = fixture("history_bitcoin_m1.json")
    start = recorded["data"][0]["time"]
    end = recorded["data"][-1]["time"] + 60_000
    status, body = await get_json(
        http,
        f"{fake.base_url}/assets/bitcoin/history",
        interval="m1",
        start=str(start),
        end=str(end),
    )
    assert status == 200
    assert body["data"] == recorded["data"]


async def test_history_rows_cover_half_open_window_deterministically(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/assets/ethereum/history"
    start = 1_741_381_800_000 + 1  # unaligned: the first row is the next 5-minute mark
    end = 1_741_381_800_000 + 3_600_000  # excluded
    _, body = await get_json(http, url, interval="m5", start=str(start), end=str(end))
    times = [row["time"] for row in body["data"]]
    assert times == list(range(1_741_381_800_000 + 300_000, end, 300_000))
    assert len(times) == 11
    assert body["data"][0]["date"] == "2025-03-07T21:15:00.000Z"
    for row in body["data"]:
        assert set(row) == {"priceUsd", "time", "date"}
        assert re.fullmatch(r"\d+\.\d{16}", row["priceUsd"])
        assert abs(Decimal(row["priceUsd"]) / Decimal("2141.1735127032072334") - 1) < Decimal(
            "0.03"
        )
    assert len({row["priceUsd"] for row in body["data"]}) > 1

    # the same instants agree across intervals and requests
    _, m1 = await get_json(http, url, interval="m1", start=str(start), end=str(end))
    m1_prices = {row["time"]: row["priceUsd"] for row in m1["data"]}
    assert all(m1_prices[row["time"]] == row["priceUsd"] for row in body["data"])


@pytest.mark.parametrize("interval", list(HISTORY_INTERVALS_MS))
async def test_history_window_limit(
    fake: FakeCoinCap, http: aiohttp.ClientSession, interval: str
) -> None:
    url = f"{fake.base_url}/assets/bitcoin/history"
    end = 1_741_392_000_000
    window = HISTORY_MAX_WINDOW_MS[interval]
    status, body = await get_json(
        http, url, interval=interval, start=str(end - window), end=str(end)
    )
    assert status == 200
    assert len(body["data"]) == window // HISTORY_INTERVALS_MS[interval]
    status, body = await get_json(
        http, url, interval=interval, start=str(end - window - 1), end=str(end)
    )
    assert status == 400
    assert interval in body["error"]
    assert set(body) == {"error", "timestamp"}


async def test_history_rejects_bad_parameters(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/assets/bitcoin/history"
    for params in (
        {},
        {"interval": "m2", "start": "0", "end": "60000"},
        {"interval": "m1", "start": "0"},
        {"interval": "m1", "start": "a", "end": "60000"},
        {"interval": "m1", "start": "60000", "end": "60000"},
    ):
        status, body = await get_json(http, url, **params)
        assert status == 400, params
        assert set(body) == {"error", "timestamp"}
    status, body = await get_json(http, f"{fake.base_url}/assets/nope/history", interval="m1")
    assert (status, body["error"]) == (404, "nope not found")


async def test_history_defaults_to_largest_window_ending_now(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.clock = lambda: 1_741_392_000_000
    _, body = await get_json(http, f"{fake.base_url}/assets/solana/history", interval="h1")
    assert len(body["data"]) == 30 * 24
    assert body["data"][-1]["time"] == 1_741_392_000_000 - 3_600_000


# --- faults -------------------------------------------------------------------------


async def test_fault_status_429_with_retry_after(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.inject(Fault.status(429, headers={"Retry-After": "2"}))
    async with http.get(f"{fake.base_url}/assets", params={"ids": "bitcoin"}) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        assert set(await resp.json()) == {"error", "timestamp"}
    status, _ = await get_json(http, f"{fake.base_url}/assets", ids="bitcoin")
    assert status == 200
    assert [r.status for r in fake.requests] == [429, 200]
    assert [r.fault for r in fake.requests] == ["status", None]
    assert fake.tick == 1  # the faulted poll did not consume a market tick


async def test_fault_html_503_and_faults_are_fifo(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.inject(
        Fault.status(503, body="<html>Bad gateway</html>", content_type="text/html"),
        Fault.status(500),
    )
    url = f"{fake.base_url}/assets"
    async with http.get(url) as resp:
        assert (resp.status, resp.content_type) == (503, "text/html")
        assert await resp.text() == "<html>Bad gateway</html>"
    async with http.get(url) as resp:
        assert resp.status == 500
    async with http.get(url) as resp:
        assert resp.status == 200
    assert fake.pending_faults == []


async def test_fault_times_path_prefix_and_until_cleared(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.inject(
        Fault.status(500, path_prefix="/v3/assets/bitcoin/history", times=2),
        Fault.status(502, path_prefix="/v3/assets", times=None),
    )
    history = f"{fake.base_url}/assets/bitcoin/history"
    params = {"interval": "h1", "start": "0", "end": "3600000"}
    assert (await get_json(http, f"{fake.base_url}/assets"))[0] == 502
    assert (await get_json(http, history, **params))[0] == 500
    assert (await get_json(http, history, **params))[0] == 500
    assert (await get_json(http, history, **params))[0] == 502
    assert (await get_json(http, f"{fake.base_url}/assets"))[0] == 502
    fake.clear_faults()
    assert (await get_json(http, history, **params))[0] == 200


async def test_fault_faults_precede_auth(fake: FakeCoinCap) -> None:
    fake.inject(Fault.status(429))
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{fake.base_url}/assets") as resp:
            assert resp.status == 429
        async with anonymous.get(f"{fake.base_url}/assets") as resp:
            assert resp.status == 401


async def test_fault_truncated_and_empty_bodies(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.inject(Fault.body('{"data": [', content_type="application/json"), Fault.body(""))
    url = f"{fake.base_url}/assets"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.text() == '{"data": ['
        with pytest.raises(json.JSONDecodeError):
            await resp.json()
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_fault_records_serves_exactly_the_given_records(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.clock = lambda: 42
    bad: list[dict[str, Any]] = [
        {"priceUsd": "1.0"},
        {"id": "bitcoin"},
        {"id": "bitcoin", "priceUsd": "abc"},
        {"id": "bitcoin", "priceUsd": "NaN"},
        {"id": "bitcoin", "priceUsd": "Infinity"},
        {"id": "bitcoin", "priceUsd": "-5"},
        {"id": "bitcoin", "priceUsd": None},
    ]
    fake.inject(Fault.records(bad))
    bad.append({"id": "mutated-after-inject"})
    status, body = await get_json(http, f"{fake.base_url}/assets", ids="bitcoin")
    assert (status, body) == (200, {"data": bad[:-1], "timestamp": 42})


async def test_fault_delay_triggers_client_timeout_then_recovers(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.inject(Fault.delay(30))
    url = f"{fake.base_url}/assets"
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    status, _ = await get_json(http, url)
    assert status == 200


async def test_fault_short_delay_then_normal_answer(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    fake.inject(Fault.delay(0.2))
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, body = await get_json(http, f"{fake.base_url}/assets", ids="bitcoin")
    assert loop.time() - began >= 0.19
    assert (status, body["data"]) == (200, fixture("assets.json")["data"][:1])


async def test_stop_is_not_held_up_by_pending_delay(http: aiohttp.ClientSession) -> None:
    fake = FakeCoinCap(api_key=KEY)
    await fake.start()
    fake.inject(Fault.delay(60))
    request = asyncio.create_task(get_json(http, f"{fake.base_url}/assets"))
    await fake.wait_for_calls(1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await fake.stop()
    assert loop.time() - began < 2
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)


async def test_fault_disconnect(fake: FakeCoinCap, http: aiohttp.ClientSession) -> None:
    # aiohttp's ClientSession silently retries an idempotent request once after
    # ServerDisconnectedError, so a single disconnect is invisible to a GET ...
    fake.inject(Fault.disconnect())
    status, _ = await get_json(http, f"{fake.base_url}/assets")
    assert status == 200
    assert [(r.fault, r.status) for r in fake.requests] == [("disconnect", None), (None, 200)]
    # ... and it takes two in a row to surface the error.
    fake.inject(Fault.disconnect(times=2))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get_json(http, f"{fake.base_url}/assets")
    assert [r.fault for r in fake.requests[2:]] == ["disconnect", "disconnect"]
    status, _ = await get_json(http, f"{fake.base_url}/assets")
    assert status == 200


def test_fault_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="times"):
        Fault.status(500, times=0)
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-1)


# --- request recording --------------------------------------------------------------


async def test_requests_are_recorded_with_timing(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    async def poller() -> None:
        for _ in range(3):
            await get_json(http, f"{fake.base_url}/assets", ids="bitcoin")
            await asyncio.sleep(0.05)
        await get_json(http, f"{fake.base_url}/assets/bitcoin/history", interval="d1")

    task = asyncio.create_task(poller())
    seen = await fake.wait_for_calls(3, timeout=5)
    assert len(seen) >= 3
    await fake.wait_for_calls(1, path_prefix="/v3/assets/bitcoin/history", timeout=5)
    await task
    assert fake.calls("/v3/assets") == 4
    assert fake.calls("/v3/assets/bitcoin/history") == 1
    first, second = fake.requests[:2]
    assert (first.method, first.path, first.query) == ("GET", "/v3/assets", {"ids": "bitcoin"})
    assert first.headers["Authorization"] == f"Bearer {KEY}"
    assert second.monotonic - first.monotonic >= 0.04


async def test_wait_for_calls_times_out_with_count(fake: FakeCoinCap) -> None:
    with pytest.raises(TimeoutError, match="saw 0"):
        await fake.wait_for_calls(1, timeout=0.05)


# --- command line -------------------------------------------------------------------


async def test_command_line_entry_point_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.fake_coincap",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-key",
        KEY,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v3", line), line
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{line}/assets", params={"apiKey": KEY}) as resp:
                assert resp.status == 200
            async with session.get(f"{line}/assets", headers=AUTH) as resp:
                assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()
    assert KEY not in (line + stdout.decode() + stderr.decode())
    assert stderr.decode().count("GET /v3/assets -> 200") == 2


# --- credits and the spent allowance ---------------------------------------------------


async def test_the_fake_bills_by_the_documented_rule(
    fake: FakeCoinCap, http: aiohttp.ClientSession
) -> None:
    for ids in (IDS, "bitcoin,ethereum"):
        async with http.get(f"{fake.base_url}/assets", params={"ids": ids}) as resp:
            await resp.read()
    async with http.get(f"{fake.base_url}/assets/nosuchcoin") as resp:
        assert resp.status == 404
    sizes = [r.body_bytes for r in fake.requests]
    assert sizes[0] is not None and sizes[0] > 2500  # six assets cross 2,500 bytes
    assert sizes[1] is not None and sizes[1] < 2500
    assert fake.bills == [2, 1, 1]
    assert fake.credits_served == 4


async def test_a_spent_allowance_answers_429_without_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeCoinCap(api_key=KEY, allowance=3) as fake:
        statuses = []
        for _ in range(3):
            async with http.get(f"{fake.base_url}/assets", params={"ids": IDS}) as resp:
                statuses.append(resp.status)
                body = await resp.json()
                headers = resp.headers
        assert statuses == [200, 200, 429]  # 2 + 2 credits crossed the allowance of 3
        assert "Retry-After" not in headers
        assert "credit limit" in body["error"] and "plan" in body["error"]
        fake.renew_allowance()
        async with http.get(f"{fake.base_url}/assets", params={"ids": IDS}) as resp:
            assert resp.status == 200
        fake.spend_allowance()
        async with http.get(f"{fake.base_url}/assets/bitcoin") as resp:
            assert resp.status == 429
        # The key is still checked first.
        async with (
            aiohttp.ClientSession() as anonymous,
            anonymous.get(f"{fake.base_url}/assets") as resp,
        ):
            assert resp.status == 401
