"""CoinCap API v3 source: one ``GET /assets?ids=...`` per poll, with declared retries.

Errors are sorted into what the retry policy needs to know:

* :class:`RateLimited` (429): wait what ``Retry-After`` says;
* :class:`AuthFailed` (401/403) and other 4xx: retry slowly, never hammer;
* :class:`TransientError` (timeouts, connection errors, 5xx, a body that is not
  the documented JSON envelope): capped exponential backoff with jitter.

Bodies are never trusted: HTML from a proxy, an empty body or truncated JSON all
become a :class:`TransientError` with a short description, never a crash.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import tenacity

from cryptostream.config import CoinCapConfig, Config
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.retry import log_retries
from cryptostream.source.base import BadRecords, Emit, SourceHealth, poll_slots
from cryptostream.tick import InvalidTick, Tick, tick_from_api

log = get_logger(__name__)

MAX_RETRY_AFTER = 600.0
T = TypeVar("T")


class ApiError(Exception):
    kind = "error"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(ApiError):
    kind = "transient"


class RateLimited(ApiError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


class AuthFailed(ApiError):
    kind = "auth"


class ClientError(ApiError):
    kind = "client_error"


@dataclass(frozen=True, slots=True)
class AssetsResponse:
    #: Event time of the response, Unix seconds (the envelope's ``timestamp``).
    timestamp: float
    records: list[Any]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _describe_body(body: bytes) -> str:
    if not body.strip():
        return "empty body"
    head = body.lstrip()[:1]
    if head == b"<":
        return "HTML instead of JSON"
    return f"{len(body)} bytes that are not the JSON envelope"


def _error_text(body: bytes) -> str:
    """The API's own error message when it sent one, short and single-line."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _describe_body(body)
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return " ".join(data[key].split())[:200]
    return _describe_body(body)


def parse_envelope(body: bytes) -> AssetsResponse:
    """Parse ``{"data": [...], "timestamp": ms}``; numbers stay exact text."""
    try:
        # parse_float/int keep the digits as sent; no float ever touches a price.
        data = json.loads(body, parse_float=str, parse_int=str)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TransientError(_describe_body(body)) from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TransientError("JSON without a data list")
    raw_ts = data.get("timestamp")
    try:
        timestamp = int(raw_ts) / 1000.0 if raw_ts is not None else None
    except (TypeError, ValueError):
        timestamp = None
    if timestamp is None or not 0 < timestamp < 32503680000:
        # The envelope always carries it; if a proxy strips it, our clock will do.
        log.warning("api_timestamp_missing", value=str(raw_ts)[:40])
        timestamp = time.time()
    return AssetsResponse(timestamp, data["data"])


class CoinCapClient:
    def __init__(
        self,
        config: CoinCapConfig,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        health: SourceHealth | None = None,
        source: str = "coincap",
    ):
        self._config = config
        self._session = session
        self._metrics = metrics
        # Every /assets attempt updates it: failover watches each attempt, not just
        # the end of a retry sequence that may last minutes.
        self._health = health
        self._source = source
        self._base = config.base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {config.api_key.get()}",
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
        }
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._failing_since: float | None = None

    async def get_assets(self, ids: tuple[str, ...]) -> AssetsResponse:
        """One request, no retries. Raises an :class:`ApiError` subclass."""
        try:
            response = parse_envelope(await self.get("/assets", {"ids": ",".join(ids)}))
        except ApiError as exc:
            self._metrics.source_requests.labels(self._source, str(exc.status or exc.kind)).inc()
            if self._health is not None:
                self._health.failed(str(exc))
            raise
        self._metrics.source_requests.labels(self._source, "200").inc()
        if self._health is not None:
            self._health.ok()
        return response

    async def get_history(
        self, asset: str, interval: str, start_ms: int, end_ms: int
    ) -> AssetsResponse:
        """One ``/assets/{id}/history`` request: rows of ``{priceUsd, time, date}``."""
        params = {"interval": interval, "start": str(start_ms), "end": str(end_ms)}
        return parse_envelope(await self.get(f"/assets/{asset}/history", params))

    async def get(self, path: str, params: dict[str, str]) -> bytes:
        """GET ``base_url + path``; the body of a 200, else an :class:`ApiError` subclass."""
        try:
            async with self._session.get(
                self._base + path,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
            ) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            self._metrics.api_requests.labels("timeout").inc()
            raise TransientError(f"no answer within {self._config.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            self._metrics.api_requests.labels("connection_error").inc()
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        self._metrics.api_requests.labels(str(status)).inc()
        if status == 200:
            return body
        detail = _error_text(body)
        if status == 429:
            raise RateLimited(f"429 rate limited: {detail}", parse_retry_after(retry_after))
        if status in (401, 403):
            raise AuthFailed(
                f"{status} {detail}: check COINCAP_API_KEY and the plan's credits", status
            )
        if status >= 500:
            raise TransientError(f"{status} {detail}", status)
        raise ClientError(f"{status} {detail}", status)

    # -- retry policy ----------------------------------------------------------------

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = tenacity.wait_exponential_jitter(multiplier=1, max=self._config.max_backoff)
        if isinstance(exc, RateLimited):
            return exc.retry_after if exc.retry_after is not None else backoff(state)
        if isinstance(exc, AuthFailed | ClientError):
            return self._config.auth_retry_interval
        return backoff(state)

    async def fetch(self, ids: tuple[str, ...]) -> AssetsResponse:
        """``get_assets`` with the declared retry policy; raises after ``retry_deadline``."""
        return await self.retrying(lambda: self.get_assets(ids))

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` under the declared retry policy; raises after ``retry_deadline``."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(ApiError),
            wait=self._wait,
            stop=tenacity.stop_after_delay(self._config.retry_deadline),
            before_sleep=log_retries("api_request_failed", lambda: {"source": "coincap"}),
            sleep=asyncio.sleep,
            reraise=True,
        )
        attempts = 0
        async for attempt in retrying:
            with attempt:
                attempts += 1
                result = await call()
        if attempts > 1:
            log.info("api_recovered", attempts=attempts)
        return result


class CoinCapSource:
    """Polls ``/assets`` on a drift-free grid; validates every record on its own."""

    name = "coincap"

    def __init__(self, config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._assets = config.source.assets
        self._interval = config.source.poll_interval
        self.health = SourceHealth()
        self._client = CoinCapClient(config.coincap, session, metrics, health=self.health)
        self._metrics = metrics
        # (asset, reason) pairs already logged: a record that stays bad is said once.
        self._bad = BadRecords(self.name, metrics)
        self._missing_reported: set[str] = set()

    async def run(self, emit: Emit) -> None:
        log.info("coincap_polling", assets=list(self._assets), interval=self._interval)
        expected = 0
        async for slot in poll_slots(self._interval):
            if slot > expected:
                self._metrics.polls_missed.inc(slot - expected)
                log.warning("polls_skipped", count=slot - expected, reason="previous poll overran")
            expected = slot + 1
            emit(await self.poll_once())

    async def poll_once(self) -> list[Tick]:
        """Fetch once (with retries); the valid ticks, or none if the poll failed."""
        try:
            response = await self._client.fetch(self._assets)
        except ApiError as exc:
            log.error("poll_failed", kind=exc.kind, error=str(exc))
            return []
        return self.to_ticks(response)

    def to_ticks(self, response: AssetsResponse) -> list[Tick]:
        ticks: list[Tick] = []
        seen: set[str] = set()
        for record in response.records:
            asset = record.get("id") if isinstance(record, dict) else None
            label = asset if isinstance(asset, str) and asset else "?"
            try:
                tick = tick_from_api(record, response.timestamp, source=self.name)
            except InvalidTick as exc:
                self._bad.reject(label, exc)
                continue
            if tick.id not in self._assets or tick.id in seen:
                self._metrics.ticks_invalid.labels("unexpected_asset").inc()
                continue
            seen.add(tick.id)
            # A record that is good again may be reported again when it next fails.
            self._bad.good((tick.id,))
            ticks.append(tick)
        missing = [a for a in self._assets if a not in seen and a not in self._missing_reported]
        if missing and not any(self._bad.failing(a) for a in missing):
            self._missing_reported.update(missing)
            log.warning("assets_not_in_response", assets=missing, hint="check source.assets ids")
        return ticks
