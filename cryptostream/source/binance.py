"""Binance spot market data, keyless: ``GET /api/v3/ticker/24hr?symbols=[...]``.

One request per poll answers every configured market (``binance.symbols`` maps
CoinCap ids to Binance symbols, e.g. ``bitcoin=BTCUSDT``). Field mapping, all
exact text as Binance sends it:

==================== ======================================================
tick field           Binance 24 h ticker field
==================== ======================================================
``priceUsd``         ``lastPrice`` (the USDT quote, taken as USD)
``changePercent24Hr`` ``priceChangePercent`` (rolling 24 h)
``vwap24Hr``         ``weightedAvgPrice`` (rolling 24 h)
``timestamp``        ``closeTime`` (ms; the statistics' as-of time)
``symbol``/``name``  from :mod:`cryptostream.source.assets`
==================== ======================================================

Limits are Binance's, per IP: every answer reports the request weight used in
the current minute (``X-MBX-USED-WEIGHT-1m``); this request weighs 2 for up to
20 symbols, 40 up to 100, 80 beyond. The source stays within ``binance.max_weight``
per minute by waiting for the next minute when the next request would exceed it.
A 429 means back off for ``Retry-After`` seconds; ignoring it earns a 418, an IP ban
for ``Retry-After`` seconds. Both waits hold across polls: no request is sent to
Binance before the time it gave.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from cryptostream import clocks
from cryptostream.chain import asset_mapping
from cryptostream.config import Config
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.source.http import (
    HttpAnswer,
    HttpClient,
    RateLimited,
    RetryPolicy,
    TransientError,
    describe_body,
    error_text,
    parse_retry_after,
)
from cryptostream.source.rest import PollingSource
from cryptostream.tick import Tick

log = get_logger(__name__)

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1m"
_WINDOW = 60.0  # Binance's weight window: the calendar minute
_WINDOW_MARGIN = 0.5  # wait this much past the minute: our clock and theirs differ a little
#: What to check, added to the message of a 4xx answer.
_HINTS = {
    400: "; check binance.symbols",
    451: "; Binance does not serve this location: use another source",
}


class IpBanned(RateLimited):
    """418: Binance banned this IP for not backing off after 429s."""

    kind = "banned"


def request_weight(symbols: int) -> int:
    """Weight of one ``ticker/24hr`` request with ``symbols`` symbols (Binance's table)."""
    if symbols <= 20:
        return 2
    if symbols <= 100:
        return 40
    return 80


class BinanceSource(PollingSource):
    name = "binance"

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        b = config.binance
        super().__init__(
            assets=config.source.assets,
            markets=asset_mapping(b.symbols),
            interval=config.source.poll_interval,
            metrics=metrics,
            retry=RetryPolicy(self.name, deadline=b.retry_deadline, max_backoff=b.max_backoff),
        )
        self._http = HttpClient(
            session, metrics, source=self.name, timeout=b.timeout, api="Binance"
        )
        self._url = b.base_url.rstrip("/") + "/api/v3/ticker/24hr"
        self._by_symbol = {symbol: asset for asset, symbol in self.markets.items()}
        # Binance wants a JSON array: symbols=["BTCUSDT","ETHUSDT"] (no spaces).
        self._params = {"symbols": json.dumps(list(self.markets.values()), separators=(",", ":"))}
        self.weight = request_weight(len(self.markets))
        # A budget below one request would never let a request out.
        self._budget = max(b.max_weight, self.weight)
        self._clock = clock  # Binance's weight windows are minutes of the wall clock
        self._monotonic = monotonic
        self._used = 0
        self._used_window = -1
        #: Monotonic time before which Binance asked us not to call (429/418): a wall
        #: clock stepping back never stretches a ban.
        self.blocked_until = 0.0
        self._budget_logged_window = -1

    async def _respect_limits(self) -> None:
        wait = self.blocked_until - self._monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = self._clock()
        window = int(t // _WINDOW)
        if window == self._used_window and self._used + self.weight > self._budget:
            wait = (window + 1) * _WINDOW - t + _WINDOW_MARGIN
            if self._budget_logged_window != window:
                self._budget_logged_window = window
                log.warning(
                    "binance_weight_budget_reached",
                    used=self._used,
                    budget=self._budget,
                    wait=round(wait, 2),
                )
            await asyncio.sleep(wait)

    def _note_weight(self, answer: HttpAnswer) -> None:
        t = self._clock()
        window = int(t // _WINDOW)
        try:
            used = int(answer.headers[WEIGHT_HEADER])
        except (KeyError, ValueError):
            # No header (a proxy stripped it?): count our own weight instead.
            used = (self._used if window == self._used_window else 0) + self.weight
        self._used, self._used_window = used, window

    async def request(self) -> list[Tick]:
        await self._respect_limits()
        answer = await self._http.get(self._url, self._params)
        self._note_weight(answer)
        try:
            if answer.status == 418:
                raise IpBanned(
                    f"418 IP banned by Binance: {error_text(answer.body, self._http.expected)}",
                    parse_retry_after(answer.headers.get("Retry-After")),
                    418,
                )
            body = self._http.check(answer, _HINTS)
        except RateLimited as exc:
            # Both waits hold across polls: nothing goes to Binance before that time.
            if exc.retry_after is not None:
                self.blocked_until = self._monotonic() + exc.retry_after
            raise
        return self.to_ticks(body)

    def to_ticks(self, body: bytes) -> list[Tick]:
        try:
            # parse_float keeps any bare number as its exact text; prices come as strings.
            data = json.loads(body, parse_float=str)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise TransientError(describe_body(body, self._http.expected)) from None
        if isinstance(data, dict) and "symbol" in data:
            data = [data]  # the single-symbol form of the same endpoint
        if not isinstance(data, list):
            raise TransientError("JSON that is not a list of tickers")
        received = clocks.wall.now()

        def keyed(record: Any) -> tuple[str | None, str, Any]:
            symbol = record.get("symbol") if isinstance(record, dict) else None
            if not isinstance(symbol, str):
                return None, "?", record
            return self._by_symbol.get(symbol), symbol, record

        def tick(asset: str, record: dict[str, Any]) -> Tick:
            return self.market_tick(
                asset,
                _close_time(record.get("closeTime"), received),
                price=record.get("lastPrice"),
                change=record.get("priceChangePercent"),
                vwap=record.get("weightedAvgPrice"),
            )

        return self.collect(map(keyed, data), tick)


def _close_time(value: Any, fallback: float) -> float:
    """``closeTime`` (epoch ms) as Unix seconds; our receive time if it is unusable."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 32503680000000:
        return value / 1000.0
    return fallback
