"""Kraken spot market data, keyless: ``GET /0/public/Ticker?pair=XXBTZUSD,XETHZUSD,...``.

One request per poll answers every configured pair (``kraken.pairs`` maps CoinCap
ids to Kraken pairs). Kraken answers ``{"error": [...], "result": {PAIR: {...}}}``
and keys ``result`` by its canonical pair name (``XXBTZUSD`` even when asked for
``XBTUSD``); both spellings are accepted in the mapping. Field mapping, exact text:

==================== ======================================================
tick field           Kraken ticker field
==================== ======================================================
``priceUsd``         ``c[0]``: price of the last trade (USD pairs: real USD)
``vwap24Hr``         ``p[1]``: volume-weighted average price, last 24 hours
``changePercent24Hr`` always empty (see below)
``timestamp``        when the answer arrived (Kraken's ticker has no time)
``symbol``/``name``  from :mod:`cryptostream.source.assets`
==================== ======================================================

Kraken's ticker carries no 24-hour change: its only opening price ``o`` is
*today's* open (since 00:00 UTC), and the change since midnight is not the change
over 24 hours. Rather than publish a number that means something else, the cell
is left empty.

Errors come in the ``error`` list, mostly with HTTP 200: ``EGeneral:Too many
requests`` / ``EAPI:Rate limit exceeded`` back off; ``EQuery:Unknown asset pair``
(the whole request fails when one pair is unknown) is a configuration problem,
retried slowly; ``EService:*`` is transient.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from cryptostream import clocks
from cryptostream.chain import asset_mapping
from cryptostream.config import Config
from cryptostream.metrics import Metrics
from cryptostream.source.http import (
    ClientError,
    HttpClient,
    RateLimited,
    RetryPolicy,
    TransientError,
    describe_body,
    short,
)
from cryptostream.source.rest import PollingSource
from cryptostream.tick import InvalidTick, Tick

_FIAT = ("USD", "EUR", "GBP", "CAD", "JPY", "CHF", "AUD")
_RATE_LIMIT_ERRORS = ("EGeneral:Too many requests", "EAPI:Rate limit exceeded")


def pair_alias(pair: str) -> str:
    """One spelling per Kraken pair: ``XXBTZUSD``, ``XBTUSD`` and ``BTCUSD`` all give
    ``BTCUSD``; ``USDTZUSD`` and ``USDTUSD`` give ``USDTUSD``."""
    name = pair.upper()
    if len(name) == 8 and name[4] == "Z" and name[5:] in _FIAT:
        base = name[1:4] if name[0] == "X" else name[:4]
        name = base + name[5:]
    for legacy, common in (("XBT", "BTC"), ("XDG", "DOGE")):
        if name.startswith(legacy):
            name = common + name[len(legacy) :]
    return name


class KrakenSource(PollingSource):
    name = "kraken"
    local_time = True  # stamped when the answer arrives

    def __init__(self, config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        k = config.kraken
        super().__init__(
            assets=config.source.assets,
            markets=asset_mapping(k.pairs),
            interval=config.source.poll_interval,
            metrics=metrics,
            retry=RetryPolicy(self.name, deadline=k.retry_deadline, max_backoff=k.max_backoff),
        )
        self._http = HttpClient(session, metrics, source=self.name, timeout=k.timeout, api="Kraken")
        self._url = k.base_url.rstrip("/") + "/0/public/Ticker"
        self._by_alias = {pair_alias(pair): asset for asset, pair in self.markets.items()}
        self._params = {"pair": ",".join(self.markets.values())}

    async def request(self) -> list[Tick]:
        body = self._http.check(await self._http.get(self._url, self._params))
        try:
            data = json.loads(body, parse_float=str)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise TransientError(describe_body(body, self._http.expected)) from None
        if not isinstance(data, dict):
            raise TransientError("JSON that is not Kraken's {error, result} object")
        errors = data.get("error")
        if errors:
            text = short("; ".join(map(str, errors)) if isinstance(errors, list) else errors)
            if any(e in text for e in _RATE_LIMIT_ERRORS):
                raise RateLimited(f"rate limited by Kraken: {text}", None)
            if text.startswith("EQuery") or "Invalid arguments" in text:
                raise ClientError(f"Kraken refused the request: {text}; check kraken.pairs")
            raise TransientError(f"Kraken error: {text}")
        result = data.get("result")
        if not isinstance(result, dict):
            raise TransientError("JSON without a result object")
        received = clocks.wall.now()

        def tick(asset: str, record: Any) -> Tick:
            if not isinstance(record, dict):
                raise InvalidTick("not_an_object", type(record).__name__)
            last = record.get("c")
            vwap = record.get("p")
            return self.market_tick(
                asset,
                received,
                price=last[0] if isinstance(last, list) and last else None,
                change=None,
                vwap=vwap[1] if isinstance(vwap, list) and len(vwap) > 1 else None,
            )

        return self.collect(
            (
                (self._by_alias.get(pair_alias(pair)), pair, record)
                for pair, record in result.items()
            ),
            tick,
        )
