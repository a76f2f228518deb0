"""A local fake of Binance's public spot API (``https://api.binance.com``).

A real aiohttp server on ``127.0.0.1`` serving ``GET /api/v3/ticker/24hr`` in the
documented shape (``tests/fixtures/binance/``):

* ``?symbols=["BTCUSDT","ETHUSDT"]`` (a JSON array) or ``?symbol=BTCUSDT``; without
  either, every known symbol. An unknown symbol fails the whole request: 400
  ``{"code": -1121, "msg": "Invalid symbol."}``; a malformed ``symbols``: 400 code -1100.
* The market moves one step per answered request: the first answer is the fixture,
  later ones a deterministic random walk of ``lastPrice`` (8 decimals, never a float),
  with ``priceChange``/``priceChangePercent`` following it. ``closeTime`` is
  :attr:`FakeBinance.clock` (epoch ms).
* Request weight, per calendar minute of :attr:`clock`: 2 for 1-20 symbols, 40 for
  21-100, 80 beyond or without ``symbols``. Every answer carries
  ``X-MBX-USED-WEIGHT-1m``. Going over :attr:`weight_limit` answers 429 with
  ``Retry-After`` (seconds to the next minute); a request before a 429's
  ``Retry-After`` has passed, or during a ban, answers 418 with ``Retry-After``
  (a ban of :attr:`ban_seconds`). Set :attr:`used_weight` to play "other programs
  on the same IP".

Faults: :meth:`inject` with :class:`tests.support.fakehttp.Fault` (applied before
the weight accounting, like a proxy in front of the API).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from tests.support.fakehttp import FakeHttpServer

FIXTURES_DIR: Final = Path(__file__).resolve().parent.parent / "fixtures" / "binance"
WEIGHT_HEADER: Final = "X-MBX-USED-WEIGHT-1m"
_Q8: Final = Decimal("0.00000001")


def weight_of(symbols: int | None) -> int:
    if symbols is None or symbols > 100:
        return 80
    return 2 if symbols <= 20 else 40


class FakeBinance(FakeHttpServer):
    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], int] | None = None,
        weight_limit: int = 6000,
        ban_seconds: float = 120.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        #: Epoch-ms clock used for ``closeTime`` and the weight window.
        self.clock: Callable[[], int] = clock or (lambda: time.time_ns() // 1_000_000)
        self.weight_limit = weight_limit
        self.ban_seconds = ban_seconds
        self.used_weight = 0
        self._window = -1
        self._backoff_until_ms = 0  # after a 429: earlier requests earn a 418
        self._banned_until_ms = 0
        self._rng = random.Random(seed)
        fixture = json.loads((FIXTURES_DIR / "ticker_24hr.json").read_text(encoding="utf-8"))
        self.market: dict[str, dict[str, Any]] = {r["symbol"]: r for r in fixture}
        self.steps = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v3/ticker/24hr", self._ticker)

    def error_body(self, status: int, message: str) -> str:
        return json.dumps({"code": -1000 - status, "msg": message})

    # -- market ------------------------------------------------------------------------

    def _step(self) -> None:
        """Move every price by a non-zero random step of at most 0.05 %."""
        self.steps += 1
        if self.steps == 1:
            return  # the first answer is the fixture as recorded
        for record in self.market.values():
            last = Decimal(record["lastPrice"])
            ppm = self._rng.randint(1, 500) * self._rng.choice((-1, 1))
            moved = (last * (1 + Decimal(ppm) / 1_000_000)).quantize(_Q8)
            if moved == last:
                moved = last + _Q8 * (1 if ppm > 0 else -1)
            record["lastPrice"] = format(moved, "f")
            opened = Decimal(record["openPrice"])
            change = moved - opened
            record["priceChange"] = format(change.quantize(_Q8), "f")
            record["priceChangePercent"] = format(
                (change / opened * 100).quantize(Decimal("0.001")), "f"
            )

    # -- weight ------------------------------------------------------------------------

    def set_used_weight(self, used: int) -> None:
        """Weight already used in the current minute (by "other programs on the IP")."""
        self._window = self.clock() // 60_000
        self.used_weight = used

    def _headers(self) -> dict[str, str]:
        return {WEIGHT_HEADER: str(self.used_weight)}

    def _limit(self, weight: int) -> web.Response | None:
        now = self.clock()
        window = now // 60_000
        if window != self._window:
            self._window = window
            self.used_weight = 0
        if now < self._banned_until_ms or now < self._backoff_until_ms:
            # Not backing off after a 429 (or calling during a ban) earns a ban.
            if now >= self._banned_until_ms:
                self._banned_until_ms = now + int(self.ban_seconds * 1000)
            wait = math.ceil((self._banned_until_ms - now) / 1000)
            return web.json_response(
                {
                    "code": -1003,
                    "msg": f"Way too much request weight used; IP banned until "
                    f"{self._banned_until_ms}. Please use WebSocket Streams for live updates "
                    "to avoid bans.",
                },
                status=418,
                headers={**self._headers(), "Retry-After": str(wait)},
            )
        self.used_weight += weight
        if self.used_weight > self.weight_limit:
            wait = math.ceil(((window + 1) * 60_000 - now) / 1000)
            self._backoff_until_ms = now + wait * 1000
            return web.json_response(
                {
                    "code": -1003,
                    "msg": f"Too much request weight used; current limit is {self.weight_limit} "
                    "request weight per 1 MINUTE. Please use WebSocket Streams for live "
                    "updates to avoid polling the API.",
                },
                status=429,
                headers={**self._headers(), "Retry-After": str(wait)},
            )
        return None

    # -- endpoint ----------------------------------------------------------------------

    async def _ticker(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("symbols")
        single = request.query.get("symbol")
        wanted: list[str] | None
        if raw is not None:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
                return web.json_response(
                    {"code": -1100, "msg": "Illegal characters found in parameter 'symbols'."},
                    status=400,
                    headers=self._headers(),
                )
            wanted = list(dict.fromkeys(parsed))
        elif single is not None:
            wanted = [single]
        else:
            wanted = None
        limited = self._limit(weight_of(None if wanted is None else len(wanted)))
        if limited is not None:
            return limited
        if wanted is not None and any(s not in self.market for s in wanted):
            return web.json_response(
                {"code": -1121, "msg": "Invalid symbol."}, status=400, headers=self._headers()
            )
        self._step()
        now = self.clock()
        records = []
        for symbol in wanted if wanted is not None else list(self.market):
            record = copy.deepcopy(self.market[symbol])
            record["closeTime"] = now
            record["openTime"] = now - 86_400_000
            records.append(record)
        body: Any = records[0] if single is not None and raw is None else records
        return web.json_response(body, headers=self._headers())
