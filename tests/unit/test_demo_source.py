from __future__ import annotations

import asyncio
from pathlib import Path

from cryptostream.config import load_config
from cryptostream.source.demo import DemoSource
from cryptostream.tick import Tick, tick_from_json


def demo_config(tmp_path: Path, rate: str = "1000"):
    empty = tmp_path / "c.toml"
    empty.write_text("")
    # No API key needed for the demo source.
    return load_config(
        empty, {"CRYPTOSTREAM_SOURCE__NAME": "demo", "CRYPTOSTREAM_DEMO__RATE": rate}
    )


def test_demo_ticks_are_marked_valid_and_unique(tmp_path: Path) -> None:
    source = DemoSource(demo_config(tmp_path))
    ticks = source.make(6000, 1_700_000_000.0)
    assert {t.source for t in ticks} == {"demo"}
    assert all(t.name.endswith("[demo]") for t in ticks)
    keys = {(t.id, t.timestamp, t.price_usd) for t in ticks}
    assert len(keys) == len(ticks), "every demo tick is distinct (the sink would drop repeats)"
    for t in ticks[:50]:
        assert tick_from_json(t.to_json()) == t  # valid per the wire contract
        assert float(t.price_usd) > 0


async def test_demo_rate_is_followed(tmp_path: Path) -> None:
    source = DemoSource(demo_config(tmp_path, rate="2000"))
    got: list[Tick] = []
    enough = asyncio.Event()

    def emit(ticks: list[Tick]) -> None:
        got.extend(ticks)
        if len(got) >= 1000:
            enough.set()

    loop = asyncio.get_running_loop()
    start = loop.time()
    task = asyncio.create_task(source.run(emit))
    await asyncio.wait_for(enough.wait(), 10)
    elapsed = loop.time() - start
    task.cancel()
    # 1000 ticks at 2000/s: never faster than the rate allows.
    assert elapsed >= 0.45
