"""A local fake of CoinCap's price stream (``wss://wss.coincap.io/prices``).

A real aiohttp websocket server on ``127.0.0.1``: ``GET /prices?assets=a,b&apiKey=KEY``.
A wrong or missing key is refused before the upgrade (401 JSON). Once connected,
every :attr:`FakeCoinCapWs.interval` seconds the client gets one text frame holding
only the assets that "changed", like CoinCap: first the recorded frames of
``tests/fixtures/coincap/ws_prices.jsonl`` (filtered to the asked assets), then a
deterministic random walk of a random non-empty subset of the asked assets. The
market is shared: two connections see the same sequence from where it stands.

Fault controls (all take effect at once on every open connection):

* :meth:`pause` / :meth:`resume`: a silent stream (the connection stays open);
* :meth:`push` / :meth:`push_binary`: send one raw frame, e.g. malformed text;
* :meth:`drop`: cut every connection without a close frame;
* :meth:`close_all`: a clean close (code 1001, "going away");
* ``inject(Fault.status(503))``: refuse the next handshake(s), as for HTTP;
* :meth:`rate_limit`: refuse the next handshake(s) with 429 and a ``Retry-After``.

:meth:`handshake_times` gives when each handshake attempt arrived, refused or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aiohttp import WSCloseCode, web

from tests.support.fake_coincap import DEFAULT_API_KEY, Fault
from tests.support.fakehttp import FakeHttpServer

FIXTURE: Final = Path(__file__).resolve().parent.parent / "fixtures" / "coincap" / "ws_prices.jsonl"
#: Starting prices of assets the recorded frames do not move.
_START: Final = {"tether": "1.0001", "binance-coin": "594.54"}


class FakeCoinCapWs(FakeHttpServer):
    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        interval: float = 0.05,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key
        self.interval = interval
        self.paused = False
        #: Accepted websocket connections so far.
        self.handshakes = 0
        #: Frames sent, as (connection number, text), in order.
        self.sent: list[tuple[int, str]] = []
        self._open: dict[int, web.WebSocketResponse] = {}
        self._requests: dict[int, web.Request] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._rng = random.Random(seed)
        self._recorded = [
            json.loads(line)
            for line in FIXTURE.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        self._step = 0
        self.prices: dict[str, str] = dict(_START)
        for frame in self._recorded:
            self.prices.update(frame)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/prices", self._prices)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/prices"

    @property
    def connections(self) -> int:
        return len(self._open)

    # -- controls ----------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    async def push(self, text: str) -> None:
        for number, ws in list(self._open.items()):
            if not ws.closed:
                await ws.send_str(text)
                self.sent.append((number, text))

    async def push_binary(self, data: bytes) -> None:
        for ws in list(self._open.values()):
            if not ws.closed:
                await ws.send_bytes(data)

    def drop(self) -> None:
        """Cut every connection at the TCP level (no close frame)."""
        for request in list(self._requests.values()):
            if request.transport is not None:
                request.transport.abort()

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY) -> None:
        for ws in list(self._open.values()):
            await ws.close(code=code, message=b"server going away")

    def rate_limit(self, retry_after: str, times: int = 1) -> None:
        """Answer the next ``times`` handshakes 429 with ``Retry-After: <retry_after>``."""
        self.inject(
            Fault.status(
                429,
                body=json.dumps({"error": "Too many requests, please try again later."}),
                headers={"Retry-After": retry_after},
                path_prefix="/prices",
                times=times,
            )
        )

    def handshake_times(self) -> list[float]:
        """:func:`time.monotonic` at the arrival of each handshake attempt, in order."""
        return [r.monotonic for r in self.requests_to("/prices")]

    async def wait_for_handshakes(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.handshakes < n:
                await self._changed.wait()

    # -- market ------------------------------------------------------------------------

    def _next_frame(self, assets: list[str]) -> dict[str, str]:
        self._step += 1
        if self._step <= len(self._recorded):
            frame: dict[str, str] = self._recorded[self._step - 1]
        else:
            moved = self._rng.sample(assets, self._rng.randint(1, len(assets)))
            frame = {}
            for asset in moved:
                price = Decimal(self.prices.get(asset, "100.00"))
                places = max(2, -int(price.as_tuple().exponent))
                ppm = self._rng.randint(1, 300) * self._rng.choice((-1, 1))
                quantum = Decimal(1).scaleb(-places)
                new = (price * (1 + Decimal(ppm) / 1_000_000)).quantize(quantum)
                if new == price:
                    new = price + quantum
                frame[asset] = format(new, "f")
            self.prices.update(frame)
        return {a: p for a, p in frame.items() if a in assets}

    # -- endpoint ----------------------------------------------------------------------

    async def _prices(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("apiKey") != self.api_key:
            return web.json_response({"error": "Unauthorized: invalid apiKey"}, status=401)
        assets = [a for a in request.query.get("assets", "").split(",") if a]
        if not assets:
            return web.json_response({"error": "assets is required"}, status=400)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        number = next(self._ids)
        self._open[number] = ws
        self._requests[number] = request
        self.handshakes += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        pump = asyncio.create_task(self._pump(number, ws, assets))
        try:
            async for _msg in ws:
                pass  # the stream is one-way; pings are answered by aiohttp
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            self._open.pop(number, None)
            self._requests.pop(number, None)
        return ws

    async def _pump(self, number: int, ws: web.WebSocketResponse, assets: list[str]) -> None:
        while not ws.closed:
            await asyncio.sleep(self.interval)
            if self.paused:
                continue
            frame = self._next_frame(assets)
            if not frame:
                continue
            text = json.dumps(frame)
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
            self.sent.append((number, text))

    def frames_for(self, number: int) -> list[dict[str, Any]]:
        """Decoded frames sent on one connection (malformed pushes left out)."""
        out = []
        for n, text in self.sent:
            if n != number:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                out.append(data)
        return out
