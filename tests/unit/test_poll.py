from __future__ import annotations

import asyncio

from cryptostream.source.base import poll_slots


async def test_schedule_does_not_drift_after_a_slow_poll() -> None:
    loop = asyncio.get_running_loop()
    interval = 0.1
    start = loop.time()
    seen: list[tuple[int, float]] = []
    async for slot in poll_slots(interval):
        seen.append((slot, loop.time() - start))
        if slot == 1:
            await asyncio.sleep(0.25)  # this poll overruns slots 2 and 3
        if len(seen) == 4:
            break
    slots = [s for s, _ in seen]
    assert slots[:2] == [0, 1]
    assert slots[2] >= 4, "the overrun slots are skipped, not bunched up"
    assert slots[3] == slots[2] + 1
    # Each poll starts on the grid (never early), not interval-after-the-previous-one.
    for slot, at in seen:
        assert at >= slot * interval - 0.01
