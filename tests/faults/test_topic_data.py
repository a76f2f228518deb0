"""Bad data on the topic: copies of ticks, poison messages, cells that attack spreadsheets.

Guarantee 2 (upstream duplicates written once), guarantee 5 (poison messages
go to the dead-letter file, the sink goes on) and spreadsheet safety.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.conftest import API_KEY, ConfigFactory, wait_until
from tests.faults.harness import (
    assert_all_files_exact,
    audit,
    read_csv,
    read_topic,
    row_count,
    state_offsets,
)
from tests.support.fake_coincap import FakeCoinCap, Fault

pytestmark = pytest.mark.faults

# One producer batch (cryptostream.producer.BATCH): a retry resends at most this many.
RESENT = 2000


def demo_env(rate: float) -> dict[str, str]:
    return {
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_DEMO__RATE": str(rate),
        "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "2",
        "CRYPTOSTREAM_WEB__DASHBOARD": "false",
    }


def metric(running: Any, name: str, labels: dict[str, str] | None = None) -> float:
    value = running.service.metrics.registry.get_sample_value(name, labels or {})
    return float(value or 0.0)


async def raw_messages(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every message on partition 0 of ``topic``, in order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[bytes | None, bytes | None]] = []
        while await consumer.position(tp) < end:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((m.key, m.value) for m in messages)
        return out
    finally:
        await consumer.stop()


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes | None, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        for future in futures:
            await future
    finally:
        await producer.stop()


@pytest.mark.timeout(180)
async def test_a_resent_batch_after_a_restart_is_written_once(
    make_config: ConfigFactory, run_service, fault_kafka
) -> None:
    bootstrap = fault_kafka.bootstrap_servers
    config = make_config(bootstrap=bootstrap, env=demo_env(2000))
    csv_path = config.storage.data_dir / "crypto_data.csv"
    first = await run_service(config)
    await wait_until(lambda: row_count(csv_path) >= 3 * RESENT, 60, "rows of the first run")
    assert await first.stop() == 0

    # The previous process's last batch reaches the topic again after the restart
    # (a producer that resends what it could not confirm): RESENT copies in a row.
    messages = await raw_messages(bootstrap, config.kafka.topic)
    await publish(bootstrap, config.kafka.topic, messages[-RESENT:])
    second = await run_service(config)
    await wait_until(
        lambda: row_count(csv_path) >= len(messages) + 2 * RESENT, 60, "rows of the second run"
    )
    skipped = metric(second, "cryptostream_duplicates_skipped_total")
    assert await second.stop() == 0

    content = await read_topic(bootstrap, config.kafka.topic)
    figures = audit("resent batch", config.storage.data_dir, content)
    copies = len(content.ticks) - figures.produced
    figures.notes.update(copies_on_topic=copies, skipped=int(skipped))
    figures.report()
    assert figures.notes["copies_on_topic"] == RESENT
    assert_all_files_exact(figures)
    assert skipped == RESENT


@pytest.mark.timeout(180)
async def test_poison_messages_go_to_dead_letters_and_the_sink_goes_on(
    make_config: ConfigFactory, run_service, fault_kafka
) -> None:
    bootstrap = fault_kafka.bootstrap_servers
    config = make_config(bootstrap=bootstrap, env=demo_env(200))
    running = await run_service(config)
    data_dir = running.data_dir
    csv_path = data_dir / "crypto_data.csv"
    await wait_until(lambda: row_count(csv_path) >= 200, 60, "rows before the poison")

    good = {
        "schema": "cryptostream.tick/1",
        "timestamp": 1_760_000_000.5,
        "id": "bitcoin",
        "symbol": "BTC",
        "name": "Bitcoin",
        "priceUsd": "100.5",
        "changePercent24Hr": "-1.5",
        "firstValue": None,
        "vwap24Hr": None,
        "source": "other-app",
    }

    def variant(**changes: Any) -> bytes:
        return orjson.dumps({k: v for k, v in {**good, **changes}.items() if v is not ...})

    poison: list[tuple[bytes | None, str]] = [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00\x01 binary", "not UTF-8, not JSON"),
        (b"", "empty value"),
        (None, "null value (tombstone)"),
        (b"[1, 2, 3]", "JSON, not an object"),
        (b'"bitcoin"', "JSON string"),
        (b"{}", "no fields"),
        (variant(id=...), "no id"),
        (variant(priceUsd=...), "no price"),
        (variant(timestamp="yesterday"), "timestamp not a number"),
        (variant(timestamp=-1), "negative timestamp"),
        (variant(priceUsd="NaN"), "NaN price"),
        (variant(priceUsd="-5"), "negative price"),
        (variant(priceUsd="12abc"), "price not a number"),
        (variant(priceUsd={"usd": 1}), "price an object"),
        (variant(id=42), "id a number"),
        (variant(changePercent24Hr="lots"), "change not a number"),
        (variant(vwap24Hr="Infinity"), "infinite vwap"),
    ]
    # Good ticks between the bad ones must all arrive.
    extra_good = [
        variant(timestamp=1_760_000_000.5 + i, priceUsd=f"{100 + i}.25") for i in range(5)
    ]
    batch: list[tuple[bytes | None, Any]] = []
    for i, (value, _) in enumerate(poison):
        batch.append((b"bitcoin", value))
        if i % 4 == 0 and extra_good:
            batch.append((b"bitcoin", extra_good.pop()))
    batch += [(b"bitcoin", v) for v in extra_good]
    await publish(bootstrap, config.kafka.topic, batch)

    dead_path = data_dir / "errors" / "dead_letters.jsonl"
    await wait_until(
        lambda: dead_path.exists() and dead_path.read_bytes().count(b"\n") >= len(poison),
        30,
        "every poison message in the dead-letter file",
    )
    rows_then = row_count(csv_path)
    await wait_until(lambda: row_count(csv_path) >= rows_then + 200, 30, "rows after the poison")
    assert running.service.readiness()[0], running.service.readiness()
    dead_metric = sum(
        s.value
        for m in running.service.metrics.registry.collect()
        if m.name == "cryptostream_dead_letters"
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert await running.stop() == 0

    letters = [orjson.loads(line) for line in dead_path.read_bytes().splitlines()]
    assert len(letters) == len(poison)
    for letter, (value, what) in zip(letters, poison, strict=True):
        assert letter["reason"], f"{what}: no reason"
        assert letter["topic"] == config.kafka.topic and isinstance(letter["offset"], int), what
        raw = value or b""
        try:
            original = raw.decode()
        except UnicodeDecodeError:
            original = raw.decode("latin-1")  # bytes kept one to one
        assert letter["value"] == original, what

    content = await read_topic(bootstrap, config.kafka.topic)
    figures = audit("poison", data_dir, content)
    figures.notes.update(
        poison_sent=len(poison),
        dead_lettered=len(letters),
        dead_letter_metric=int(dead_metric),
        reasons=len({letter["reason"] for letter in letters}),
    )
    figures.report()
    assert_all_files_exact(figures)
    assert dead_metric == len(poison)
    assert state_offsets(data_dir) == {0: len(content.ticks) + len(content.others)}


NASTY = [
    # (symbol, name) as an API might send them
    ('=HYPERLINK("http://evil","x")', "+cmd|' /C calc'!A0"),
    ("-2+3", "@SUM(A1:A9)"),
    ("\t=1+1", "\r=1+1"),
    ("LF\nBREAK", 'quote "q", and, commas'),
    (" =1+1", "\n-1"),
    ("a,b", '"=1"'),
]


@pytest.mark.timeout(120)
async def test_spreadsheet_safety_every_cell_neutralised_and_8_columns(
    make_config: ConfigFactory, run_service, fault_kafka
) -> None:
    assets = ["bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana"]
    records = [
        {
            "id": asset,
            "symbol": symbol,
            "name": name,
            "priceUsd": f"{10 + i}.5",
            "changePercent24Hr": f"-{i}.25",
            "vwap24Hr": "-0" if i == 0 else f"{10 + i}",
        }
        for i, (asset, (symbol, name)) in enumerate(zip(assets, NASTY, strict=True))
    ]
    async with FakeCoinCap(api_key=API_KEY) as fake:
        fake.inject(Fault.records(records, path_prefix="/v3/assets"))
        config = make_config(
            base_url=fake.base_url,
            bootstrap=fault_kafka.bootstrap_servers,
            env={"CRYPTOSTREAM_WEB__DASHBOARD": "false"},
        )
        running = await run_service(config)
        csv_path = running.data_dir / "crypto_data.csv"
        await wait_until(lambda: row_count(csv_path) >= 18, 60, "the nasty poll and two more")
        assert await running.stop() == 0

    raw = csv_path.read_bytes()
    assert b"\r" not in raw and b"\t" not in raw
    for name in ("crypto_data.csv", "crypto_last_values.csv"):
        text = (running.data_dir / name).read_text(encoding="utf-8")
        table = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        assert all(len(row) == 8 for row in table), name
        assert len(table) == text.count("\n"), f"{name}: a cell spans lines"
        for row in table[1:]:
            for cell in row[1:4]:
                assert not any(c in cell for c in "\r\n\t"), (name, cell)
                # A cell whose first visible character starts a formula is marked as text.
                if cell.lstrip().startswith(("=", "+", "-", "@")):
                    assert cell.startswith("'"), (name, cell)
            for cell in row[4:]:
                if cell:
                    float(cell)  # numbers stay numbers, negative ones too

    nasty_rows = read_csv(csv_path).rows[:6]
    assert [r[1] for r in nasty_rows] == assets
    assert [r[5] for r in nasty_rows] == [f"-{i}.25" for i in range(6)]
    assert nasty_rows[0][2].startswith("'=HYPERLINK(")
    assert nasty_rows[3][3] == 'quote "q", and, commas'
    # Kafka keeps what the API sent: neutralising is the CSV's business only.
    content = await read_topic(fault_kafka.bootstrap_servers, config.kafka.topic)
    figures = audit("spreadsheet", running.data_dir, content)
    figures.notes["nasty_records"] = len(records)
    figures.report()
    assert_all_files_exact(figures)
    consumer_values = await raw_messages(fault_kafka.bootstrap_servers, config.kafka.topic)
    first_values = [orjson.loads(v or b"") for _, v in consumer_values[:6]]
    assert [(v["symbol"], v["name"]) for v in first_values] == NASTY
