"""What the fake API servers share: a real aiohttp server on 127.0.0.1 (by default on a
free port), request recording and FIFO fault injection with :class:`Fault`.

:meth:`FakeHttpServer.inject` appends faults to a FIFO queue. Each request consumes
(one use of) the *first* queued fault whose ``path_prefix`` matches its path. Faults
apply before the API's own handling (like a gateway or rate limiter in front of the
API); :meth:`Fault.delay` then lets the request continue normally.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FaultKind = Literal["status", "body", "delay", "records", "disconnect"]

_REDACTED = "***"


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fault:
    """One scripted misbehaviour; build it with the class methods, not the constructor.

    ``path_prefix`` (``None``: every path) selects the requests it applies to, ``times``
    how many matching requests it affects (``None``: until ``clear_faults()``).
    """

    kind: FaultKind
    http_status: int = 200
    payload: str | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    asset_records: tuple[Mapping[str, Any], ...] = ()
    path_prefix: str | None = None
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 (or None for 'until cleared')")
        if self.seconds < 0:
            raise ValueError("seconds must be >= 0")

    @classmethod
    def status(
        cls,
        status: int,
        *,
        body: str | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        path_prefix: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer ``status`` with ``body`` (default: the server's own error body)."""
        return cls(
            kind="status",
            http_status=status,
            payload=body,
            content_type=content_type,
            headers=dict(headers or {}),
            path_prefix=path_prefix,
            times=times,
        )

    @classmethod
    def body(
        cls,
        body: str,
        *,
        status: int = 200,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        path_prefix: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer exactly ``body`` (e.g. truncated JSON, ``""``) with status 200."""
        return cls(
            kind="body",
            http_status=status,
            payload=body,
            content_type=content_type,
            headers=dict(headers or {}),
            path_prefix=path_prefix,
            times=times,
        )

    @classmethod
    def delay(
        cls, seconds: float, *, path_prefix: str | None = None, times: int | None = 1
    ) -> Fault:
        """Sleep ``seconds`` (cut short by ``stop()``), then answer normally."""
        return cls(kind="delay", seconds=seconds, path_prefix=path_prefix, times=times)

    @classmethod
    def records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        path_prefix: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer 200 with exactly these records, in the API's envelope.

        Only servers with an envelope of records answer it (the fake CoinCap's
        ``/v3/assets``, for bad-record tests); the records are deep-copied now, so
        later changes to the caller's dicts do not leak into the answer.
        """
        frozen = tuple(copy.deepcopy(dict(record)) for record in records)
        return cls(kind="records", asset_records=frozen, path_prefix=path_prefix, times=times)

    @classmethod
    def disconnect(cls, *, path_prefix: str | None = None, times: int | None = 1) -> Fault:
        """Close the connection without sending any response bytes.

        Note: aiohttp's ``ClientSession`` transparently retries an idempotent request
        (GET) once after ``ServerDisconnectedError``, so an aiohttp client only sees the
        error when two disconnects happen in a row (``times=2``).
        """
        return cls(kind="disconnect", path_prefix=path_prefix, times=times)

    def matches(self, path: str) -> bool:
        return self.path_prefix is None or path.startswith(self.path_prefix)


@dataclasses.dataclass
class _QueuedFault:
    fault: Fault
    remaining: int | None


# --------------------------------------------------------------------------------------
# Request recording
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class RecordedRequest:
    """A request as the fake saw it (the ``repr`` masks API keys).

    ``monotonic`` is :func:`time.monotonic` at arrival; ``status`` is the answer's status
    once sent (``None`` while in flight or when the connection was dropped).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    monotonic: float
    status: int | None = None
    fault: FaultKind | None = None
    #: Length of the answer's body as sent (None while in flight or for a stream).
    body_bytes: int | None = None

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def __repr__(self) -> str:
        headers = {
            k: (_REDACTED if k.lower() == "authorization" else v) for k, v in self.headers.items()
        }
        query = {k: (_REDACTED if k == "apiKey" else v) for k, v in self.query.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, query={query!r}, "
            f"headers={headers!r}, monotonic={self.monotonic!r}, status={self.status!r}, "
            f"fault={self.fault!r}, body_bytes={self.body_bytes!r})"
        )


def _body_bytes(response: web.StreamResponse) -> int | None:
    if isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
        return len(response.body)
    return None


class _RedactingAccessLogger(AbstractAccessLogger):
    """Access log without query strings or headers, so an API key never reaches a log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s -> %s (%.1f ms)", request.method, request.path, response.status, time * 1000
        )


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class FakeHttpServer:
    """Subclasses add routes in :meth:`routes` and may override :meth:`error_body`,
    :meth:`answer` (what runs after the faults) and :meth:`records_response`."""

    #: Path prefix of the API, part of :attr:`base_url` (CoinCap's ``/v3``).
    base_path: ClassVar[str] = ""
    #: Where the access log goes (``None``: no access log); queries are never logged.
    access_log: ClassVar[logging.Logger | None] = None

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
        """``http://HOST:PORT`` plus :attr:`base_path`, once started."""
        if self._base_url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._base_url

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._stopping = asyncio.Event()
        self._new_request = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        runner = web.AppRunner(
            app,
            access_log=self.access_log,
            access_log_class=_RedactingAccessLogger,
            handler_cancellation=True,
            # A fake must never hold a test up: in-flight handlers get a second.
            shutdown_timeout=1.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.port = int(bound_port)
        url_host = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self._base_url = f"http://{url_host}:{self.port}{self.base_path}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()  # releases pending Fault.delay sleeps
        await runner.cleanup()
        self._base_url = None

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

    @property
    def pending_faults(self) -> list[Fault]:
        return [q.fault for q in self._faults]

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
        """Number of recorded requests whose path starts with ``path_prefix``."""
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
        """Wait until at least ``n`` requests to ``path_prefix`` arrived; return them.

        Raises :class:`TimeoutError` (with the count seen) after ``timeout`` seconds.
        """
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

    # -- what subclasses may change ----------------------------------------------------

    def error_body(self, status: int, message: str) -> str:
        """The JSON body of a faulted status without an explicit body."""
        return json.dumps({"error": message})

    async def answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The API's own answer to a request no fault cut short."""
        return await handler(request)

    def records_response(self, fault: Fault) -> web.StreamResponse:
        raise ValueError(f"{type(self).__name__} does not serve Fault.records")

    # -- plumbing ----------------------------------------------------------------------

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
                recorded.body_bytes = _body_bytes(early)
                return early
        response = await self.answer(request, handler)
        recorded.status = response.status
        recorded.body_bytes = _body_bytes(response)
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
            return self.records_response(fault)
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
