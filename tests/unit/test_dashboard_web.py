"""The dashboard behind the real aiohttp server, on a free loopback port: range queries
while ticks stream in, the cap on live connections, the start-up warning."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from cryptostream.config import Config, Secret, SourceConfig, StorageConfig, WebConfig
from cryptostream.dashboard import Dashboard, hub
from cryptostream.metrics import Metrics
from cryptostream.tick import Tick
from cryptostream.web import WebServer

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
