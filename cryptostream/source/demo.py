"""Synthetic random-walk prices for offline demos, tests and benchmarks.

Never mistakable for real prices: every tick says ``"source": "demo"`` in the
Kafka message, names carry a ``[demo]`` suffix (so the CSV shows it too), and
the service logs a warning at start.
"""

from __future__ import annotations

import asyncio
import random

from cryptostream import clocks
from cryptostream.config import Config
from cryptostream.logs import get_logger
from cryptostream.source.base import Emit, SourceHealth
from cryptostream.tick import Tick

log = get_logger(__name__)

# Starting points (USD) for the default assets; others start at 100.
_START = {
    "bitcoin": ("BTC", "Bitcoin", 86_466.98),
    "ethereum": ("ETH", "Ethereum", 2_141.17),
    "tether": ("USDT", "Tether", 1.0),
    "xrp": ("XRP", "XRP", 2.43),
    "binance-coin": ("BNB", "BNB", 594.54),
    "solana": ("SOL", "Solana", 143.04),
}
_SCALE = 10**8  # prices are kept as integers of 1e-8 USD: exact decimal text, no float noise
_SLICE = 0.01  # seconds between emits at high rates
# Random steps are drawn once (Gaussian, sigma 0.05 %, in parts per million) and read
# from a random offset per batch: a per-tick gauss() call costs more than the rest
# of the tick at 10,000+ ticks/s.
_STEPS = 1 << 16
_STEP_PPM = 500.0


class _Walk:
    __slots__ = ("id", "last_ts", "name", "open", "price", "symbol")

    def __init__(self, asset: str) -> None:
        symbol, name, start = _START.get(asset, (asset[:4].upper(), asset.title(), 100.0))
        self.id = asset
        self.symbol = symbol
        self.name = f"{name} [demo]"
        self.price = round(start * _SCALE)
        self.open = self.price
        self.last_ts = 0.0


def _decimal(units: int) -> str:
    """Integer 1e-8 units as exact decimal text with 8 places: 123456789 -> "1.23456789"."""
    if units < 0:
        return "-" + _decimal(-units)
    digits = str(units)
    if len(digits) <= 8:
        return "0." + digits.zfill(8)
    return digits[:-8] + "." + digits[-8:]


class DemoSource:
    name = "demo"
    local_time = True

    def __init__(self, config: Config, seed: int | None = None) -> None:
        self._rate = config.demo.rate
        self._walks = [_Walk(a) for a in config.source.assets]
        self._random = random.Random(config.demo.seed if seed is None else seed)  # noqa: S311
        self.emitted = 0
        self._steps = [round(self._random.gauss(0.0, _STEP_PPM)) for _ in range(_STEPS)]
        # Synthetic prices never fail: healthy from the start.
        self.health = SourceHealth()
        self.health.ok()

    def make(self, n: int, now: float) -> list[Tick]:
        """``n`` ticks, round-robin over the assets, strictly increasing time per asset."""
        ticks: list[Tick] = []
        append = ticks.append
        walks = self._walks
        count = len(walks)
        steps = self._steps
        mask = _STEPS - 1
        at = self._random.getrandbits(16)
        first = self.emitted
        name = self.name
        decimal = _decimal
        for i in range(n):
            w = walks[(first + i) % count]
            price = w.price
            # ~0.05 % steps; never below one unit.
            price += price * steps[(at + i) & mask] // 1_000_000
            if price < 1:
                price = 1
            w.price = price
            ts = now if now > w.last_ts else w.last_ts + 1e-6
            w.last_ts = ts
            opened = w.open
            append(
                Tick(
                    ts,
                    w.id,
                    w.symbol,
                    w.name,
                    decimal(price),
                    decimal((price - opened) * 100 * _SCALE // opened),
                    None,
                    None,
                    name,
                )
            )
        self.emitted += n
        return ticks

    async def run(self, emit: Emit) -> None:
        log.warning("demo_source_active", rate=self._rate, note="synthetic prices, not real")
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        step = max(_SLICE, 1.0 / self._rate)
        while True:
            due = int((loop.time() - start) * self._rate) - sent
            if due > 0:
                emit(self.make(due, clocks.wall.now()))
                sent += due
            await asyncio.sleep(step)
