"""The dashboard's HTTP side on the real service, fed through a real Kafka broker."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from cryptostream.csvrow import HEADER
from tests.conftest import ConfigFactory, free_port, wait_until
from tests.support.fake_coincap import FakeCoinCap
from tests.support.topic import csv_rows

pytestmark = pytest.mark.integration

DAY = 86400
D1 = 1_741_305_600.0  # 2025-03-07 00:00:00 UTC
TOKEN = "s3cret-dashboard-token-0123456789"


def seed_history(data_dir: Path) -> list[tuple[float, str, str, str]]:
    """Two past days of bitcoin and ethereum rows: (timestamp, id, priceUsd, firstValue)."""
    rows = []
    for day in range(2):
        for i in range(5):
            ts = D1 + day * DAY + 3600 * i
            rows.append((ts, "bitcoin", f"{80000 + 100 * day + i}.5", f"{80000 + 100 * day}.5"))
            rows.append((ts + 1, "ethereum", f"{2000 + day + i}", f"{2000 + day}"))
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "crypto_data.csv").open("w") as fh:
        fh.write(HEADER)
        for ts, asset, price, first in rows:
            symbol, name = ("BTC", "Bitcoin") if asset == "bitcoin" else ("ETH", "Ethereum")
            fh.write(f"{ts!r},{asset},{symbol},{name},{price},1.5,{first},\n")
    return rows


async def next_event(resp: aiohttp.ClientResponse, name: str, timeout: float = 20) -> dict:
    """Read Server-Sent Events until one called ``name``; its JSON data."""
    event = ""
    async with asyncio.timeout(timeout):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == name:
                return orjson.loads(line[6:])
    raise AssertionError(f"stream ended before a {name!r} event")


async def test_history_range_queries_and_live_ticks(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service,
    tmp_path: Path,
) -> None:
    seeded = seed_history(tmp_path / "data")
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    running = await run_service(config)
    dash = running.service.dashboard
    await wait_until(lambda: dash.state == "ready", what="history loaded")
    base = f"http://127.0.0.1:{running.service.web.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/stream") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            await next_event(stream, "hello")
            live = await next_event(stream, "ticks")
        # A live tick in the stream is a row of the CSV, already durable.
        _, rows = csv_rows(running.data_dir / "crypto_data.csv")
        written = {(r["id"], float(r["timestamp"]), float(r["priceUsd"])) for r in rows}
        for asset, points in live["ticks"].items():
            for t, price, _pct in points:
                assert (asset, t, price) in written

        # Day 2 only, in USD: exactly the seeded rows of that day.
        query = f"from={D1 + DAY}&to={D1 + 2 * DAY - 1}&mode=abs"
        async with http.get(f"{base}/api/series?{query}") as r:
            assert r.status == 200
            body = await r.json()
        got = {s["id"]: s["points"] for s in body["series"]}
        for asset in ("bitcoin", "ethereum"):
            expected = [[ts, float(p)] for ts, a, p, _ in seeded if a == asset and ts >= D1 + DAY]
            assert got[asset] == expected
        # Fake CoinCap's assets have no ticks on that day: no points, but listed.
        assert all(got[a] == [] for a in got if a not in ("bitcoin", "ethereum"))

        # In %: each point against its row's firstValue.
        async with http.get(f"{base}/api/series?from={D1}&to={D1 + DAY - 1}&mode=pct") as r:
            pct = {s["id"]: s["points"] for s in (await r.json())["series"]}
        expected_pct = [
            [ts, pytest.approx((float(p) / float(f) - 1) * 100, abs=1e-6)]
            for ts, a, p, f in seeded
            if a == "bitcoin" and ts < D1 + DAY
        ]
        assert pct["bitcoin"] == expected_pct

        async with http.get(f"{base}/api/summary") as r:
            summary = await r.json()
        assert summary["days"][:2] == ["2025-03-07", "2025-03-08"]
        assert summary["totals"]["records"] >= len(seeded) + 6
        assert summary["source"] == "coincap"

        for bad in ("from=yesterday", "points=1", "mode=log", "from=5&to=4"):
            async with http.get(f"{base}/api/series?{bad}") as r:
                assert r.status == 400
                assert (await r.json())["error"]
        refused = running.service.metrics.registry.get_sample_value(
            "cryptostream_web_rejected_total", {"reason": "bad_request"}
        )
        assert refused == 4
    assert await running.stop() == 0


async def test_token_guards_everything_but_health_checks(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(
        base_url=fake_coincap.base_url,
        bootstrap=kafka_bootstrap,
        env={"CRYPTOSTREAM_WEB__TOKEN": TOKEN},
    )
    running = await run_service(config)
    await wait_until(lambda: running.service.readiness()[0], what="ready")
    base = f"http://127.0.0.1:{running.service.web.port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/api/summary", "/api/series", "/api/stream", "/metrics", "/static/x"):
            async with http.get(base + path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(base + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
        for path in ("/healthz", "/readyz"):
            async with http.get(base + path) as r:
                assert r.status == 200, path
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(f"{base}/metrics", headers=bearer) as r:
            assert r.status == 200
            assert "cryptostream_web_rejected_total" in await r.text()
        async with http.get(f"{base}/api/summary", headers=bearer) as r:
            assert r.status == 200

    # A browser: the link with ?token= sets an HttpOnly cookie and drops the token from the URL.
    # (unsafe=True: aiohttp's jar, unlike a browser's, ignores cookies of IP hosts otherwise.)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{base}/?token={TOKEN}", allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/"
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with browser.get(f"{base}/") as r:
            assert r.status == 200
            assert "<title>cryptostream" in await r.text()
        async with browser.get(f"{base}/api/summary") as r:
            assert r.status == 200
    assert await running.stop() == 0
    assert TOKEN not in capsys.readouterr().out


async def raw_get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with the target exactly as given (no client normalising it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_only_the_dashboard_files_are_served(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    running = await run_service(config)
    await wait_until(lambda: running.service.web.port is not None, what="web server up")
    port = running.service.web.port
    assert port is not None
    status, headers, body = await raw_get(port, "/")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["server"] == "cryptostream"
    vendored = "/static/vendor/lightweight-charts.standalone.production.js"
    status, headers, _ = await raw_get(port, vendored)
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    for target in (
        "/static/",
        "/static/vendor/",
        "/static/../dashboard/api.py",
        "/static/%2e%2e/dashboard/api.py",
        "/static/..%2f..%2fconfig.py",
        "/static/vendor/../../web.py",
        "/static//etc/passwd",
        "/../pyproject.toml",
        "/.env",
    ):
        status, _, body = await raw_get(port, target)
        assert status in (400, 404), target
        assert b"import" not in body and b"root:" not in body, target
    assert await running.stop() == 0


async def test_check_command_follows_the_service_health(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service,
    tmp_path: Path,
) -> None:
    port = free_port()
    config = make_config(
        base_url=fake_coincap.base_url,
        bootstrap=kafka_bootstrap,
        env={"CRYPTOSTREAM_WEB__PORT": str(port)},
    )
    env = {
        "PATH": os.environ["PATH"],
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_WEB__PORT": str(port),
    }

    async def check() -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cryptostream",
            "check",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 30)

    assert await check() == 1  # nothing listening
    running = await run_service(config)
    await wait_until(lambda: running.service.readiness()[0], what="ready")
    assert await check() == 0
    assert await running.stop() == 0
    assert await check() == 1
