"""The sink's two ways of deciding a batch's rows write the same files.

A batch is decided per asset (:mod:`cryptostream.sink.batch`: no duplicate look-up for an
asset whose times only grow) or row by row (the general path). Random batches (copies,
times out of order and repeated, several days, records that are no tick, offsets below
the committed one, several partitions) go through both into two data directories: every
file must be byte for byte the same, and the fault suite's audit holds for them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from cryptostream.metrics import Metrics
from cryptostream.sink import csvsink
from cryptostream.sink.batch import Dedup
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.sinkport import BatchResult
from tests.faults.harness import TopicContent, assert_all_files_exact, audit, content_of

TOPIC = "prices"
#: 2025-03-07T00:00:00Z; the sink's clock is ten days later.
BASE = 1_741_305_600.0
CLOCK = BASE + 10 * 86400
ASSETS = ["bitcoin", "ethereum", "=cmd", "a,b", 'q"t', "xrp", "solana", "tether"]
PRICES = ["1", "2", "2.5", "0.000123", "86466.9872578656434844", "1e5"]
BAD = [None, b"", b"{", b"null", b"[]", b'{"id": "x"}', b"\xff\xfe", b'{"timestamp": 1}']


def tick_value(rng: random.Random, asset: str, ts: float) -> bytes:
    data = {
        "schema": "cryptostream.tick/1",
        "timestamp": ts,
        "id": asset,
        "symbol": asset[:3].upper(),
        "name": asset.title(),
        "priceUsd": rng.choice(PRICES),
        "changePercent24Hr": rng.choice([None, "-1.5", "0.25"]),
        "firstValue": rng.choice([None, None, "7"]),
        "vwap24Hr": rng.choice([None, "3.14"]),
        "source": "coincap",
    }
    if rng.random() < 0.05:
        # Not the service's own shape (an int time, a number price): the checked path.
        data["timestamp"] = int(ts)
        data["priceUsd"] = rng.choice([2, 2.5, "2"])
    return orjson.dumps(data) if rng.random() < 0.5 else json.dumps(data).encode()


class Topic:
    """A topic of a few partitions, and batches of it as a consumer delivers them."""

    def __init__(self, rng: random.Random, partitions: int) -> None:
        self.rng = rng
        self.log: list[list[bytes | None]] = [[] for _ in range(partitions)]
        self.read = [0] * partitions
        self.clock = {a: BASE + 86400 - 300 + rng.uniform(0, 100) for a in ASSETS}

    def produce(self, n: int) -> None:
        rng = self.rng
        assets = rng.sample(ASSETS, rng.randint(1, len(ASSETS)))
        # Half the batches are steady (every asset's times only grow: the common batch).
        steady = rng.random() < 0.5
        for _ in range(n):
            asset = rng.choice(assets)
            shape = rng.random() * (0.7 if steady else 1.0)
            if shape < 0.7:
                # The common case: later than the asset's last tick.
                self.clock[asset] += rng.choice([1.0, 2.5, 30.0, 0.001])
                ts = self.clock[asset]
            elif shape < 0.8:
                ts = self.clock[asset]  # the same time again (a copy, or another price)
            elif shape < 0.9:
                ts = self.clock[asset] - rng.uniform(0, 600)  # late
            else:
                ts = BASE + rng.randrange(-2, 3) * 86400 + rng.uniform(0, 86400)  # another day
            value: bytes | None = tick_value(rng, asset, ts)
            if rng.random() < 0.06:
                value = rng.choice(BAD)
            self.log[rng.randrange(len(self.log))].append(value)
        if rng.random() < 0.2:
            # A producer retry: messages sent again at new offsets.
            p = rng.randrange(len(self.log))
            self.log[p].extend(self.log[p][-rng.randint(1, 20) :])
        if rng.random() < 0.1:
            # Old records again at new offsets, more than a window holds (a topic read
            # again from its beginning): only the daily files know them.
            p = rng.randrange(len(self.log))
            self.log[p].extend(self.log[p][: rng.randint(1, 300)])

    def batch(self) -> list[Record]:
        """The unread messages, partitions interleaved (each in offset order, as Kafka
        delivers them); a partition sometimes from a rewind (records already written)."""
        rng = self.rng
        queues: list[list[Record]] = []
        for p, messages in enumerate(self.log):
            start = self.read[p]
            if rng.random() < 0.2:
                start = max(0, start - rng.randint(1, 30))  # a rewound consumer
            queues.append([Record(p, o, messages[o]) for o in range(start, len(messages))])
            self.read[p] = len(messages)
        records: list[Record] = []
        while any(queues):
            queue = rng.choice([q for q in queues if q])
            records.append(queue.pop(0))
        return records

    def content(self) -> TopicContent:
        """What the fault suite's audit reads from a topic, from this one."""
        return content_of(
            (p, offset, value)
            for p, messages in enumerate(self.log)
            for offset, value in enumerate(messages)
        )


def files(data_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def summary(result: BatchResult) -> tuple[int, int, int, int, list[tuple[object, ...]]]:
    return (
        result.written,
        result.duplicates,
        result.dead_letters,
        result.skipped_below_offset,
        [tuple(t) for t in result.ticks],
    )


def open_sink(data_dir: Path, *, fast: bool) -> CsvSink:
    sink = CsvSink(data_dir, TOPIC, Metrics(), fsync=False, clock=lambda: CLOCK)
    sink.fast_path = fast
    sink.open()
    return sink


@pytest.mark.parametrize("seed", range(12))
def test_both_paths_write_byte_identical_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    small_window = seed % 2 == 1
    if small_window:
        # Copies slide out of the window: evictions within and across batches.
        monkeypatch.setattr(csvsink, "RECENT_KEYS", rng.randint(2, 12))
    taken = {"fresh": 0, "looked_up": 0}
    real_dedup = csvsink.dedup

    def counting(*args: Any) -> Dedup:
        found = real_dedup(*args)
        taken["fresh"] += len(found.fresh)
        taken["looked_up"] += len(found.groups) - len(found.fresh)
        return found

    monkeypatch.setattr(csvsink, "dedup", counting)
    real_holds = csvsink.DayKeys.holds

    def holds(self: Any, *args: Any) -> bool:
        found: bool = real_holds(self, *args)
        taken["in_files"] += found
        return found

    taken["in_files"] = 0
    monkeypatch.setattr(csvsink.DayKeys, "holds", holds)
    topic = Topic(rng, partitions=rng.randint(1, 3))
    dirs = {fast: tmp_path / ("by_asset" if fast else "row_by_row") for fast in (True, False)}
    sinks = {fast: open_sink(d, fast=fast) for fast, d in dirs.items()}
    for n in range(25):
        topic.produce(rng.choice([1, 5, 40, 300]))
        records = topic.batch()
        results = {fast: summary(sink.write(records)) for fast, sink in sinks.items()}
        assert results[True] == results[False], f"batch {n}"
        for name in ("crypto_last_values.csv", ".cryptostream/sink_state.json"):
            fast, slow = ((d / name).read_bytes() for d in (dirs[True], dirs[False]))
            assert fast == slow, f"{name} after batch {n}"
        if rng.random() < 0.15:
            # A restart: the window is rebuilt from crypto_data.csv.
            for fast in sinks:
                sinks[fast].close()
                sinks[fast] = open_sink(dirs[fast], fast=fast)
    for sink in sinks.values():
        sink.close()
    # Both ways of deduplicating an asset were taken (and only by the sink by asset).
    assert taken["fresh"] > 0
    assert taken["looked_up"] > 0
    if small_window:
        # Copies older than the window were found in the daily files.
        assert taken["in_files"] > 0
    fast_files, slow_files = files(dirs[True]), files(dirs[False])
    assert fast_files.keys() == slow_files.keys()
    for name, data in fast_files.items():
        assert data == slow_files[name], name
    assert "history/ticks/2025-03-08.csv" in fast_files
    assert "errors/dead_letters.jsonl" in fast_files
    # Whatever the window's size: the committed files decide what is a copy.
    content = topic.content()
    for data_dir in dirs.values():
        assert_all_files_exact(audit(f"batch paths seed {seed}", data_dir, content))
        dead = (data_dir / "errors" / "dead_letters.jsonl").read_bytes().splitlines()
        got = sorted((d["partition"], d["offset"]) for d in map(orjson.loads, dead))
        assert got == sorted((p, o) for p, o, _ in content.others)


def test_the_common_batch_takes_no_lookup_and_a_copy_is_still_dropped(tmp_path: Path) -> None:
    """A steady batch is taken by asset without look-ups; a batch that resends a tick of
    the window (its time not newer) is not, and the copy is dropped."""
    sink = open_sink(tmp_path, fast=True)
    rng = random.Random(7)
    steady = [Record(0, i, tick_value(rng, "bitcoin", BASE + 60 + i)) for i in range(5)]
    assert sink.write(steady).written == 5
    again = [Record(0, 5, steady[4].value), Record(0, 6, tick_value(rng, "bitcoin", BASE + 70))]
    result = sink.write(again)
    sink.close()
    assert (result.written, result.duplicates) == (1, 1)
