"""What the keyless REST sources (Binance, Kraken) share: the poll loop, the declared
retry policy, health updates and reporting of bad records.

A subclass implements :meth:`PollingSource.request`: one HTTP request turned into
valid ticks, raising an :class:`~cryptostream.source.coincap.ApiError` subclass
(the same error classes as CoinCap, so the policy reads the same everywhere):

* :class:`RateLimited` (429, and Binance's 418 ban): wait what ``Retry-After`` says;
* :class:`ClientError` (a 4xx, an unknown market): retry every ``max_backoff`` seconds;
* :class:`TransientError` (timeouts, 5xx, bodies that are not the documented JSON):
  capped exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import tenacity

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.retry import log_retries
from cryptostream.source.base import BadRecords, Emit, SourceHealth, poll_slots
from cryptostream.source.coincap import (
    ApiError,
    AuthFailed,
    ClientError,
    RateLimited,
    TransientError,
)
from cryptostream.tick import InvalidTick, Tick

log = get_logger(__name__)


class HttpAnswer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class PollingSource:
    """Polls on a drift-free grid; each poll retries per the declared policy."""

    name = "rest"

    def __init__(
        self,
        *,
        assets: tuple[str, ...],
        markets: Mapping[str, str],
        interval: float,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        timeout: float,
        retry_deadline: float,
        max_backoff: float,
    ) -> None:
        #: CoinCap id -> the exchange's market name, for the configured assets it lists.
        self.markets = {a: markets[a] for a in assets if a in markets}
        self.unpriced = tuple(a for a in assets if a not in markets)
        self._interval = interval
        self._session = session
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._retry_deadline = retry_deadline
        self._max_backoff = max_backoff
        self.health = SourceHealth()
        # (asset, reason) pairs already logged: a record that stays bad is said once.
        self._bad = BadRecords(self.name, metrics)
        self._missing_reported: set[str] = set()

    # -- the loop ----------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        log.info(
            "source_polling",
            source=self.name,
            markets=self.markets,
            interval=self._interval,
        )
        if self.unpriced:
            log.warning(
                "assets_not_on_source",
                source=self.name,
                assets=list(self.unpriced),
                hint=f"add coincap-id=MARKET entries to the [{self.name}] mapping",
            )
        expected = 0
        async for slot in poll_slots(self._interval):
            if slot > expected:
                self._metrics.polls_missed.inc(slot - expected)
                log.warning(
                    "polls_skipped",
                    source=self.name,
                    count=slot - expected,
                    reason="previous poll overran",
                )
            expected = slot + 1
            emit(await self.poll_once())

    async def poll_once(self) -> list[Tick]:
        """One poll with retries: the valid ticks, or none if the poll was given up."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(ApiError),
            wait=self._wait,
            stop=tenacity.stop_after_delay(self._retry_deadline),
            before_sleep=log_retries("api_request_failed", lambda: {"source": self.name}),
            sleep=asyncio.sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    ticks = await self._attempt()
        except ApiError as exc:
            log.error("poll_failed", source=self.name, kind=exc.kind, error=str(exc))
            return []
        if attempts > 1:
            log.info("api_recovered", source=self.name, attempts=attempts)
        return ticks

    async def _attempt(self) -> list[Tick]:
        try:
            ticks = await self.request()
        except ApiError as exc:
            self.health.failed(str(exc))
            raise
        if ticks:
            self.health.ok()
        else:
            # An answer without one usable price is no better than no answer.
            self.health.failed("no valid record in the answer")
        return ticks

    async def request(self) -> list[Tick]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- retry policy ------------------------------------------------------------------

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = tenacity.wait_exponential_jitter(max=self._max_backoff)
        if isinstance(exc, RateLimited):
            return exc.retry_after if exc.retry_after is not None else backoff(state)
        if isinstance(exc, AuthFailed | ClientError):
            # Our request is wrong (an unknown market, say): asking fast will not fix it.
            return self._max_backoff
        return backoff(state)

    def count(self, outcome: str) -> None:
        self._metrics.api_requests.labels(outcome).inc()
        self._metrics.source_requests.labels(self.name, outcome).inc()

    async def get(self, url: str, params: Mapping[str, str]) -> HttpAnswer:
        """One GET; connection problems and timeouts become :class:`TransientError`."""
        try:
            async with self._session.get(
                url,
                params=params,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            ) as resp:
                answer = HttpAnswer(resp.status, await resp.read(), dict(resp.headers))
        except TimeoutError:
            self.count("timeout")
            raise TransientError(f"no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            self.count("connection_error")
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        self.count(str(answer.status))
        return answer

    def reject(self, asset: str, exc: InvalidTick) -> None:
        """Count a bad record; log it the first time it is bad in a row."""
        self._bad.reject(asset, exc)

    def accepted(self, ticks: list[Tick]) -> list[Tick]:
        """Bookkeeping after a response: forgive records that are good again, and say
        once which configured markets the answer lacked."""
        seen = {t.id for t in ticks}
        self._bad.good(seen)
        missing = [
            a
            for a in self.markets
            if a not in seen and a not in self._missing_reported and not self._bad.failing(a)
        ]
        if missing and ticks:
            self._missing_reported.update(missing)
            log.warning(
                "assets_not_in_response",
                source=self.name,
                assets=missing,
                markets=[self.markets[a] for a in missing],
            )
        return ticks


def now() -> float:
    """Wall-clock time, Unix seconds: when a source has no event time of its own."""
    return time.time()


def short(data: Any, limit: int = 200) -> str:
    """A one-line, bounded rendering of an API's error detail."""
    return " ".join(str(data).split())[:limit]
