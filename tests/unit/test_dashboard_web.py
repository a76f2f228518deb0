"""The dashboard behind the real aiohttp server, on a free loopback port: range queries
while ticks stream in, the cap on live connections, the start-up warning."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from cryptostream.config import Config, Secret, SourceConfig, StorageConfig, WebConfig
from cryptostream.dashboard import Dashboard, api, hub
from cryptostream.metrics import Metrics
from cryptostream.tick import Tick
from cryptostream.web import WebServer
from tests.conftest import wait_until

DAY = 86400.0
ASSETS = ("bitcoin", "ethereum")


def make_tick(asset: str, ts: float, price: float) -> Tick:
    # firstValue 100 throughout: a point's variation is price - 100 (in %).
    return Tick(
        ts, asset, asset[:3].upper(), asset.title(), repr(price), "1.5", "100", None, "demo"
    )


class Server:
    def __init__(self, dash: Dashboard, web: WebServer, metrics: Metrics) -> None:
        self.dash = dash
        self.web = web
        self.metrics = metrics

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **web: Any) -> AsyncIterator[Server]:
    config = Config(
        source=SourceConfig(name="demo", assets=ASSETS),
        storage=StorageConfig(data_dir=tmp_path),
        web=WebConfig(port=0, **web),
    )
    metrics = Metrics()
    dash = Dashboard(config, metrics)
    server = WebServer(config.web, metrics, lambda: (True, {}), dash)
    await server.start()
    try:
        await dash.load()  # an empty data directory: ready at once
        yield Server(dash, server, metrics)
    finally:
        await server.stop()


@pytest.fixture
def busy_thread_switching() -> Iterator[None]:
    """Let the interpreter switch threads far more often than every 5 ms, so that a
    request's worker thread and the event loop interleave inside one request."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("busy_thread_switching")
async def test_series_answers_stay_whole_while_ticks_stream_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thin old points on every batch (normally hourly): the arrays are replaced often.
    monkeypatch.setattr(hub, "COMPACT_EVERY", 0.0)
    rng = random.Random(7)
    now = time.time()
    start = now - 40 * DAY  # ten days of it older than full detail: compacted
    fed: dict[str, dict[float, float]] = {a: {} for a in ASSETS}
    stamps: set[float] = set()

    def ticks(n: int, lo: float, hi: float) -> list[Tick]:
        out = []
        for _ in range(n):
            asset = rng.choice(ASSETS)
            ts = round(rng.uniform(lo, hi), 3)
            if ts in stamps:
                continue
            stamps.add(ts)
            price = round(100 + rng.uniform(-20, 20), 4)
            fed[asset][ts] = price
            out.append(make_tick(asset, ts, price))
        return out

    async with serving(tmp_path) as server:
        dash = server.dash
        # 100,000 points of history, in time order, as the load would leave them.
        history = sorted(ticks(100_000, start, now - DAY), key=lambda t: t.timestamp)
        dash.on_batch(history)
        answers: list[tuple[int, dict[str, Any] | str]] = []
        done = asyncio.Event()

        async def feed() -> None:
            clock = now - DAY
            while not done.is_set():
                # New ticks at the end, and late ones anywhere in the past (a spool
                # published after a restart): appends, inserts and compactions.
                batch = ticks(50, clock, clock + 1)
                clock += 1
                batch += ticks(5, start, clock)
                dash.on_batch(batch)
                await asyncio.sleep(0)

        async def client(http: aiohttp.ClientSession, seed: int) -> None:
            local = random.Random(seed)
            while not done.is_set():
                lo = local.uniform(start - DAY, now)
                mode = local.choice(("abs", "pct"))
                query = f"from={lo}&to={now + DAY}&points={local.choice((100, 1000))}&mode={mode}"
                async with http.get(f"{server.base}/api/series?{query}") as r:
                    body = await r.json() if r.status == 200 else await r.text()
                    answers.append((r.status, body))

        async with aiohttp.ClientSession() as http:
            tasks = [asyncio.create_task(feed())]
            tasks += [asyncio.create_task(client(http, seed)) for seed in range(4)]
            await asyncio.sleep(3.0)
            done.set()
            await asyncio.gather(*tasks)

    assert len(answers) >= 20, len(answers)
    failed = [(status, body) for status, body in answers if status != 200]
    assert not failed, failed[:3]
    points = 0
    for _, body in answers:
        assert isinstance(body, dict)
        mode = body["mode"]
        for series in body["series"]:
            truth = fed[series["id"]]
            times = [p[0] for p in series["points"]]
            assert times == sorted(set(times)), "timestamps strictly increasing"
            for point in series["points"]:
                assert len(point) == 2, point
                t, value = point
                if value is None:
                    continue  # an empty point marking a gap, on the shared grid
                # Every point is a tick that was fed: its time and its own value.
                assert t in truth, point
                expected = truth[t] if mode == "abs" else round(truth[t] - 100.0, 6)
                assert value == pytest.approx(expected, abs=1e-6), (mode, point, truth[t])
                points += 1
    assert points > 10_000


async def open_stream(http: aiohttp.ClientSession, server: Server) -> aiohttp.ClientResponse:
    """A live connection that got its ``hello``; the caller closes it."""
    resp = await http.get(f"{server.base}/api/stream")
    if resp.status == 200:
        async with asyncio.timeout(10):
            async for line in resp.content:
                if line.startswith(b"event: hello"):
                    break
    return resp


async def test_live_connections_beyond_the_cap_get_503_counted_and_logged_once(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as server, aiohttp.ClientSession() as http:
        live = server.dash.live
        live.max_clients = 3
        pages = [await open_stream(http, server) for _ in range(3)]
        try:
            assert [p.status for p in pages] == [200, 200, 200]
            with structlog.testing.capture_logs() as logs:
                refused = [await open_stream(http, server) for _ in range(2)]
            for resp in refused:
                assert resp.status == 503
                assert "too many live connections" in await resp.text()
                resp.close()
            assert server.count("cryptostream_dashboard_clients_refused_total") == 2
            assert [e["event"] for e in logs] == ["dashboard_live_connections_full"]
            assert logs[0]["limit"] == 3
            assert live.clients == 3
            # A page that goes away frees its place for the next one (the server
            # notices at its next write: live ticks in real life, an event here).
            pages.pop().close()
            async with asyncio.timeout(10):
                while live.clients > 2:
                    live.send("ticks", b"{}")
                    await asyncio.sleep(0.02)
            pages.append(await open_stream(http, server))
            assert pages[-1].status == 200
            # Full again: a new episode, said again (once).
            with structlog.testing.capture_logs() as logs:
                again = await open_stream(http, server)
            again.close()
            assert again.status == 503
            assert [e["event"] for e in logs] == ["dashboard_live_connections_full"]
            assert server.count("cryptostream_dashboard_clients_refused_total") == 3
        finally:
            for page in pages:
                page.close()


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", "", True),
        ("0.0.0.0", "a-long-random-token-42", False),
        ("127.0.0.1", "", False),
    ],
)
async def test_a_non_loopback_address_without_a_token_is_warned_about_at_start(
    tmp_path: Path, host: str, token: str, warned: bool
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with serving(tmp_path, host=host, token=Secret(token)):
            pass
    warnings = [e for e in logs if e["event"] == "web_exposed_without_token"]
    assert len(warnings) == (1 if warned else 0), logs
    if warned:
        (event,) = warnings
        assert event["log_level"] == "warning"
        assert event["address"].startswith("0.0.0.0:")
        assert "CRYPTOSTREAM_WEB__TOKEN" in event["fix"]


async def silent_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw live-stream connection that asks and then never reads (a tiny receive
    buffer, so the server's writes back up after a few hundred kB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Read what the server sent until it ends the connection (bounded)."""
    try:
        async with asyncio.timeout(20):
            while await reader.read(1 << 20):
                pass
    except ConnectionError:
        return True  # reset: the server aborted the connection
    except TimeoutError:
        return False
    return True


async def test_a_live_client_that_never_reads_is_cut_off_and_frees_its_place(
    tmp_path: Path,
) -> None:
    """Dropped as too slow, its connection is closed at once: a handler blocked in a
    write would hold the socket while the count let a new client in past the cap."""
    async with serving(tmp_path) as server:
        live = server.dash.live
        live.max_clients = 3
        assert server.web.port is not None
        silent = [await silent_stream(server.web.port) for _ in range(3)]
        try:
            await wait_until(lambda: live.clients == 3, 10, "three live clients")
            # Far more than the socket buffers hold: every silent client falls behind.
            event = orjson.dumps({"pad": "x" * 200_000})
            async with asyncio.timeout(60):
                while live.clients:
                    live.send("ticks", event)
                    await asyncio.sleep(0.005)
            assert server.count("cryptostream_web_rejected_total", reason="slow_client") == 3
            # Still never read: the server lets go of the connections by itself.
            await wait_until(lambda: server.web.connections == 0, 20, "connections closed")
            closed = [await closed_by_server(reader) for reader, _ in silent]
            assert closed == [True, True, True]
        finally:
            for _, writer in silent:
                writer.close()


async def test_a_write_the_page_does_not_take_in_time_ends_its_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One event larger than the socket buffers, to a page that stops reading: its
    queue never fills, so only the write's deadline lets go of the connection."""
    monkeypatch.setattr(api, "WRITE_TIMEOUT", 0.5)
    async with serving(tmp_path) as server:
        live = server.dash.live
        assert server.web.port is not None
        reader, writer = await silent_stream(server.web.port)
        try:
            await wait_until(lambda: live.clients == 1, 10, "the live client")
            live.send("ticks", orjson.dumps({"pad": "x" * 30_000_000}))
            await wait_until(
                lambda: not (server.web.connections or live.clients), 20, "connection closed"
            )
            assert server.count("cryptostream_web_rejected_total", reason="slow_client") == 1
            assert await closed_by_server(reader)
        finally:
            writer.close()


@pytest.mark.parametrize(
    "header", [b"Authorization: Bearer \xff\xfe", b"Cookie: cryptostream_token=\xc3\x28"]
)
async def test_a_header_that_is_not_utf8_is_a_400_counted_and_logged_once(
    tmp_path: Path, header: bytes
) -> None:
    token = "a-long-random-token-42"
    async with serving(tmp_path, token=Secret(token)) as server:
        assert server.web.port is not None
        with structlog.testing.capture_logs() as logs:
            answers = [await raw_request(server.web.port, header) for _ in range(3)]
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
            assert b"Traceback" not in answer
        assert server.count("cryptostream_web_rejected_total", reason="bad_header") == 3
        refused = [e for e in logs if e["event"] == "web_request_refused"]
        assert len(refused) == 1 and refused[0]["reason"] == "bad_header", logs
        assert not [e for e in logs if e.get("log_level") == "error"], logs
        # The token itself still works, by header and by cookie.
        ok = await raw_request(server.web.port, f"Authorization: Bearer {token}".encode())
        assert ok.startswith(b"HTTP/1.1 200 "), ok[:300]


async def raw_request(port: int, header: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + header
            + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
