"""CoinCap API v3: the client (``/assets``, ``/assets/{id}``, history) and the polling
source, one ``GET /assets?ids=...`` per poll.

Every request carries the key as a bearer token; 401/403 become
:class:`~cryptostream.source.http.AuthFailed`, retried every
``coincap.auth_retry_interval`` seconds. The rest of the error handling and the
retry policy are the shared ones of :mod:`cryptostream.source.http`.

Credits: with a :class:`~cryptostream.credits.CreditBudget`, every request first asks
it whether it may go out (else :class:`~cryptostream.source.http.AllowanceSpent`,
without touching the network), and every answer is counted in the ledger. An answer
saying the allowance is spent marks CoinCap exhausted until the billing period ends.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from cryptostream.clocks import ClockSkew, date_header, wall
from cryptostream.config import CoinCapConfig, Config
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.source.base import Emit
from cryptostream.source.http import (
    AllowanceSpent,
    AnswerTooLarge,
    ClientError,
    HttpClient,
    RetryPolicy,
    TransientError,
    UnknownAsset,
    describe_body,
    error_text,
    says_allowance_spent,
)
from cryptostream.source.rest import PollingSource
from cryptostream.tick import InvalidTick, Tick, tick_from_api

if TYPE_CHECKING:  # the credits package imports the source package
    from cryptostream.credits import CreditBudget

log = get_logger(__name__)

T = TypeVar("T")
_ENVELOPE = "the JSON envelope"


@dataclass(frozen=True, slots=True)
class AssetsResponse:
    #: Event time of the response, Unix seconds (the envelope's ``timestamp``).
    timestamp: float
    records: list[Any]
    #: Whether ``timestamp`` is CoinCap's (else this machine's: the envelope lacked it).
    from_api: bool = True
    #: The answer's HTTP ``Date`` header, Unix seconds (None: missing or unreadable).
    date: float | None = None
    #: This machine's clock when the answer arrived.
    received: float = 0.0


def parse_envelope(body: bytes, date: float | None = None) -> AssetsResponse:
    """Parse ``{"data": [...], "timestamp": ms}``; numbers stay exact text. ``date`` is
    the answer's ``Date`` header, kept as a second witness of CoinCap's clock."""
    try:
        # parse_float/int keep the digits as sent; no float ever touches a price.
        data = json.loads(body, parse_float=str, parse_int=str)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TransientError(describe_body(body, _ENVELOPE)) from None
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
        now = wall.now()
        return AssetsResponse(now, data["data"], from_api=False, date=date, received=now)
    return AssetsResponse(timestamp, data["data"], date=date, received=wall.now())


def record_label(record: Any) -> str:
    """A record's asset id for reports about it; ``?`` when it has none."""
    asset = record.get("id") if isinstance(record, dict) else None
    return asset if isinstance(asset, str) and asset else "?"


class CoinCapClient:
    """CoinCap requests: for the polling source, backfill and the price stream's
    metadata refresh. ``kind`` names their credits in the ledger (poll, refresh, backfill)."""

    def __init__(
        self,
        config: CoinCapConfig,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        source: str = "coincap",
        budget: CreditBudget | None = None,
        kind: str = "poll",
    ) -> None:
        self._budget = budget
        self.kind = kind
        self._base = config.base_url.rstrip("/")
        #: The ``Date`` header of the newest answer (Unix seconds), CoinCap's clock.
        self.last_date: float | None = None
        self._http = HttpClient(
            session,
            metrics,
            source=source,
            timeout=config.timeout,
            api="CoinCap",
            headers={
                "Authorization": f"Bearer {config.api_key.get()}",
                "Accept-Encoding": "gzip, deflate",
            },
            auth_hint="check COINCAP_API_KEY and the plan's credits",
        )
        self.policy = RetryPolicy(
            source,
            deadline=config.retry_deadline,
            max_backoff=config.max_backoff,
            slow_interval=config.auth_retry_interval,
        )

    async def get(self, path: str, params: dict[str, str], *, cost: int | None = None) -> bytes:
        """GET ``base_url + path``; the body of a 200, else an ApiError subclass.
        ``cost``: the credits the answer is expected to cost, checked against the budget
        before the request is sent (see :meth:`CreditBudget.refusal`)."""
        budget = self._budget
        if budget is not None:
            reason = budget.refusal(self.kind, cost)
            if reason is not None:
                raise AllowanceSpent(reason)
        try:
            answer = await self._http.get(self._base + path, params)
        except AnswerTooLarge as exc:
            # What was read is counted, as every answer is: by its decoded size.
            if budget is not None:
                budget.charged(self.kind, exc.status or 200, exc.nbytes)
            raise
        self.last_date = date_header(answer.headers)
        if budget is not None:
            budget.charged(self.kind, answer.status, len(answer.body))
        if says_allowance_spent(answer):
            detail = error_text(answer.body, self._http.expected)
            if budget is not None:
                budget.spent_by_api(detail)
            raise AllowanceSpent(f"{answer.status} CoinCap says the allowance is spent: {detail}")
        body = self._http.check(answer)
        if budget is not None:
            budget.answered()
        return body

    async def get_asset(self, asset: str) -> bytes:
        """``/assets/{id}``; an id CoinCap does not know is :class:`UnknownAsset`."""
        try:
            return await self.get(f"/assets/{asset}", {})
        except ClientError as exc:
            if exc.status == 404:
                raise UnknownAsset(asset, f"CoinCap does not know the asset {asset!r}") from None
            raise

    async def get_assets(self, ids: tuple[str, ...]) -> AssetsResponse:
        """One ``/assets`` request, no retries. Raises an ApiError subclass."""
        body = await self.get("/assets", {"ids": ",".join(ids)})
        return parse_envelope(body, self.last_date)

    async def get_history(
        self, asset: str, interval: str, start_ms: int, end_ms: int, *, cost: int | None = None
    ) -> AssetsResponse:
        """One ``/assets/{id}/history`` request: rows of ``{priceUsd, time, date}``;
        ``cost`` is its expected credits (by its rows), checked before it is sent."""
        params = {"interval": interval, "start": str(start_ms), "end": str(end_ms)}
        body = await self.get(f"/assets/{asset}/history", params, cost=cost)
        return parse_envelope(body, self.last_date)

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` under the declared retry policy; raises after ``retry_deadline``."""
        return await self.policy.run(call)


class CoinCapSource(PollingSource):
    """Polls ``/assets`` on a drift-free grid; validates every record on its own."""

    name = "coincap"
    missing_event = "assets_unknown"
    missing_hint = "CoinCap does not know these ids: check source.assets (e.g. binance-coin)"

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        budget: CreditBudget | None = None,
        skew: ClockSkew | None = None,
    ) -> None:
        self._budget = budget
        self._skew = skew if skew is not None else ClockSkew(metrics)
        self._client = CoinCapClient(
            config.coincap, session, metrics, source=self.name, budget=budget, kind="poll"
        )
        self._assets = config.source.assets
        super().__init__(
            assets=self._assets,
            # CoinCap's markets are its asset ids.
            markets={a: a for a in self._assets},
            interval=config.source.poll_interval,
            metrics=metrics,
            retry=self._client.policy,
        )

    async def run(self, emit: Emit) -> None:
        try:
            await super().run(emit)
        finally:
            # Shutdown (or a failover stopping this source): what it spent is written.
            if self._budget is not None:
                self._budget.close()

    def due(self) -> bool:
        return self._budget is None or self._budget.poll_due()

    async def request(self) -> list[Tick]:
        response = await self._client.get_assets(self._assets)
        # The ticks carry CoinCap's time, whatever this machine's clock says: measured
        # and said (once), never a reason to refuse them.
        self._skew.observe(
            self.name,
            response.timestamp if response.from_api else None,
            local=response.received,
            date=response.date,
        )
        ticks: list[Tick] = []
        seen: set[str] = set()
        for record in response.records:
            try:
                tick = tick_from_api(record, response.timestamp, source=self.name)
            except InvalidTick as exc:
                self._bad.reject(record_label(record), exc)
                continue
            if tick.id not in self.markets or tick.id in seen:
                self.unexpected(tick.id)
                continue
            seen.add(tick.id)
            ticks.append(tick)
        return self.accepted(ticks)
