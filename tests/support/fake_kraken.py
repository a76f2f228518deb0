"""A local fake of Kraken's public REST API (``https://api.kraken.com``).

A real aiohttp server on ``127.0.0.1`` serving ``GET /0/public/Ticker?pair=A,B`` in
the documented shape (``tests/fixtures/kraken/``): ``{"error": [], "result": {...}}``
keyed by the canonical pair name whichever spelling was asked for (``XBTUSD``,
``BTCUSD`` and ``XXBTZUSD`` all answer ``XXBTZUSD``). One unknown pair fails the
whole request with HTTP 200 ``{"error": ["EQuery:Unknown asset pair"]}``, like Kraken.

The market moves one step per answered request: the first answer is the fixture,
later ones a deterministic random walk of the last trade price ``c[0]`` (5 decimals).

Faults: :meth:`inject` with :class:`tests.support.fakehttp.Fault`; Kraken's own
error answers are bodies, e.g. ``Fault.body(RATE_LIMITED)``.
"""

from __future__ import annotations

import copy
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from tests.support.fakehttp import FakeHttpServer

FIXTURES_DIR: Final = Path(__file__).resolve().parent.parent / "fixtures" / "kraken"
RATE_LIMITED: Final = '{"error":["EGeneral:Too many requests"]}'
UNAVAILABLE: Final = '{"error":["EService:Unavailable"]}'

#: Every spelling Kraken accepts for the fixture's pairs -> the canonical key.
ALIASES: Final = {
    "XXBTZUSD": "XXBTZUSD",
    "XBTUSD": "XXBTZUSD",
    "BTCUSD": "XXBTZUSD",
    "XETHZUSD": "XETHZUSD",
    "ETHUSD": "XETHZUSD",
    "USDTZUSD": "USDTZUSD",
    "USDTUSD": "USDTZUSD",
    "XXRPZUSD": "XXRPZUSD",
    "XRPUSD": "XXRPZUSD",
    "SOLUSD": "SOLUSD",
}
_Q5: Final = Decimal("0.00001")


class FakeKraken(FakeHttpServer):
    def __init__(self, *, seed: int = 0, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self._rng = random.Random(seed)
        fixture = json.loads((FIXTURES_DIR / "ticker.json").read_text(encoding="utf-8"))
        self.market: dict[str, dict[str, Any]] = fixture["result"]
        self.steps = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/0/public/Ticker", self._ticker)

    def error_body(self, status: int, message: str) -> str:
        return json.dumps({"error": [f"EService:{message}"]})

    def _step(self) -> None:
        self.steps += 1
        if self.steps == 1:
            return
        for record in self.market.values():
            last = Decimal(record["c"][0])
            ppm = self._rng.randint(1, 500) * self._rng.choice((-1, 1))
            moved = (last * (1 + Decimal(ppm) / 1_000_000)).quantize(_Q5)
            if moved == last:
                moved = last + _Q5 * (1 if ppm > 0 else -1)
            record["c"][0] = format(moved, "f")

    async def _ticker(self, request: web.Request) -> web.Response:
        raw = request.query.get("pair", "")
        asked = [p.strip().upper() for p in raw.split(",") if p.strip()]
        if not asked:
            return web.json_response({"error": ["EGeneral:Invalid arguments"]})
        if any(ALIASES.get(p) not in self.market for p in asked):
            return web.json_response({"error": ["EQuery:Unknown asset pair"]})
        self._step()
        result = {ALIASES[p]: copy.deepcopy(self.market[ALIASES[p]]) for p in dict.fromkeys(asked)}
        return web.json_response({"error": [], "result": result})
