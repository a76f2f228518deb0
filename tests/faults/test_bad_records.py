"""No record can stop the sink.

A record the sink cannot write used to escape its error handling: the consumer
died, the service exited 1, and after a restart it read the same record again
(a crash loop). Here bad timestamps, thousands of random shapes and a batch
spread over forty UTC days go through the real pipeline: every good tick is in
the CSV once, every bad record is dead-lettered once, the service never stops.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import ConfigFactory, unique, wait_until
from tests.faults.harness import (
    assert_all_files_exact,
    audit,
    create_topic,
    end_offsets,
    message_row,
    publish,
    read_topic,
    state_offsets,
)

pytestmark = pytest.mark.faults

FUZZ_RECORDS = 3000


def quiet_env() -> dict[str, str]:
    # The demo source makes its first tick after ~28 h: only the published records flow.
    return {
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_DEMO__RATE": "0.00001",
        "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "2",
        "CRYPTOSTREAM_WEB__DASHBOARD": "false",
    }


def good_tick(i: int, base: float) -> dict[str, Any]:
    return {
        "schema": "cryptostream.tick/1",
        "timestamp": base + i * 0.25,
        "id": "bitcoin",
        "symbol": "BTC",
        "name": "Bitcoin",
        "priceUsd": f"{50_000 + i}.5",
        "changePercent24Hr": "-1.25",
        "firstValue": "50000.5",
        "vwap24Hr": "50100",
        "source": "other-app",
    }


async def consume_all(running: Any, bootstrap: str, topic: str, data_dir: Path) -> None:
    ends = await end_offsets(bootstrap, topic)
    await wait_until(
        lambda: state_offsets(data_dir) == ends or running.task.done(),
        60,
        f"the sink to reach the topic's end {ends}",
    )


def dead_letter_offsets(data_dir: Path) -> list[int]:
    path = data_dir / "errors" / "dead_letters.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line)["offset"] for line in path.read_bytes().splitlines()]


def alive(running: Any) -> bool:
    return not running.task.done() and running.service.failed is None


async def run_records(
    make_config: ConfigFactory,
    run_service: Any,
    bootstrap: str,
    values: list[bytes | None],
    *,
    before_start: bool = False,
) -> tuple[Any, Path, str]:
    topic = unique("bad")
    config = make_config(bootstrap=bootstrap, topic=topic, env=quiet_env())
    messages: list[tuple[bytes | None, Any]] = [(b"bitcoin", v) for v in values]
    if before_start:
        await create_topic(bootstrap, topic)
        await publish(bootstrap, topic, messages)
    running = await run_service(config)
    if not before_start:
        await publish(bootstrap, topic, messages)
    await consume_all(running, bootstrap, topic, running.data_dir)
    return running, running.data_dir, topic


BAD_TIMESTAMPS: list[tuple[Any, str]] = [
    (1.7e12, "milliseconds"),
    (1_741_381_815_467, "milliseconds as an integer"),
    (1.7e15, "microseconds"),
    (1e20, "beyond time_t"),
    (1e308, "the largest double"),
    (-1.0, "negative"),
    (-1e20, "very negative"),
    (-0.0, "minus zero"),
    (0, "the epoch"),
    (1_000_000_000, "2001, before any crypto price"),
    (253_402_300_800.0, "year 10000"),
    ("1741381815", "a string"),
    (True, "a boolean"),
    (None, "null"),
]


@pytest.mark.timeout(120)
async def test_poison_timestamps_are_dead_lettered_and_the_sink_goes_on(
    make_config: ConfigFactory, run_service, fault_kafka
) -> None:
    now = time.time()
    values: list[bytes | None] = []
    for i, (ts, _) in enumerate(BAD_TIMESTAMPS):
        values.append(orjson.dumps(good_tick(2 * i, now - 3600)))
        bad = {**good_tick(2 * i + 1, now - 3600), "timestamp": ts}
        values.append(orjson.dumps(bad))
    values.append(
        orjson.dumps({**good_tick(999, now), "timestamp": now + 8 * 86400})
    )  # 8 days ahead
    values.append(orjson.dumps(good_tick(1000, now - 3600)))
    bootstrap = fault_kafka.bootstrap_servers
    running, data_dir, topic = await run_records(make_config, run_service, bootstrap, values)
    was_alive = alive(running)
    code = await running.stop()

    content = await read_topic(bootstrap, topic)
    bad_offsets = [o for _, o, _ in content.others]
    figures = audit("poison timestamps", data_dir, content)
    figures.notes.update(
        bad_sent=len(BAD_TIMESTAMPS) + 1,
        dead_lettered=len(dead_letter_offsets(data_dir)),
        service_alive=was_alive,
        exit_code=code,
    )
    figures.report()
    assert was_alive and code == 0, "the service stopped"
    assert len(bad_offsets) == len(BAD_TIMESTAMPS) + 1
    assert dead_letter_offsets(data_dir) == bad_offsets
    assert_all_files_exact(figures)


# -- the fuzz --------------------------------------------------------------------------


def random_text(rng: random.Random) -> str:
    alphabet = "aZ09 ,\"'=+-@\t\r\n\x00\x1f\x7f\x85\u00e4\u2028\u3000\U0001f600.eE"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def random_number(rng: random.Random) -> Any:
    return rng.choice(
        [
            rng.uniform(-1e6, 1e6),
            rng.randrange(-(10**6), 10**6),
            10 ** rng.randrange(0, 40),
            -(10 ** rng.randrange(0, 40)),
            rng.choice([0, -0.0, 1e308, -1e308, 5e-324, 1.7e12, 1e20]),
            time.time() - rng.uniform(0, 5e8),
            time.time() + rng.uniform(8 * 86400, 1e9),
        ]
    )


DECIMAL_TEXTS = ["1.5", " 2 ", "-3", "1e5", "1E-3", ".5", "5.", "-0", "NaN", "Infinity", "-inf"]
DECIMAL_TEXTS += ["0x10", "1_000", "1,5", "", " ", "+1", "--1", "1e", "\u0661", "12abc"]


def random_decimal_text(rng: random.Random) -> str:
    return rng.choice([*DECIMAL_TEXTS, str(rng.random())])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return random_number(rng)
    if kind == 3:
        return random_decimal_text(rng)
    if kind == 4:
        return random_text(rng)
    if kind == 5:
        return rng.choice(["", "bitcoin", "=HYPERLINK(1)", "  "])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 3))]
    if kind == 7:
        return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 3))}
    return random_value(rng, depth + 1)


FIELDS = ["timestamp", "id", "symbol", "name", "priceUsd", "changePercent24Hr"]
FIELDS += ["firstValue", "vwap24Hr", "source", "schema"]


def random_message(rng: random.Random, i: int, base: float) -> bytes | None:
    shape = rng.randrange(10)
    if shape == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
    if shape == 1:
        return json.dumps(random_value(rng)).encode()
    if shape == 2:
        return rng.choice([None, b"", b" ", b"{", b"null", b"[]", b"{}"])
    data = good_tick(i, base)
    for _ in range(rng.randrange(1, 4)):
        name = rng.choice(FIELDS)
        action = rng.randrange(4)
        if action == 0:
            data.pop(name, None)
        elif action == 1 and name in ("priceUsd", "changePercent24Hr", "firstValue", "vwap24Hr"):
            data[name] = random_decimal_text(rng)
        elif action == 2 and name == "timestamp":
            data[name] = random_number(rng)
        else:
            data[name] = random_value(rng)
    return json.dumps(data).encode()


@pytest.mark.timeout(300)
async def test_random_records_never_stop_the_sink(
    make_config: ConfigFactory, run_service, fault_kafka
) -> None:
    seed = int(os.environ.get("CRYPTOSTREAM_FAULT_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    base = time.time() - 86400 * 3
    values: list[bytes | None] = []
    for i in range(FUZZ_RECORDS):
        if i % 3 == 0:
            values.append(orjson.dumps(good_tick(i, base)))
        else:
            values.append(random_message(rng, i, base))
    expected_bad = [o for o, v in enumerate(values) if message_row(v) is None]
    bootstrap = fault_kafka.bootstrap_servers
    running, data_dir, topic = await run_records(make_config, run_service, bootstrap, values)
    was_alive = alive(running)
    code = await running.stop()

    content = await read_topic(bootstrap, topic)
    figures = audit("random records", data_dir, content)
    dead = dead_letter_offsets(data_dir)
    figures.notes.update(
        seed=seed,
        records=len(values),
        bad=len(expected_bad),
        dead_lettered=len(dead),
        service_alive=was_alive,
        exit_code=code,
    )
    figures.report()
    assert was_alive and code == 0, f"the service stopped (seed={seed})"
    assert dead == expected_bad, f"seed={seed}: {sorted(set(dead) ^ set(expected_bad))[:10]}"
    assert_all_files_exact(figures)


# -- a batch over many days ------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_batch_over_forty_utc_days_is_written(
    make_config: ConfigFactory, run_service, fault_kafka
) -> None:
    """40 ticks one day apart, on the topic before the service starts: one batch."""
    start = time.time() - 86400 * 60
    values: list[bytes | None] = [
        orjson.dumps({**good_tick(i, start), "timestamp": start + i * 86400.0}) for i in range(40)
    ]
    bootstrap = fault_kafka.bootstrap_servers
    running, data_dir, topic = await run_records(
        make_config, run_service, bootstrap, values, before_start=True
    )
    was_alive = alive(running)
    code = await running.stop()

    content = await read_topic(bootstrap, topic)
    figures = audit("sparse 40-day batch", data_dir, content)
    days = sorted((data_dir / "history" / "ticks").glob("*.csv"))
    figures.notes.update(daily_files=len(days), service_alive=was_alive, exit_code=code)
    figures.report()
    assert was_alive and code == 0, "the service stopped"
    assert len(days) == 40
    assert_all_files_exact(figures)
