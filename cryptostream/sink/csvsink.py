"""The exactly-once CSV sink.

The consumed Kafka offsets live *with the data*, in ``.cryptostream/sink_state.json``
beside the CSV files, not only in Kafka. Each batch is one transaction:

1. append the rows to ``crypto_data.csv`` (and poison messages to the
   dead-letter file) and fsync;
2. atomically replace ``crypto_last_values.csv``;
3. atomically replace the state: next offset per partition, the durable length
   of every append-only file, the recent-tick keys used to drop duplicates, and
   the last row per asset.

Kafka's committed offsets are written after that, for lag monitoring only.
On start the sink truncates every append-only file to the length in the state
(cutting off a torn line or rows whose batch never committed) and the consumer
seeks to the state's offsets, so rows after a crash are written again exactly once.
A record below the state's offset for its partition is ignored: a rewind of the
consumer can never duplicate a row.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.sink.csvrow import HEADER, csv_line
from cryptostream.sink.files import AppendFile, atomic_write
from cryptostream.tick import InvalidTick, Tick, tick_from_json

log = get_logger(__name__)

DATA_FILE = "crypto_data.csv"
LAST_VALUES_FILE = "crypto_last_values.csv"
DEAD_LETTER_FILE = "errors/dead_letters.jsonl"
STATE_FILE = ".cryptostream/sink_state.json"
STATE_VERSION = 1
# Per asset, how many recent (timestamp, price) keys are remembered to drop
# a tick that reaches the topic twice (e.g. a producer retry across a restart).
RECENT_KEYS = 64


class SinkError(Exception):
    """The sink cannot start (e.g. a CSV with other columns is in the way)."""


class SinkWriteError(Exception):
    """A batch could not be made durable; nothing of it counts as written."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class Record:
    """The part of a Kafka record the sink needs."""

    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int = 0


@dataclass(slots=True)
class BatchResult:
    written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    skipped_below_offset: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _State:
    topic: str
    offsets: dict[int, int]
    sizes: dict[str, int]
    recent: dict[str, deque[tuple[float, str]]]
    last: dict[str, str]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": STATE_VERSION,
                "topic": self.topic,
                "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
                "files": self.sizes,
                "recent": {k: list(v) for k, v in self.recent.items()},
                "last": self.last,
            }
        )


class CsvSink:
    def __init__(self, data_dir: Path, topic: str, metrics: Metrics, *, fsync: bool = True) -> None:
        self.data_dir = data_dir
        self.topic = topic
        self.metrics = metrics
        self._fsync = fsync
        self._state = _State(topic, {}, {}, {}, {})
        self._files: dict[str, AppendFile] = {}
        self.opened = False
        #: Seconds since the epoch of the last durable batch (for readiness).
        self.last_write = 0.0
        self._observers: list[Callable[[list[Tick]], None]] = []

    def subscribe(self, observer: Callable[[list[Tick]], None]) -> None:
        """Call ``observer`` with the ticks of every batch once it is durable."""
        self._observers.append(observer)

    # -- start-up -----------------------------------------------------------------

    def open(self) -> None:
        """Recover to the last committed transaction. Raises :class:`SinkError`."""
        try:
            self._open()
        except OSError as exc:
            raise SinkError(f"cannot open data directory {self.data_dir}: {exc}") from exc

    def _open(self) -> None:
        (self.data_dir / ".cryptostream").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "errors").mkdir(parents=True, exist_ok=True)
        state_path = self.data_dir / STATE_FILE
        have_state = state_path.exists()
        if have_state:
            self._state = self._load_state(state_path)
        for name in (DATA_FILE, DEAD_LETTER_FILE):
            self._files[name] = AppendFile(self.data_dir / name, fsync=self._fsync)
        for name, f in self._files.items():
            recorded = self._state.sizes.get(name)
            if recorded is None:
                recorded = self._complete_lines_length(f) if f.size else 0
            if f.size > recorded:
                log.warning(
                    "sink_uncommitted_tail_removed",
                    file=name,
                    bytes=f.size - recorded,
                    committed_size=recorded,
                )
                f.truncate(recorded)
            elif f.size < recorded:
                # Someone shortened or replaced the file; keep appending from here.
                log.warning(
                    "sink_file_shorter_than_state",
                    file=name,
                    size=f.size,
                    committed_size=recorded,
                )
            self._state.sizes[name] = f.size
        self._check_header(self._files[DATA_FILE])
        self._write_last_values()
        self.opened = True
        log.info(
            "sink_opened",
            data_dir=str(self.data_dir),
            state="recovered" if have_state else "new",
            offsets=self._state.offsets or None,
            rows_bytes=self._files[DATA_FILE].size,
        )

    def _load_state(self, path: Path) -> _State:
        try:
            raw: dict[str, Any] = orjson.loads(path.read_bytes())
            if raw.get("version") != STATE_VERSION:
                raise SinkError(f"{path}: unknown state version {raw.get('version')!r}")
            topic = str(raw["topic"])
            state = _State(
                topic=topic,
                offsets={int(p): int(o) for p, o in raw["offsets"].items()},
                sizes={str(k): int(v) for k, v in raw["files"].items()},
                recent={
                    k: deque(((float(t), str(p)) for t, p in v), maxlen=RECENT_KEYS)
                    for k, v in raw["recent"].items()
                },
                last={str(k): str(v) for k, v in raw["last"].items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SinkError(
                f"{path} is damaged ({exc}); move it away to rebuild from Kafka's committed offsets"
            ) from None
        if topic != self.topic:
            raise SinkError(
                f"{self.data_dir} holds data consumed from topic {topic!r}, "
                f"not {self.topic!r}: use another storage.data_dir"
            )
        return state

    @staticmethod
    def _complete_lines_length(f: AppendFile) -> int:
        """Length up to the last newline: without a state, a partial last line is torn."""
        tail = f.read_tail(1 << 16)
        cut = tail.rfind(b"\n")
        if cut < 0:
            return f.size - len(tail) if len(tail) < f.size else 0
        return f.size - len(tail) + cut + 1

    def _check_header(self, f: AppendFile) -> None:
        if f.size == 0:
            f.append(HEADER.encode())
            self._state.sizes[DATA_FILE] = f.size
            return
        head = f.read_head(len(HEADER))
        if head != HEADER.encode():
            first = head.split(b"\n", 1)[0].decode(errors="replace")
            raise SinkError(
                f"{f.path} has other columns ({first!r}); expected {HEADER.strip()!r}. "
                "Move the file away or use another storage.data_dir"
            )

    # -- the transaction ----------------------------------------------------------

    def committed_offsets(self) -> dict[int, int]:
        """Next offset to read per partition, as of the last durable batch."""
        return dict(self._state.offsets)

    def write(self, records: Iterable[Record]) -> BatchResult:
        """Make one batch durable. Raises :class:`SinkWriteError`; then nothing counts."""
        state = self._state
        result = BatchResult()
        offsets = dict(state.offsets)
        rows: list[str] = []
        dead: list[bytes] = []
        last_updates: dict[str, str] = {}
        new_keys: list[tuple[str, tuple[float, str]]] = []
        seen_in_batch: set[tuple[str, float, str]] = set()
        written: list[Tick] = []
        for rec in records:
            if rec.offset < offsets.get(rec.partition, 0):
                result.skipped_below_offset += 1
                continue
            offsets[rec.partition] = rec.offset + 1
            try:
                tick = tick_from_json(rec.value)
            except InvalidTick as exc:
                dead.append(self._dead_letter(rec, exc))
                self.metrics.dead_letters.labels(exc.reason).inc()
                continue
            key = (tick.timestamp, tick.price_usd)
            known = state.recent.get(tick.id)
            if (known is not None and key in known) or ((tick.id, *key) in seen_in_batch):
                result.duplicates += 1
                continue
            seen_in_batch.add((tick.id, *key))
            new_keys.append((tick.id, key))
            line = csv_line(tick)
            rows.append(line)
            written.append(tick)
            prev = last_updates.get(tick.id) or state.last.get(tick.id)
            if prev is None or _line_ts(prev) <= tick.timestamp:
                last_updates[tick.id] = line
        result.written = len(rows)
        result.dead_letters = len(dead)
        if offsets == state.offsets:
            return result

        old_sizes = dict(state.sizes)
        try:
            if rows:
                self._append(DATA_FILE, "".join(rows).encode())
            if dead:
                self._append(DEAD_LETTER_FILE, b"".join(dead))
            last = state.last
            if last_updates:
                last = {**state.last, **last_updates}
                self._write_last_values(last)
            recent = {k: deque(v, maxlen=RECENT_KEYS) for k, v in state.recent.items()}
            for asset, key in new_keys:
                recent.setdefault(asset, deque(maxlen=RECENT_KEYS)).append(key)
            new_state = _State(
                state.topic,
                offsets,
                {name: f.size for name, f in self._files.items()},
                recent,
                last,
            )
            atomic_write(self.data_dir / STATE_FILE, new_state.to_json(), fsync=self._fsync)
        except OSError as exc:
            self._rollback(old_sizes)
            kind = "disk_full" if exc.errno == 28 else "io_error"
            self.metrics.sink_errors.labels(kind).inc()
            raise SinkWriteError(kind, f"{exc.strerror or exc} ({exc.filename or ''})") from exc
        self._state = new_state
        self.last_write = done = time.time()
        result.latencies = [done - t.timestamp for t in written]
        for observer in self._observers:
            try:
                observer(written)
            except Exception:
                log.exception("sink_observer_failed")
        return result

    def _append(self, name: str, data: bytes) -> None:
        self._files[name].append(data)

    def _rollback(self, sizes: dict[str, int]) -> None:
        """Cut every file back to the last committed length (best effort)."""
        for name, f in self._files.items():
            size = sizes.get(name, f.size)
            try:
                if f.actual_size() != size:
                    f.truncate(size)
                f.size = size
            except OSError as exc:
                # Start-up truncates again from the state, so nothing is lost.
                log.error("sink_rollback_failed", file=name, error=exc.strerror)
        if sizes != {n: f.size for n, f in self._files.items()}:
            log.error("sink_sizes_diverged")

    def _dead_letter(self, rec: Record, exc: InvalidTick) -> bytes:
        value = rec.value or b""
        try:
            text: str = value.decode()
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        return (
            orjson.dumps(
                {
                    "topic": self.topic,
                    "partition": rec.partition,
                    "offset": rec.offset,
                    "reason": exc.reason,
                    "detail": exc.detail,
                    "value": text,
                }
            )
            + b"\n"
        )

    def _write_last_values(self, last: dict[str, str] | None = None) -> None:
        rows = last if last is not None else self._state.last
        data = HEADER + "".join(rows[k] for k in sorted(rows))
        atomic_write(self.data_dir / LAST_VALUES_FILE, data.encode(), fsync=self._fsync)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self.opened = False


def _line_ts(line: str) -> float:
    return float(line.split(",", 1)[0])
