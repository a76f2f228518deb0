"""What every fault case needs: the service as a child process, the audit of the
files against the topic, and the figures line each case prints.

The audit reads the topic and the CSV files independently of the product code
(plain ``orjson`` and :mod:`csv`), so a bug in the sink's own parsing cannot
hide itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import datetime as dt
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import wait_until

COLUMNS = [
    "timestamp",
    "id",
    "symbol",
    "name",
    "priceUsd",
    "changePercent24Hr",
    "firstValue",
    "vwap24Hr",
]
HEADER = (",".join(COLUMNS) + "\n").encode()
#: A plain decimal in ASCII digits (a CSV reader and Power BI read no others).
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

#: Identity of a tick, as the product defines a duplicate: asset, event time, price.
TickKey = tuple[str, str, str]
#: The data contract's time range (docs/reliability.md): from Bitcoin's genesis block
#: (2009-01-03 UTC) to seven days past the clock.
EARLIEST = 1_230_940_800.0
FUTURE_TOLERANCE = 7 * 86400.0  # item: a clock hours or days off is data
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def key_of(asset: str, timestamp: float | str, price: str) -> TickKey:
    return (asset, repr(float(timestamp)), price)


# -- the figures ---------------------------------------------------------------------

FIGURES: list[str] = []
"""Every figures line of this run, printed again in the terminal summary."""


@dataclass
class Figures:
    case: str
    produced: int
    in_csv: int
    lost: int
    duplicated: int
    torn: int
    notes: dict[str, object] = field(default_factory=dict)
    #: Rows whose cells differ from every message of their tick on the topic.
    wrong: int = 0

    def line(self) -> str:
        text = (
            f"{self.case}: produced={self.produced} in_csv={self.in_csv} "
            f"lost={self.lost} duplicated={self.duplicated} torn={self.torn} wrong={self.wrong}"
        )
        if self.notes:
            text += " | " + " ".join(f"{k}={v}" for k, v in self.notes.items())
        return text

    def report(self) -> None:
        line = self.line()
        FIGURES.append(line)
        print(f"\nFIGURES {line}", flush=True)

    def assert_exact(self) -> None:
        assert (self.lost, self.duplicated, self.torn, self.wrong) == (0, 0, 0, 0), self.line()
        assert self.in_csv == self.produced, self.line()


# -- reading the topic ---------------------------------------------------------------


@dataclass
class TopicContent:
    ticks: list[TickKey]
    #: (partition, offset, value) of every message that is not a tick.
    others: list[tuple[int, int, bytes | None]]
    #: Every CSV row a tick's messages call for (copies may differ in other columns).
    rows: dict[TickKey, list[list[str]]] = field(default_factory=dict)

    @property
    def distinct(self) -> set[TickKey]:
        return set(self.ticks)

    def __add__(self, other: TopicContent) -> TopicContent:
        """Two topics (or two lives of one topic) that fed the same files."""
        rows = {k: list(v) for k, v in self.rows.items()}
        for key, candidates in other.rows.items():
            rows.setdefault(key, []).extend(r for r in candidates if r not in rows[key])
        return TopicContent(self.ticks + other.ticks, self.others + other.others, rows)


class _NotATick(Exception):
    pass


def _decimal(value: Any, *, required: bool, negative: bool) -> str | None:
    """The data contract of a decimal field: a finite decimal (string or JSON number)."""
    if value is None or value == "":
        if required:
            raise _NotATick
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _NotATick
    text = value.strip() if isinstance(value, str) else repr(value)
    if not _DECIMAL.fullmatch(text):
        raise _NotATick
    if not negative and text.startswith("-") and text.strip("-0.eE"):
        raise _NotATick
    return text


def _text_cell(value: Any, *, required: bool) -> str:
    """A text field as the CSV shows it: blank is empty, no control characters, and a
    cell whose first visible character starts a formula is marked as text with '."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _NotATick
        return ""
    if not isinstance(value, str):
        raise _NotATick
    value = _CONTROL.sub(" ", value)
    return "'" + value if value.lstrip()[:1] in ("=", "+", "-", "@") else value


def _asset_id(value: Any) -> Any:
    """The contract of an id: a key with no blank or control character, not starting
    with ' (so no two ids show as one CSV cell)."""
    bad = lambda c: c.isspace() or ord(c) < 32 or ord(c) == 127  # noqa: E731
    if isinstance(value, str) and value.strip() and (value[0] == "'" or any(map(bad, value))):
        raise _NotATick
    return value


def message_row(value: bytes | None) -> list[str] | None:
    """The CSV row (parsed cells) a message calls for, or None when it breaks the
    data contract (so the sink must dead-letter it)."""
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    ts = data.get("timestamp")
    try:
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise _NotATick
        if not EARLIEST <= ts <= time.time() + FUTURE_TOLERANCE:
            raise _NotATick
        row = [
            repr(float(ts)),
            _text_cell(_asset_id(data.get("id")), required=True),
            _text_cell(data.get("symbol"), required=False),
            _text_cell(data.get("name"), required=False),
            _decimal(data.get("priceUsd"), required=True, negative=False) or "",
            _decimal(data.get("changePercent24Hr"), required=False, negative=True) or "",
            _decimal(data.get("firstValue"), required=False, negative=False) or "",
            _decimal(data.get("vwap24Hr"), required=False, negative=False) or "",
        ]
    except _NotATick:
        return None
    return row


def message_key(value: bytes | None) -> TickKey | None:
    """The tick identity of a message value, or None when it breaks the data contract.

    The asset is the id as its CSV cell shows it, so both sides of the audit agree.
    """
    row = message_row(value)
    return None if row is None else key_of(row[1], row[0], row[4])


async def read_topic(bootstrap: str, topic: str, timeout: float = 120) -> TopicContent:
    """Every message on ``topic`` up to its current end (read_committed, all partitions)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_poll_records=20_000,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            partitions = consumer.partitions_for_topic(topic)
            while partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            by_partition: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, messages in batch.items():
                    by_partition[tp.partition].extend(m for m in messages if m.offset < ends[tp])
    finally:
        await consumer.stop()
    return content_of(
        (partition, m.offset, m.value)
        for partition, messages in sorted(by_partition.items())
        for m in messages
    )


def content_of(messages: Iterable[tuple[int, int, bytes]]) -> TopicContent:
    """What the audit needs of a topic's (partition, offset, value) messages, in order."""
    content = TopicContent([], [])
    for partition, offset, value in messages:
        row = message_row(value)
        if row is None:
            content.others.append((partition, offset, value))
            continue
        key = key_of(row[1], row[0], row[4])
        content.ticks.append(key)
        candidates = content.rows.setdefault(key, [])
        if row not in candidates:
            candidates.append(row)
    return content


async def end_offsets(bootstrap: str, topic: str, timeout: float = 30) -> dict[int, int]:
    """The topic's end offset per partition (a fresh client: brokers may have moved)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with asyncio.timeout(timeout):
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic)
            while partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps)
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, timeout: float = 30) -> dict[int, int]:
    """Kafka's committed offsets of ``group`` (what the service told Kafka it has written)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    async with asyncio.timeout(timeout):
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
            return {tp.partition: meta.offset for tp, meta in offsets.items()}
        finally:
            await admin.close()


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes | None, Any]]) -> None:
    """Publish (key, value) pairs in order, as another application would (acks=all)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def create_topic(bootstrap: str, topic: str, timeout: float = 60) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    async with asyncio.timeout(timeout):
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()


def numbered_tick(i: int, now: float, source: str = "other-application") -> bytes:
    """The i-th of a test's own ticks (not the demo's): one asset, a distinct time and
    price each, times from ``now`` - 10,000 s on, half a second apart."""
    return orjson.dumps(
        {
            "schema": "cryptostream.tick/1",
            "timestamp": now - 10_000 + i * 0.5,
            "id": "bitcoin",
            "symbol": "BTC",
            "name": "Bitcoin",
            "priceUsd": f"{60_000 + i}.25",
            "changePercent24Hr": "1.5",
            "firstValue": "60000.25",
            "vwap24Hr": None,
            "source": source,
        }
    )


async def delete_topic(bootstrap: str, topic: str, timeout: float = 60) -> None:
    """Delete ``topic`` and wait until the cluster no longer lists it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    async with asyncio.timeout(timeout):
        await admin.start()
        try:
            await admin.delete_topics([topic])
            for _ in range(int(timeout / 0.2)):
                if topic not in await admin.list_topics():
                    break
                await asyncio.sleep(0.2)
        finally:
            await admin.close()


async def metric(port: int, name: str, labels: str = "") -> float:
    """One sample of the service's /metrics (``labels`` as rendered, e.g. 'kind="x"');
    the sum over every label set when ``labels`` is empty."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name or (sample.startswith(name + "{") and labels in sample):
            total += float(value)
    return total


async def partition_leader(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, list[int]]:
    """(leader node id, in-sync replicas) of one partition, from the cluster's metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    async with asyncio.timeout(30):
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
    for p in described["partitions"]:
        if p["partition"] == partition:
            return int(p["leader"]), sorted(int(n) for n in p["isr"])
    raise AssertionError(f"no partition {partition} in {described}")


# -- reading the files ---------------------------------------------------------------


@dataclass
class CsvContent:
    keys: list[TickKey]
    rows: list[list[str]]
    torn: int
    header_ok: bool


def read_csv(path: Path, *, header: bool = True) -> CsvContent:
    """Every row of a CSV the sink writes; a line that is not a whole valid row is torn."""
    data = path.read_bytes() if path.exists() else b""
    content = CsvContent([], [], 0, True)
    if header:
        content.header_ok = data.startswith(HEADER)
        data = data[len(HEADER) :] if content.header_ok else data
    if data and not data.endswith(b"\n"):
        content.torn += 1
        data = data[: data.rfind(b"\n") + 1]
    for raw in data.split(b"\n")[:-1]:
        try:
            line = raw.decode("utf-8")
            fields = next(csv.reader([line], strict=True))
            if len(fields) != len(COLUMNS):
                raise ValueError(f"{len(fields)} fields")
            float(fields[0])
            if not fields[1] or not _DECIMAL.fullmatch(fields[4]):
                raise ValueError("no id or price")
            for cell in fields[5:]:
                if cell and not _DECIMAL.fullmatch(cell):
                    raise ValueError(f"not a number: {cell!r}")
        except (UnicodeDecodeError, csv.Error, ValueError, StopIteration):
            content.torn += 1
            continue
        content.rows.append(fields)
        content.keys.append(key_of(fields[1], fields[0], fields[4]))
    return content


def _without_first(row: list[str]) -> list[str]:
    return row[:6] + row[7:]


def compare(
    case: str,
    produced: Iterable[TickKey],
    csv_keys: list[TickKey],
    torn: int,
    *,
    csv_rows: list[list[str]] | None = None,
    expected_rows: Mapping[TickKey, list[list[str]]] | None = None,
) -> Figures:
    """Count lost, duplicated and torn rows; with the topic's rows, wrong ones too:
    every cell of every row against the message of its tick."""
    expected = set(produced)
    counts = collections.Counter(csv_keys)
    figures = Figures(
        case=case,
        produced=len(expected),
        in_csv=len(csv_keys),
        lost=len(expected - counts.keys()),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        torn=torn,
    )
    phantom = len(counts.keys() - expected)
    if phantom:
        figures.notes["not_on_topic"] = phantom
    if csv_rows is not None and expected_rows is not None:
        # firstValue (cell 6) is the sink's own, checked by its rule in every file
        # (first_value_wrong); every other cell must be the message's.
        figures.wrong = sum(
            1
            for key, row in zip(csv_keys, csv_rows, strict=True)
            if key in expected_rows
            and not any(_without_first(row) == _without_first(r) for r in expected_rows[key])
        )
    return figures


def utc_day(timestamp: str) -> str:
    return dt.datetime.fromtimestamp(float(timestamp), tz=dt.UTC).date().isoformat()


def first_value_wrong(rows: list[list[str]]) -> int:
    """Rows of one file whose firstValue is not the priceUsd of the first row of the
    same asset and UTC day in that file."""
    first: dict[tuple[str, str], str] = {}
    wrong = 0
    for row in rows:
        if row[6] != first.setdefault((row[1], utc_day(row[0])), row[4]):
            wrong += 1
    return wrong


_CANDLE_LEVELS = (("1m", 60), ("1h", 3600), ("1d", 86400))


def _expected_candles(rows: list[list[str]], width: int) -> dict[tuple[int, str], list[str]]:
    """Candles of one day's tick rows, by the documented rule: open/close are the prices
    with the smallest/largest timestamp, high/low the extremes, in file order for ties."""
    acc: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        ts, price = float(row[0]), Decimal(row[4])
        key = (int(ts // width) * width, row[1])
        c = acc.get(key)
        if c is None:
            acc[key] = c = {"open": row, "close": row, "high": price, "low": price, "n": 0}
            c["vwaps"] = []
        if ts < float(c["open"][0]):
            c["open"] = row
        if ts >= float(c["close"][0]):
            c["close"] = row
        c["high"], c["low"] = max(c["high"], price), min(c["low"], price)
        c["n"] += 1
        if row[7]:
            c["vwaps"].append(Decimal(row[7]))
    out = {}
    for key, c in acc.items():
        vwaps = c["vwaps"]
        mean = ""
        if vwaps:
            exact = sum(vwaps) / len(vwaps)
            try:
                mean = str(exact.quantize(Decimal("1e-16")))
            except InvalidOperation:  # too many digits for 16 decimals: as computed
                mean = str(exact)
        out[key] = [
            str(key[0]),
            key[1],
            c["open"][4],
            str(c["high"]),
            str(c["low"]),
            c["close"][4],
            c["open"][0],
            c["close"][0],
            str(c["n"]),
            mean,
        ]
    return out


def _candle_file(path: Path) -> dict[tuple[int, str], list[str]]:
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    # Without the symbol (cell 2): the tick rows give each asset's.
    found = {}
    for r in rows:
        found[(int(r[0]), r[1])] = [r[0], r[1], *r[3:]]
    return found


def _same_candle(got: list[str] | None, want: list[str]) -> bool:
    if got is None:
        return False
    numeric = (3, 4)  # high, low: compared as numbers (the text of either extreme)
    return all(
        (Decimal(g) == Decimal(w)) if i in numeric else _close_means(g, w) if i == 9 else g == w
        for i, (g, w) in enumerate(zip(got, want, strict=True))
    )


def _close_means(got: str, want: str) -> bool:
    """The vwap mean: the same text, or (for values past the 28 digits that decimal
    arithmetic keeps) the same number to 20 significant digits, since sums of
    hours and of minutes round in another order."""
    if got == want or not got or not want:
        return got == want
    g, w = Decimal(got), Decimal(want)
    return abs(g - w) <= abs(w) * Decimal("1e-20")


def audit_candles(data_dir: Path) -> tuple[int, int]:
    """(candles expected, candle rows that are wrong, missing or extra): every candle
    file recomputed from the tick files, all three levels."""
    candles = data_dir / "history" / "candles"
    expected = wrong = 0
    days = {}
    for path in sorted((data_dir / "history" / "ticks").glob("*.csv")):
        days[path.stem] = read_csv(path).rows
    years: dict[str, dict[tuple[int, str], list[str]]] = {}
    for day, rows in days.items():
        for level, width in _CANDLE_LEVELS:
            want = _expected_candles(rows, width)
            expected += len(want)
            if level == "1d":
                year = years.setdefault(day[:4], _candle_file(candles / "1d" / f"{day[:4]}.csv"))
                start = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp())
                got = {k: year.pop(k) for k in list(year) if k[0] == start}
            else:
                got = _candle_file(candles / level / f"{day}.csv")
            wrong += sum(not _same_candle(got.pop(k, None), v) for k, v in want.items())
            wrong += len(got)  # candles of no tick
    wrong += sum(len(rest) for rest in years.values())
    for level in ("1m", "1h"):
        wrong += sum(
            len(_candle_file(p)) for p in (candles / level).glob("*.csv") if p.stem not in days
        )
    return expected, wrong


def audit(case: str, data_dir: Path, produced: TopicContent | Iterable[TickKey]) -> Figures:
    """Figures of ``crypto_data.csv``; the daily history files and the last-values
    file are checked too (every CSV the sink writes), their counts in the notes, and
    so are firstValue in every file and the candles against the tick files.

    Given the topic's content (not only its tick keys), every column of every row
    is compared with the topic's message too (``wrong``).
    """
    rows = produced.rows if isinstance(produced, TopicContent) else None
    produced = list(produced.ticks if isinstance(produced, TopicContent) else produced)
    main = read_csv(data_dir / "crypto_data.csv")
    assert main.header_ok, "crypto_data.csv does not start with the header"
    figures = compare(case, produced, main.keys, main.torn, csv_rows=main.rows, expected_rows=rows)
    first_wrong = first_value_wrong(main.rows)

    daily_keys: list[TickKey] = []
    daily_rows: list[list[str]] = []
    daily_torn = 0
    for path in sorted((data_dir / "history" / "ticks").glob("*.csv")):
        day = read_csv(path)
        assert day.header_ok, f"{path.name} does not start with the header"
        daily_keys += day.keys
        daily_rows += day.rows
        daily_torn += day.torn
        first_wrong += first_value_wrong(day.rows)
    if daily_keys or daily_torn:
        history = compare(
            case, produced, daily_keys, daily_torn, csv_rows=daily_rows, expected_rows=rows
        )
        figures.notes["history_lost"] = history.lost
        figures.notes["history_duplicated"] = history.duplicated
        figures.notes["history_torn"] = history.torn
        if rows is not None:
            figures.notes["history_wrong"] = history.wrong

    last = read_csv(data_dir / "crypto_last_values.csv")
    newest: dict[str, list[str]] = {}
    for row in main.rows:
        if row[1] not in newest or float(row[0]) >= float(newest[row[1]][0]):
            newest[row[1]] = row
    figures.notes["last_values_ok"] = (
        last.header_ok and last.torn == 0 and {r[1]: r for r in last.rows} == newest
    )
    # crypto_last_values.csv repeats rows of crypto_data.csv: the same rule, judged there.
    firsts: dict[tuple[str, str], str] = {}
    for row in main.rows:
        firsts.setdefault((row[1], utc_day(row[0])), row[4])
    first_wrong += sum(r[6] != firsts.get((r[1], utc_day(r[0]))) for r in last.rows)
    figures.notes["first_value_rows"] = len(main.rows) + len(daily_keys) + len(last.rows)
    figures.notes["first_value_wrong"] = first_wrong
    if (data_dir / "history" / "candles").exists() or daily_keys:
        figures.notes["candles"], figures.notes["candles_wrong"] = audit_candles(data_dir)
    return figures


def assert_all_files_exact(figures: Figures) -> None:
    figures.assert_exact()
    for name in (
        "history_lost",
        "history_duplicated",
        "history_torn",
        "history_wrong",
        "not_on_topic",
    ):
        assert not figures.notes.get(name), figures.line()
    assert figures.notes.get("last_values_ok") is True, figures.line()
    assert figures.notes.get("first_value_wrong") == 0, figures.line()
    assert figures.notes.get("candles_wrong", 0) == 0, figures.line()


def sink_state(data_dir: Path) -> dict[str, Any]:
    path = data_dir / ".cryptostream" / "sink_state.json"
    try:
        state: dict[str, Any] = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return state


def state_offsets(data_dir: Path) -> dict[int, int]:
    return {int(p): int(o) for p, o in sink_state(data_dir).get("offsets", {}).items()}


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def row_count(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


# -- the service as a child process ---------------------------------------------------


def service_env(
    *,
    bootstrap: str,
    topic: str,
    group: str,
    data_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A clean environment: nothing of the caller's CRYPTOSTREAM_* or secrets leaks in."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "CRYPTOSTREAM_KAFKA__TOPIC": topic,
        "CRYPTOSTREAM_KAFKA__GROUP_ID": group,
        "CRYPTOSTREAM_KAFKA__REQUEST_TIMEOUT": "5",
        "CRYPTOSTREAM_KAFKA__SEND_TIMEOUT": "10",
        "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "2",
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "CRYPTOSTREAM_WEB__PORT": "0",
        "CRYPTOSTREAM_LOG__FORMAT": "json",
        # The live dashboard is not on the data path this suite checks.
        "CRYPTOSTREAM_WEB__DASHBOARD": "false",
        # Polls every fraction of a second against the fake CoinCap: no budget would
        # last (a budget would pace them); credits are counted all the same.
        "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "0",
        **(extra or {}),
    }


async def settle(svc: ServiceProcess, bootstrap: str, topic: str, data_dir: Path) -> bool:
    """Wait (bounded) until the sink state is at the topic's end; False if it never is.

    Exactly at it: an offset beyond the end is a reset or truncation not handled yet,
    not "caught up".
    """
    # A topic created again under a running consumer shows up at its next metadata
    # refresh (metadata_max_age_ms: 30 s).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and svc.running:
        ends = await end_offsets(bootstrap, topic)
        if ends and all(state_offsets(data_dir).get(p, -1) == e for p, e in ends.items()):
            return True
        await asyncio.sleep(0.5)
    return False


class ServiceProcess:
    """``python -m cryptostream run`` as a child; every run's output appends to one log."""

    def __init__(self, env: Mapping[str, str], workdir: Path, name: str = "service") -> None:
        self.env = dict(env)
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._run_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, env: Mapping[str, str] | None = None) -> None:
        assert not self.running, "already running"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            log.flush()
            self._run_offset = log.tell()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cryptostream",
                "run",
                env={**self.env, **(env or {})},
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1

    async def kill(self) -> None:
        """SIGKILL and reap: no chance to flush, close or clean anything up."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM (an orderly stop) and the exit code; SIGKILL if it overruns."""
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                await self.kill()
                raise AssertionError(f"no orderly stop in {timeout} s\n{self.tail()}") from None
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def ensure_stopped(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            await self.kill()

    def output(self, *, this_run: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._run_offset if this_run else 0 :].decode("utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def events(self, name: str | None = None, *, this_run: bool = False) -> list[dict[str, Any]]:
        found = []
        for line in self.output(this_run=this_run).splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if name is None or entry.get("event") == name:
                found.append(entry)
        return found

    async def wait_event(self, name: str, count: int = 1, timeout: float = 30) -> None:
        """Wait until this run has logged ``name`` ``count`` times."""
        await wait_until(
            lambda: len(self.events(name, this_run=True)) >= count or not self.running,
            timeout,
            f"{count} x {name}",
        )
        assert self.running or len(self.events(name, this_run=True)) >= count, (
            f"service exited ({self.proc.returncode if self.proc else None}) "
            f"before {name}:\n{self.tail()}"
        )
