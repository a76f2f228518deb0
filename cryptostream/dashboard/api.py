"""The dashboard's HTTP side: the page, its static files, the JSON API and the live stream.

    GET /                 the page
    GET /static/<file>    its scripts, styles and the vendored chart library
    GET /api/summary      cards, table, available days
    GET /api/series       the chart's data for a time range, downsampled
    GET /api/stream       Server-Sent Events: live ticks as they are written
                          (503 beyond ``live.MAX_CLIENTS`` open streams)
    GET /api/credits      CoinCap credits: used, budget, the date they last until

Static files are read into memory once at start and served from a fixed
table: there is no directory listing, and no request path ever reaches the
file system, so no path can lead out of the static folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from cryptostream import __version__
from cryptostream.access import Refusals
from cryptostream.dashboard.hub import Dashboard, Mode
from cryptostream.dashboard.live import WRITE_TIMEOUT, Queue

STATIC_DIR = Path(__file__).resolve().parent.parent / "web_static"

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
    "": "text/plain",
}
#: Points per series when the page does not say (about a chart's width in pixels).
DEFAULT_POINTS = 1000
MAX_POINTS = 5000
#: Ping interval of the live stream: keeps proxies from closing an idle
#: connection and lets the page notice a dead one.
PING_INTERVAL = 15.0


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static(folder: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every servable file under ``folder``, keyed by its URL path relative to /static/."""
    files: dict[str, StaticFile] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        ctype = _TYPES.get(path.suffix)
        if ctype is None:
            continue  # only known kinds of file are served
        body = path.read_bytes()
        if path.name == "index.html":
            body = body.replace(b"{{version}}", __version__.encode())  # the footer's
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        files[path.relative_to(folder).as_posix()] = StaticFile(body, ctype, etag)
    return files


class BadRequest(ValueError):
    pass


class DashboardApi:
    def __init__(self, dashboard: Dashboard, refusals: Refusals) -> None:
        self._dashboard = dashboard
        self._refusals = refusals
        self._static = load_static()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{path:.+}", self._static_file)
        app.router.add_get("/api/summary", self._summary)
        app.router.add_get("/api/series", self._series)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_get("/api/credits", self._credits)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._dashboard.close()

    # -- static ----------------------------------------------------------------------

    def _file(self, request: web.Request, name: str) -> web.StreamResponse:
        f = self._static.get(name)
        if f is None:
            raise web.HTTPNotFound
        # no-cache = revalidate each time (cheap with the ETag): an upgrade shows at once.
        headers = {"ETag": f.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == f.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=f.body, content_type=f.content_type, headers=headers)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, "index.html")

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, request.match_info["path"])

    # -- API -------------------------------------------------------------------------

    async def _summary(self, _request: web.Request) -> web.Response:
        return _json(self._dashboard.summary())

    async def _credits(self, _request: web.Request) -> web.Response:
        credits = self._dashboard.credits
        return _json(credits() if credits is not None else {"source": None, "key": None})

    async def _series(self, request: web.Request) -> web.Response:
        try:
            start, end, points, mode, assets = _series_query(request.query)
        except BadRequest as exc:
            return self._refusals.refuse(request, 400, "bad_request", str(exc))
        # Views taken here, in the loop (O(1)): the thread reads them while the loop
        # goes on adding ticks, and sees neither half a change nor a shifted point.
        series = self._dashboard.views(assets)
        # A year of ticks takes tens of milliseconds to thin out: off the event loop.
        body = await asyncio.to_thread(
            lambda: orjson.dumps(Dashboard.series_json(series, start, end, points, mode))
        )
        return web.Response(body=body, content_type="application/json", headers=_NO_STORE)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        live = self._dashboard.live
        if not live.admit():
            # The page's script retries a refused stream after a pause.
            return web.Response(
                status=503,
                text=f"too many live connections (at most {live.max_clients}); try again later",
                headers={"Retry-After": "10", **_NO_STORE},
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        loop = asyncio.get_running_loop()
        try:
            # Rescheduled to "now" when the page is dropped for falling behind: whatever
            # the handler waits for (a write to a page that never reads) ends at once.
            async with asyncio.timeout(None) as stream:

                def cut() -> None:
                    stream.reschedule(loop.time())

                # No await since admit(): the place is ours.
                async with live.subscribe(cut) as queue:
                    await response.prepare(request)
                    try:
                        await _send_live(response, queue)
                    except TimeoutError:
                        live.drop(queue)  # a write the page did not take in time
                        raise
        except ConnectionError:
            pass  # the page went away
        except TimeoutError:
            # Cut off: let go of the socket now (a clean close would first wait for
            # the bytes the page does not read).
            if request.transport is not None:
                request.transport.abort()
        return response


_NO_STORE = {"Cache-Control": "no-store"}


async def _send_live(response: web.StreamResponse, queue: Queue) -> None:
    # retry: how soon the browser reconnects after losing the service (ms).
    await _write(response, b"retry: 2000\n\nevent: hello\ndata: {}\n\n")
    while True:
        try:
            message = await asyncio.wait_for(queue.get(), PING_INTERVAL)
        except TimeoutError:
            message = b"event: ping\ndata: {}\n\n"
        if message is None:
            return
        await _write(response, message)


async def _write(response: web.StreamResponse, data: bytes) -> None:
    """One write to a page, within :data:`WRITE_TIMEOUT` (TimeoutError beyond it)."""
    async with asyncio.timeout(WRITE_TIMEOUT):
        await response.write(data)


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers=_NO_STORE)


def _number(query: Any, name: str, default: float) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number (Unix seconds), got {raw[:40]!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number")
    return value


def _series_query(query: Any) -> tuple[float, float, int, Mode, list[str] | None]:
    start = _number(query, "from", 0.0)
    end = _number(query, "to", math.inf)
    if end < start:
        raise BadRequest("to must not be before from")
    points_raw = _number(query, "points", DEFAULT_POINTS)
    if points_raw != int(points_raw) or not 10 <= points_raw <= MAX_POINTS:
        raise BadRequest(f"points must be a whole number from 10 to {MAX_POINTS}")
    mode = query.get("mode", "pct")
    if mode not in ("pct", "abs"):
        raise BadRequest("mode must be pct or abs")
    assets_raw = query.get("assets")
    assets = [a for a in assets_raw.split(",") if a] if assets_raw else None
    return start, end, int(points_raw), mode, assets
