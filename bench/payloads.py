"""The messages every contender reads or writes: real ticks as the service publishes them.

One line per message, ``key<TAB>value``: the asset id and ``Tick.to_json()``,
the exact bytes the service's producer puts on the topic. ``kcat -K '\\t'``
reads this file as is; the Python contenders parse the same lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from cryptostream.config import DEFAULT_ASSETS, Config
from cryptostream.source.demo import DemoSource
from cryptostream.tick import Tick

_CHUNK = 10_000


def asset_ids(count: int) -> tuple[str, ...]:
    """The six default assets, then ``coin-0007``, ``coin-0008``, ... up to ``count`` ids."""
    extra = tuple(f"coin-{i:04d}" for i in range(len(DEFAULT_ASSETS) + 1, count + 1))
    return (DEFAULT_ASSETS + extra)[:count]


def demo_ticks(count: int, seed: int = 1, assets: int = len(DEFAULT_ASSETS)) -> Iterator[Tick]:
    """``count`` demo ticks over ``assets`` assets, each stamped with firstValue."""
    config = Config()
    config = msgspec.structs.replace(
        config, source=msgspec.structs.replace(config.source, assets=asset_ids(assets))
    )
    source = DemoSource(config, seed=seed)
    first: dict[str, str] = {}
    start = time.time() - 3600.0
    made = 0
    while made < count:
        n = min(_CHUNK, count - made)
        # One observation time per chunk, like one poll of the API.
        for tick in source.make(n, start + made / 1000.0):
            # CoinCap sends a 24 h VWAP with every price; the demo source does not.
            opening = first.setdefault(tick.id, tick.price_usd)
            yield tick._replace(first_value=opening, vwap_24h=opening)
        made += n


def write_payloads(path: Path, count: int, seed: int = 1, assets: int = len(DEFAULT_ASSETS)) -> int:
    """Write ``count`` messages over ``assets`` assets to ``path``; returns the value bytes."""
    value_bytes = 0
    with path.open("wb") as out:
        lines: list[bytes] = []
        for tick in demo_ticks(count, seed, assets):
            value = tick.to_json()
            value_bytes += len(value)
            lines.append(tick.key() + b"\t" + value + b"\n")
            if len(lines) >= _CHUNK:
                out.writelines(lines)
                lines.clear()
        out.writelines(lines)
    return value_bytes


def read_payloads(path: Path) -> Iterator[tuple[bytes, bytes]]:
    with path.open("rb") as src:
        for line in src:
            key, _, value = line.rstrip(b"\n").partition(b"\t")
            yield key, value
