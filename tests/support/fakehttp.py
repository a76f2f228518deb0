"""What the fake exchange servers share: a real aiohttp server on 127.0.0.1, request
recording and FIFO fault injection with :class:`tests.support.fake_coincap.Fault`
(``status``, ``body``, ``delay`` and ``disconnect``; ``records`` is CoinCap-only).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from types import TracebackType
from typing import Self

from aiohttp import web

from tests.support.fake_coincap import Fault, RecordedRequest, _QueuedFault

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeHttpServer:
    """Subclasses add routes in :meth:`routes` and may override :meth:`error_body`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self._faults: list[_QueuedFault] = []
        self._new_request = asyncio.Event()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._base_url

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._new_request = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._base_url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._stopping.set()
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- faults ------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults (FIFO); each matching request consumes one use of the first match."""
        self._faults.extend(_QueuedFault(f, f.times) for f in faults)

    def clear_faults(self) -> None:
        self._faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        for index, queued in enumerate(self._faults):
            if queued.fault.matches(path):
                if queued.remaining is not None:
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        del self._faults[index]
                return queued.fault
        return None

    # -- inspection --------------------------------------------------------------------

    def calls(self, path_prefix: str = "") -> int:
        return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    def requests_to(self, path_prefix: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    def answered(self, status: int = 200, path_prefix: str = "") -> int:
        """Requests answered with ``status`` (and not faulted)."""
        return sum(
            1
            for r in self.requests
            if r.path.startswith(path_prefix) and r.status == status and r.fault is None
        )

    async def wait_for_calls(
        self, n: int, path_prefix: str = "", timeout: float = 10.0
    ) -> list[RecordedRequest]:
        try:
            async with asyncio.timeout(timeout):
                while self.calls(path_prefix) < n:
                    await self._new_request.wait()
        except TimeoutError:
            raise TimeoutError(
                f"waited {timeout}s for {n} request(s) to {path_prefix!r}, "
                f"saw {self.calls(path_prefix)}"
            ) from None
        return self.requests_to(path_prefix)

    # -- plumbing ----------------------------------------------------------------------

    def error_body(self, status: int, message: str) -> str:
        """The JSON body of a faulted status without an explicit body."""
        return json.dumps({"error": message})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            monotonic=time.monotonic(),
        )
        self.requests.append(recorded)
        event, self._new_request = self._new_request, asyncio.Event()
        event.set()
        fault = self._take_fault(request.path)
        if fault is not None:
            recorded.fault = fault.kind
            early = await self._apply_fault(fault, request)
            if early is not None:
                recorded.status = early.status
                return early
        response = await handler(request)
        recorded.status = response.status
        return response

    async def _apply_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "delay":
            try:
                async with asyncio.timeout(fault.seconds):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            return None
        if fault.kind == "disconnect":
            if request.transport is not None:
                request.transport.abort()
            await asyncio.Future()  # cancelled by aiohttp once the connection is lost
        if fault.kind == "records":
            raise ValueError("Fault.records is CoinCap-only")
        if fault.kind == "status" and fault.payload is None:
            try:
                reason = HTTPStatus(fault.http_status).phrase
            except ValueError:
                reason = "Error"
            body = self.error_body(fault.http_status, reason)
        else:
            body = fault.payload or ""
        response = web.Response(status=fault.http_status, body=body.encode(), headers=fault.headers)
        response.content_type = fault.content_type
        return response
