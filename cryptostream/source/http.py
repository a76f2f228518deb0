"""What every HTTP price source shares: the error family, one counted GET, readable
error texts and the declared retry policy.

Errors are sorted into what the retry policy needs to know:

* :class:`RateLimited` (429): wait what ``Retry-After`` says;
* :class:`AuthFailed` (401/403 from an API that takes a key) and :class:`ClientError`
  (other 4xx, an unknown market): our request is wrong, so retry slowly, never hammer;
* :class:`TransientError` (timeouts, connection errors, 5xx, a body that is not the
  documented JSON): capped exponential backoff with jitter;
* *final* errors, never retried: :class:`AllowanceSpent` (the API's paid allowance, or
  our own budget of it, is used up until its reset) and :class:`UnknownAsset` (the API
  does not know what we asked for).

Bodies are never trusted: HTML from a proxy, an empty body or truncated JSON all
become a short description, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import tenacity

from cryptostream.clocks import http_date
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.retry import log_retries

log = get_logger(__name__)

MAX_RETRY_AFTER = 600.0
#: The most of one answer read into memory, decoded (after gzip): a bigger one is
#: refused as it arrives. The largest real answers are far below it (CoinCap's
#: ``/assets`` for 2,000 ids about 0.9 MB, a day of m1 history about 140 KB), so only a
#: broken upstream or proxy (or a gzip bomb: a few KB that decode to hundreds of MB)
#: reaches it.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024
T = TypeVar("T")


class ApiError(Exception):
    kind = "error"
    #: Retrying cannot help: the retry policy gives up at once.
    final = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(ApiError):
    kind = "transient"


class AnswerTooLarge(TransientError):
    """An answer bigger than :data:`MAX_ANSWER_BYTES` decoded: refused, its rest unread.
    ``nbytes`` is what was read (and decoded) before it was refused."""

    kind = "too_large"

    def __init__(self, message: str, nbytes: int, status: int) -> None:
        super().__init__(message, status)
        self.nbytes = nbytes


class RateLimited(ApiError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None, status: int = 429) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class AuthFailed(ApiError):
    kind = "auth"


class ClientError(ApiError):
    kind = "client_error"


class UnknownAsset(ClientError):
    kind = "unknown_asset"
    final = True

    def __init__(self, asset: str, message: str) -> None:
        super().__init__(message, 404)
        self.asset = asset


class AllowanceSpent(ApiError):
    """No request goes out until the billing period resets (or the hourly probe)."""

    kind = "allowance_spent"
    final = True


#: Words of an answer about the monthly allowance. "limit" is not one of them: a rate
#: limit (``{"error": "Rate limit exceeded"}``, a proxy's "limit: 10 r/s" page) says it.
_SPENT_WORDS = re.compile(rb"\b(?:credits?|monthly|plan|quota|upgrade)\b", re.IGNORECASE)


def says_allowance_spent(answer: HttpAnswer) -> bool:
    """An answer saying the paid allowance is used up, as opposed to a rate limit: a 429
    without ``Retry-After`` whose body speaks of the monthly allowance (credits, monthly,
    the plan, a quota, an upgrade); a 402; a 403 that speaks of them. A 429 that does not
    is a rate limit (:class:`RateLimited`, capped backoff)."""
    status = answer.status
    if status == 402:
        return True
    if status == 429 and answer.headers.get("Retry-After"):
        return False  # a rate limit: wait what it says
    return status in (403, 429) and _SPENT_WORDS.search(answer.body[:4096]) is not None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = http_date(value)
        if when is None:
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def short(data: Any, limit: int = 200) -> str:
    """A one-line, bounded rendering of an API's error detail."""
    return " ".join(str(data).split())[:limit]


def describe_body(body: bytes, expected: str) -> str:
    """Why ``body`` is not the ``expected`` JSON: empty, a proxy's HTML page, or other."""
    if not body.strip():
        return "empty body"
    if body.lstrip()[:1] == b"<":
        return "HTML instead of JSON"
    return f"{len(body)} bytes that are not {expected}"


def error_text(body: bytes, expected: str) -> str:
    """The API's own error message when it sent one (``error``, ``message`` or
    Binance's ``msg`` with its ``code``), short and single-line; else what the body is."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "msg"):
            text = data.get(key)
            if isinstance(text, str):
                return short(f"{text} (code {data['code']})" if "code" in data else text)
    return describe_body(body, expected)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str]


class HttpClient:
    """GETs of one source: each counted by outcome, failures sorted into the error family.

    ``api`` names the API in error texts ("Kraken"); ``auth_hint``, for an API that
    takes a key, turns 401/403 into :class:`AuthFailed` with that hint (a keyless
    API's 403 refuses the request, it says nothing about a key: a ClientError).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        source: str,
        timeout: float,
        api: str,
        headers: Mapping[str, str] | None = None,
        auth_hint: str | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._max_bytes = max_bytes
        self._session = session
        self._metrics = metrics
        self._source = source
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._api = api
        #: What the API's answers should be, for describing those that are not.
        self.expected = f"{api}'s JSON"
        self._headers = {"Accept": "application/json", **(headers or {})}
        self._auth_hint = auth_hint

    def _count(self, outcome: str) -> None:
        self._metrics.api_requests.labels(outcome).inc()
        self._metrics.source_requests.labels(self._source, outcome).inc()

    async def get(self, url: str, params: Mapping[str, str]) -> HttpAnswer:
        """One GET, any status; connection problems and timeouts become TransientError."""
        try:
            async with self._session.get(
                url, params=params, headers=self._headers, timeout=self._timeout
            ) as resp:
                answer = HttpAnswer(resp.status, await self._read(resp), dict(resp.headers))
        except AnswerTooLarge as exc:
            self._count("too_large")
            log.warning(
                "api_answer_too_large",
                source=self._source,
                status=exc.status,
                read_bytes=exc.nbytes,
                limit_bytes=self._max_bytes,
            )
            raise
        except TimeoutError:
            self._count("timeout")
            raise TransientError(f"no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            self._count("connection_error")
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        self._count(str(answer.status))
        return answer

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The decoded body, read a chunk at a time: :class:`AnswerTooLarge` as soon as
        it passes ``max_bytes`` (never the whole of a huge or endless answer in memory)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self._max_bytes:
                raise AnswerTooLarge(
                    f"{self._api} answered more than {self._max_bytes:,} bytes "
                    f"(HTTP {resp.status}): refused unread past that",
                    size,
                    resp.status,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def check(self, answer: HttpAnswer, hints: Mapping[int, str] | None = None) -> bytes:
        """The body of a 200; any other status raised as its :class:`ApiError`
        (``hints`` add what to check to the message of a 4xx status)."""
        status = answer.status
        if status == 200:
            return answer.body
        detail = error_text(answer.body, self.expected)
        if status == 429:
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            raise RateLimited(f"429 rate limited by {self._api}: {detail}", retry_after)
        if status >= 500:
            raise TransientError(f"{status} {detail}", status)
        if status in (401, 403) and self._auth_hint is not None:
            raise AuthFailed(f"{status} {detail}: {self._auth_hint}", status)
        raise ClientError(f"{status} {detail}{(hints or {}).get(status, '')}", status)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The declared retry policy of one source's requests.

    Waits ``Retry-After`` after a :class:`RateLimited` (backoff when it gave none),
    ``slow_interval`` (default ``max_backoff``) after an :class:`AuthFailed` or
    :class:`ClientError`, capped exponential backoff with jitter otherwise; gives up
    after ``deadline`` seconds, re-raising the last error.
    """

    source: str
    deadline: float
    max_backoff: float
    slow_interval: float | None = None

    def wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = tenacity.wait_exponential_jitter(max=self.max_backoff)
        if isinstance(exc, RateLimited):
            return exc.retry_after if exc.retry_after is not None else backoff(state)
        if isinstance(exc, AuthFailed | ClientError):
            # Our request is wrong (a bad key, an unknown market): asking fast won't fix it.
            return self.max_backoff if self.slow_interval is None else self.slow_interval
        return backoff(state)

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it succeeds or the deadline passes; says when it recovered."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, ApiError) and not e.final),
            wait=self.wait,
            stop=tenacity.stop_after_delay(self.deadline),
            before_sleep=log_retries("api_request_failed", lambda: {"source": self.source}),
            sleep=asyncio.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                result = await call()
        attempts = attempt.retry_state.attempt_number
        if attempts > 1:
            log.info("api_recovered", source=self.source, attempts=attempts)
        return result
