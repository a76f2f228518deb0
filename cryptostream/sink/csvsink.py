"""The exactly-once CSV sink.

The consumed Kafka offsets live *with the data*, in ``.cryptostream/sink_state.json``
beside the CSV files, not only in Kafka. Each batch is one transaction:

1. append the rows to ``crypto_data.csv`` and to the UTC day's
   ``history/ticks/YYYY-MM-DD.csv`` (and records it cannot write to the
   dead-letter file), fsync each;
2. atomically replace the state: next offset per partition, the durable length
   of every append-only file, and the last row per asset;
3. after that commit point (and the ``last_write`` stamp), atomically replace
   ``crypto_last_values.csv`` from the committed state (derived and rebuilt at
   start, so written without fsync: a failure is logged, the batch still counts).

That is four fsyncs a transaction (the two appends, the state file and its
directory); the candles' files, derived, are rewritten every few seconds after it,
on a thread of their own (the next transaction does not wait for their fsyncs).

**The rename of the state file is the commit point.** A failure before it rolls
the batch back (every file cut to its committed length) and the batch is
retried; a failure after it (the directory fsync) is reported but the batch
counts, since the state on disk already counts its rows. If the rollback
itself fails, the sink recovers from its state, as on a restart, before it
writes again.

Kafka's committed offsets are written after that, for lag monitoring only.
On start the sink truncates every append-only file to the length in the state
(cutting off a torn line or rows whose batch never committed), removes a daily
file the state does not know (created by a batch that never committed), and
the consumer seeks to the state's offsets, so rows after a crash are written
again exactly once. Only the sink's own write is ever cut: each batch records
what it appends (start, expected end, first bytes) in
``.cryptostream/sink_pending.json`` before appending, and a tail that is not
exactly that is a person's.

The files belong to the user. Before each append (and on start) the sink
compares the file at the path with the one it has open and its length with the
recorded one; a file a person appended to, saved over, shortened, emptied or
deleted is kept untouched under an ``.edited-<UTC time>`` name and a fresh one
is started (:meth:`CsvSink._set_aside`): one error event, one metric, no row
lost (the daily files and the topic hold them; ``replay`` rebuilds).

A data directory without a state gets one at once, before its first batch. A
record below the state's offset for its partition is ignored: a rewind of the
consumer can never duplicate a row.

The state also records which topic the offsets belong to (:class:`TopicIdentity`:
the cluster id and the log's start and end), so the consumer can tell a topic
that was reset from the one the offsets were taken from.

Derived files are rebuilt from the durable rows, never the other way round:
candles (see :mod:`cryptostream.sink.candles`) and the retention trim of
``crypto_data.csv`` (the daily files keep everything). Each row's ``firstValue``
is decided here from the committed daily files (see
:mod:`cryptostream.sink.firstvalues`), not taken from the message.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

import orjson

from cryptostream.csvrow import COLUMNS, HEADER, csv_line, text_cell
from cryptostream.days import Days, day_start
from cryptostream.files import AppendFile, atomic_write, fsync_dir, replacing
from cryptostream.layout import (
    DATA_FILE,
    DEAD_LETTER_FILE,
    ERRORS_DIR,
    LAST_VALUES_FILE,
    SINK_PENDING_FILE,
    SINK_STATE_FILE,
    STATE_DIR,
    TICKS_DIR,
    daily_file,
    set_aside_file,
)
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.sink.batch import (
    Decoded,
    Key,
    Rows,
    by_day,
    day_names,
    dead_letter,
    decode,
    dedup,
    group_by_asset,
    last_lines,
    line_time,
    newest_time,
    render,
    stamp_days,
)
from cryptostream.sink.candles import YIELD_ROWS, YIELD_SECONDS, CandleBook
from cryptostream.sink.daykeys import DayKeys
from cryptostream.sink.firstvalues import FirstValueBook
from cryptostream.sink.readback import Unreadable
from cryptostream.sinkport import BatchResult, KafkaRecord, SinkWriteError, TopicIdentity
from cryptostream.tick import InvalidTick, Tick, latest_timestamp, tick_from_json

log = get_logger(__name__)

STATE_VERSION = 1
# Per asset, how many recent (timestamp, price) keys are remembered to drop
# a tick that reaches the topic twice (e.g. a producer retry across a restart).
# A retry resends at most one producer batch (2000 ticks, producer.BATCH), all of
# one asset in the worst case: the window must hold that many, or copies slip through.
RECENT_KEYS = 2048
# Daily files kept open at once (today and yesterday cover nearly every batch).
_OPEN_DAILY = 3
# Bytes of crypto_data.csv read back on start to rebuild the duplicate window
# (~60,000 rows: RECENT_KEYS for each of ~30 assets).
_WINDOW_TAIL_BYTES = 8 << 20
_HEADER = HEADER.encode()
_DAILY = TICKS_DIR + "/"
#: A daily file's name: a UTC date. Other names in history/ticks are not the sink's.
_DAY_NAME = re.compile(r"\d{4}-\d{2}-\d{2}\.csv")
#: Bytes of each append recorded in the pending file, to know the sink's own tail again
#: (a new daily file's header and the start of its first row).
_HEAD = 160
_INF = float("inf")


class SinkError(Exception):
    """The sink cannot start (e.g. a CSV with other columns is in the way)."""


@dataclass(slots=True)
class Record:
    """A Kafka record as the sink reads it (tests and tools; the consumer passes the
    Kafka client's own records, see :class:`~cryptostream.sinkport.KafkaRecord`)."""

    partition: int
    offset: int
    value: bytes | None


@dataclass(slots=True)
class _State:
    topic: str
    offsets: dict[int, int]
    sizes: dict[str, int]
    last: dict[str, str]
    #: None in a state written before identities were recorded: adopted on first sight.
    identity: TopicIdentity | None = None

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "topic": self.topic,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "files": self.sizes,
            "last": self.last,
        }
        if self.identity is not None:
            data["kafka"] = self.identity.to_json()
        return orjson.dumps(data)


class CsvSink:
    def __init__(
        self,
        data_dir: Path,
        topic: str,
        metrics: Metrics,
        *,
        fsync: bool = True,
        retention_days: int = 0,
        candles: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = data_dir
        self.topic = topic
        self.metrics = metrics
        self._fsync = fsync
        self._retention_days = retention_days
        self._clock = clock
        self._state = _State(topic, {}, {}, {})
        # Duplicate detection: per asset the keys of the last RECENT_KEYS rows written,
        # in order (to evict) and as a set (to ask "seen before?" in O(1)). Rebuilt
        # from the tail of crypto_data.csv on start, so the state file stays small.
        self._window: dict[str, deque[Key]] = {}
        self._known: dict[str, set[Key]] = {}
        # Per asset a time no row it committed is later than (see sink.batch.dedup): a
        # tick no later than it and not in the window is looked up in its day's file.
        self._newest: dict[str, float] = {}
        #: Decide a batch's rows per asset where the batch allows (see sink.batch); False
        #: decides every batch row by row (the general path; tests hold both to one result).
        self.fast_path = True
        self._files: OrderedDict[str, AppendFile] = OrderedDict()
        self._days = Days()
        # The days whose files the batch being decided has checked (see _check_day).
        self._days_checked: set[str] = set()
        self._trimmed_on = ""
        self._unreadable = Unreadable(metrics)
        # A file was set aside while opening: the state on disk is written at the end.
        self._state_changed = False
        self.candles = (
            CandleBook(
                data_dir,
                fsync=fsync,
                committed_size=self._committed_daily_size,
                skipped=self._skipped("candles"),
                # Its flushes' fsyncs off the transaction the consumer waits for.
                background=True,
            )
            if candles
            else None
        )
        # firstValue of every row, from the committed daily files (see sink.firstvalues).
        self._first_values = FirstValueBook(
            data_dir / TICKS_DIR, self._committed_daily_size, self._skipped("first_value")
        )
        # Rows older than the window, from the committed daily files (see sink.daykeys).
        self._day_keys = DayKeys(
            data_dir / TICKS_DIR, self._committed_daily_size, self._skipped("duplicates")
        )
        self.opened = False
        # A rollback could not cut the files back: recover from the state before writing.
        self._broken = False
        self._candles_error: str | None = None
        #: Seconds since the epoch of the last durable batch (for readiness).
        self.last_write = 0.0
        self._observers: list[Callable[[list[Tick]], None]] = []

    def _skipped(self, reader: str) -> Callable[[str, str], None]:
        """Where ``reader`` reports a line of a file it skipped (see sink.readback)."""

        def skipped(reason: str, file: str) -> None:
            self._unreadable.skip(reader, reason, file)

        return skipped

    def _committed_daily_size(self, day: str) -> int | None:
        return self._state.sizes.get(daily_file(day))

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
        for sub in (STATE_DIR, ERRORS_DIR, TICKS_DIR):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        state_path = self.data_dir / SINK_STATE_FILE
        have_state = state_path.exists()
        if have_state:
            self._state = self._load_state(state_path)
        # Without a state the sink never wrote here: nothing on disk is its own tail.
        pending = self._load_pending() if have_state else {}
        self._state_changed = False
        names = {DATA_FILE, DEAD_LETTER_FILE, *self._state.sizes}
        daily_on_disk = {
            f"{TICKS_DIR}/{p.name}"
            for p in (self.data_dir / TICKS_DIR).glob("*.csv")
            if _DAY_NAME.fullmatch(p.name)
        }
        if not have_state:
            names |= daily_on_disk
        for name in sorted(daily_on_disk - names):
            self._unknown_daily(name, pending.get(name))
        for name in sorted(names):
            self._recover(name, have_state, pending.get(name))
        self._check_header(self._file(DATA_FILE), have_state)
        if not have_state or self._state_changed:
            # Adopt what is on disk now, before any batch: without a state, a batch
            # that never committed could not be told from rows that did (its dead
            # letters would be written again when Kafka delivers it again).
            atomic_write(state_path, self._state.to_json(), fsync=self._fsync)
        # Every tail it described is cut or committed now.
        (self.data_dir / SINK_PENDING_FILE).unlink(missing_ok=True)
        self._rebuild_window()
        self._write_last_values()
        if self.candles is not None:
            self._candles_do(self.candles.recover)
        self.opened = True
        self._broken = False
        log.info(
            "sink_opened",
            data_dir=str(self.data_dir),
            state="recovered" if have_state else "new",
            offsets=self._state.offsets or None,
            rows_bytes=self._file(DATA_FILE).size,
        )

    def _recover(self, name: str, have_state: bool, pending: dict[str, Any] | None) -> None:
        """Bring ``name`` back to its committed length: only the sink's own uncommitted
        tail is cut; a file a person changed is set aside (see :meth:`_set_aside`)."""
        path = self.data_dir / name
        recorded = self._state.sizes.get(name)
        if not path.exists():
            if recorded:
                # It held committed rows: a person deleted it while the sink was stopped.
                self._report(name, "deleted", None)
                self._state_changed = True
            if name.startswith(_DAILY):
                self._state.sizes.pop(name, None)
                return
            recorded = None  # crypto_data.csv and the dead letters start afresh
        f = self._file(name)
        if recorded is None:
            # Not written by the sink (no state yet): a last line without its newline
            # is a person's, and the next row would be glued onto it.
            if self._complete_lines_length(f) != f.size:
                self._set_aside(name, "unterminated")
                return
        elif f.size > recorded:
            if not self._own_tail(f, recorded, pending):
                self._set_aside(name, "appended")
                return
            log.warning(
                "sink_uncommitted_tail_removed",
                file=name,
                bytes=f.size - recorded,
                committed_size=recorded,
            )
            f.truncate(recorded)
        elif f.size < recorded and not (pending and pending.get("trimmed_to") == f.size):
            # (A retention trim whose state was not written yet left it shorter: fine.)
            self._set_aside(name, "emptied" if f.size == 0 else "shortened")
            return
        self._state.sizes[name] = f.size

    def _unknown_daily(self, name: str, pending: dict[str, Any] | None) -> None:
        """A daily file the state does not know: a batch that never committed created it
        (removed), or a person put it there (set aside)."""
        f = self._file(name)
        if f.size == 0 or self._own_tail(f, 0, pending):
            log.warning("sink_uncommitted_file_removed", file=name)
            self._files.pop(name).close()
            (self.data_dir / name).unlink()
        else:
            self._set_aside(name, "not_in_state")

    @staticmethod
    def _own_tail(f: AppendFile, start: int, pending: dict[str, Any] | None) -> bool:
        """Are the bytes of ``f`` from ``start`` on the sink's own uncommitted append (the
        whole of it, or the beginning of it when a kill tore it)?"""
        if not pending or pending.get("start") != start:
            return False
        end, head = pending.get("end"), pending.get("head")
        if not isinstance(end, int) or not isinstance(head, str) or f.size > end:
            return False
        try:
            expected = bytes.fromhex(head)
        except ValueError:
            return False
        return expected.startswith(f.read_at(start, min(len(expected), f.size - start)))

    def _load_pending(self) -> dict[str, dict[str, Any]]:
        """The appends of the last batch, as it recorded them before appending."""
        try:
            raw = orjson.loads((self.data_dir / SINK_PENDING_FILE).read_bytes())
            files = raw["files"]
            return {str(k): v for k, v in files.items() if isinstance(v, dict)}
        except FileNotFoundError:
            return {}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            # Torn by a kill while it was written: before any append, so no tail is ours.
            return {}

    def _write_pending(self, files: dict[str, dict[str, Any]]) -> None:
        # No fsync: a kill keeps what the page cache holds, in order, so the record is
        # there whenever its appends are. After a power cut it may be missing while an
        # append survived: that tail is then set aside like a person's (nothing lost).
        atomic_write(
            self.data_dir / SINK_PENDING_FILE,
            orjson.dumps({"files": files}),
            fsync=False,
            sync_dir=False,
        )

    def _load_state(self, path: Path) -> _State:
        try:
            raw: dict[str, Any] = orjson.loads(path.read_bytes())
            if raw.get("version") != STATE_VERSION:
                raise SinkError(f"{path}: unknown state version {raw.get('version')!r}")
            topic = str(raw["topic"])
            kafka = raw.get("kafka")
            state = _State(
                topic=topic,
                offsets={int(p): int(o) for p, o in raw["offsets"].items()},
                sizes={str(k): int(v) for k, v in raw["files"].items()},
                last={str(k): str(v) for k, v in raw["last"].items()},
                identity=None if kafka is None else TopicIdentity.from_json(kafka),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SinkError(
                f"{path} is damaged ({exc}); move it away to rebuild from Kafka's committed offsets"
            ) from None
        if topic != self.topic:
            raise SinkError(
                f"{self.data_dir} holds data consumed from topic {topic!r}, "
                f"not {self.topic!r}: use another storage.data_dir"
            )
        return state

    def _rebuild_window(self) -> None:
        """Reload the duplicate-detection keys from the last rows of crypto_data.csv."""
        f = self._file(DATA_FILE)
        tail = f.read_tail(min(f.size - len(_HEADER), _WINDOW_TAIL_BYTES))
        if len(tail) < f.size - len(_HEADER):
            tail = tail[tail.find(b"\n") + 1 :]  # the first line may be cut
        window: dict[str, deque[Key]] = {}
        reader = csv.reader(io.StringIO(tail.decode("utf-8", errors="replace")))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:  # a cell over the reader's limit: a person's line
                self._unreadable.skip("recovery", "unparsable", DATA_FILE)
                continue
            if len(row) != len(COLUMNS):
                continue
            try:
                key = (float(row[0]), row[4])
            except ValueError:
                continue
            # The window is the asset id's: the cell of an id that starts a formula has
            # the apostrophe of the guard (see csvrow.text_cell; no id starts with one).
            asset = row[1][1:] if row[1].startswith("'") else row[1]
            window.setdefault(asset, deque(maxlen=RECENT_KEYS)).append(key)
        self._window = window
        self._known = {asset: set(keys) for asset, keys in window.items()}
        newest = {asset: newest_time(list(keys)) for asset, keys in window.items()}
        # Each asset's newest row (by time) is in the state: later than the window's
        # when rows came out of order, or when the tail read here was cut.
        for asset, line in self._state.last.items():
            with contextlib.suppress(ValueError):
                newest[asset] = max(newest.get(asset, -_INF), line_time(line))
        self._newest = newest

    @staticmethod
    def _complete_lines_length(f: AppendFile) -> int:
        """Length up to the last newline: without a state, a partial last line is torn."""
        tail = f.read_tail(1 << 16)
        # Without a newline in the tail, rfind() gives -1: the whole tail is torn.
        return f.size - len(tail) + tail.rfind(b"\n") + 1

    def _check_header(self, f: AppendFile, have_state: bool) -> None:
        if f.size == 0:
            f.append(_HEADER)
            self._state.sizes[DATA_FILE] = f.size
            return
        head = f.read_head(len(_HEADER))
        if head != _HEADER and have_state:
            # The sink's own file, saved over with other columns (or a BOM, CRLF ...).
            self._set_aside(DATA_FILE, "other_columns")
        elif head != _HEADER:
            first = head.split(b"\n", 1)[0].decode(errors="replace")
            raise SinkError(
                f"{f.path} has other columns ({first!r}); expected {HEADER.strip()!r}. "
                "Move the file away or use another storage.data_dir"
            )

    def _file(self, name: str) -> AppendFile:
        f = self._files.get(name)
        if f is not None:
            self._files.move_to_end(name)
            return f
        f = AppendFile(self.data_dir / name, fsync=self._fsync)
        self._files[name] = f
        daily = [n for n in self._files if n.startswith(TICKS_DIR)]
        for old in daily[: max(0, len(daily) - _OPEN_DAILY)]:
            self._files.pop(old).close()
        return f

    # -- files a person changed -----------------------------------------------------

    def _check(self, name: str) -> None:
        """Before appending to ``name``: is it still the file the sink writes, as long as
        the state records? If a person changed it, it is set aside first."""
        f = self._file(name)
        reason = f.change(self._state.sizes.get(name, 0))
        if reason is not None:
            self._set_aside(name, reason)

    def _set_aside(self, name: str, reason: str) -> None:
        """Keep the file a person changed untouched under an ``.edited-`` name and start
        a fresh one (crypto_data.csv with its header; a daily file with the next row).

        The rows are not lost: the daily files (for crypto_data.csv) and the topic hold
        them, and ``replay`` rebuilds the files from the topic. A deleted or emptied file
        holds nothing of the person's: it is only started afresh.
        """
        f = self._files.pop(name, None)
        if f is not None:
            f.close()
        path = self.data_dir / name
        kept: str | None = None
        if reason not in ("deleted", "emptied"):
            kept = self._set_aside_name(name)
            target = self.data_dir / kept
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
            if self._fsync:
                fsync_dir(target.parent)
                fsync_dir(path.parent)
        if name.startswith(_DAILY):
            # Created again by the next append, header first, like a new day's file.
            self._state.sizes.pop(name, None)
            day = name[len(_DAILY) : -len(".csv")]
            self._first_values.forget_day(day)
            self._day_keys.forget_day(day)
            if self.candles is not None:
                self._candles_do(self.candles.forget, day)
        else:
            fresh = self._file(name)
            if name == DATA_FILE and fresh.size == 0:
                fresh.append(_HEADER)
            self._state.sizes[name] = fresh.size
        if self.opened:
            atomic_write(self.data_dir / SINK_STATE_FILE, self._state.to_json(), fsync=self._fsync)
        else:
            self._state_changed = True
        self._report(name, reason, kept)

    def _set_aside_name(self, name: str) -> str:
        """``…edited-<UTC time>…``; unique even for two in one second."""
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        kept = set_aside_file(name, when)
        n = 1
        while (self.data_dir / kept).exists():
            n += 1
            kept = set_aside_file(name, f"{when}-{n}")
        return kept

    def _report(self, name: str, reason: str, kept: str | None) -> None:
        label = "daily" if name.startswith(_DAILY) else name.rpartition("/")[2]
        self.metrics.files_set_aside.labels(label, reason).inc()
        log.error(
            "file_set_aside",
            file=name,
            reason=reason,
            kept_as=kept,
            fresh_file=name,
            note="a person changed the file under the sink: it is kept as it was under "
            "kept_as and a fresh one continues; no row is lost (the daily files and the "
            "topic hold them; replay rebuilds)",
        )

    # -- the transaction ----------------------------------------------------------

    def committed_offsets(self) -> dict[int, int]:
        """Next offset to read per partition, as of the last durable batch."""
        return dict(self._state.offsets)

    @property
    def identity(self) -> TopicIdentity | None:
        """The topic the committed offsets were read from (None: not recorded yet)."""
        return self._state.identity

    def set_identity(
        self, identity: TopicIdentity, reset: dict[int, int | None] | None = None
    ) -> None:
        """Durably record the topic's identity; ``reset`` moves partitions to new offsets
        (a topic that was reset is read from its beginning; None forgets the partition).
        Raises :class:`SinkWriteError`."""
        state = self._state
        offsets = dict(state.offsets)
        for partition, offset in (reset or {}).items():
            if offset is None:
                offsets.pop(partition, None)
            else:
                offsets[partition] = offset
        new_state = _State(state.topic, offsets, state.sizes, state.last, identity)
        try:
            atomic_write(self.data_dir / SINK_STATE_FILE, new_state.to_json(), fsync=self._fsync)
        except OSError as exc:
            raise self._write_error(exc) from exc
        self._state = new_state

    def write(self, records: Iterable[KafkaRecord]) -> BatchResult:
        """Make one batch durable. Raises :class:`SinkWriteError`; then nothing counts.

        The steps: decode the records (:func:`~cryptostream.sink.batch.decode`), decide
        the rows (:meth:`_rows`: copies dropped, firstValue, lines, each asset's newest
        row), append them and commit the state (:meth:`_commit`: the commit point), then
        remember the batch's keys (:meth:`_remember`) and do the derived work.
        """
        if self._broken:
            self._recover_from_state()
        self._days_checked.clear()
        try:
            # A person may have changed a file since the last batch (see _set_aside).
            self._check(DATA_FILE)
            self._check(DEAD_LETTER_FILE)
        except OSError as exc:
            raise self._write_error(exc) from exc
        state = self._state
        try:
            decoded = decode(records, state.offsets, latest_timestamp(self._clock()), self.topic)
            rows = self._rows(decoded)
        except OSError as exc:
            # Reading a day's first prices back failed: nothing is written yet; the
            # batch fails whole and is retried like any disk error.
            self._first_values.discard()
            raise self._write_error(exc) from exc
        except Exception as exc:  # a batch fails, never the consumer task
            self._first_values.discard()
            raise self._unexpected(exc) from exc
        result = BatchResult(
            written=len(rows.lines),
            duplicates=rows.duplicates,
            dead_letters=len(rows.dead),
            skipped_below_offset=decoded.below_offset,
        )
        if decoded.offsets == state.offsets:
            self._first_values.discard()
            return result
        self._commit(state, decoded.offsets, rows)
        self._first_values.commit()
        if self._fsync:
            self._sync_state_dir()
        # Durable now: the stamp is the rows' end-to-end latency, derived files follow.
        self.last_write = result.committed_at = time.time()
        if rows.last:
            # After the commit point, from the committed state: a reader never sees a row
            # that did not commit. It is derived: on failure open() or the next batch
            # writes it again from the state, so the batch still counts.
            try:
                self._write_last_values()
            except OSError as exc:
                self.metrics.sink_errors.labels("last_values").inc()
                log.error("last_values_not_written", error=exc.strerror or str(exc))
        for reason in rows.dead_reasons:
            self.metrics.dead_letters.labels(reason).inc()
        self._remember(rows.keys)
        result.ticks = rows.ticks
        if rows.ticks:
            self._after_commit(rows.ticks)
        return result

    def _rows(self, decoded: Decoded) -> Rows:
        """The rows of a decoded batch: by asset (:meth:`_rows_by_asset`) when every row
        can be placed on the calendar, else row by row (:meth:`_rows_one_by_one`)."""
        if self.fast_path:
            rows = self._rows_by_asset(decoded)
            if rows is not None:
                return rows
        return self._rows_one_by_one(decoded)

    def _rows_by_asset(self, decoded: Decoded) -> Rows | None:
        """The batch's rows, decided per asset and per day (see :mod:`cryptostream.sink.batch`);
        None when a time cannot be placed on the calendar (then nothing was done)."""
        ticks = decoded.ticks
        found = dedup(ticks, group_by_asset(ticks), self._known, self._newest, self._written)
        kept = [ticks[i] for i in found.kept] if found.duplicates else ticks
        days = day_names(kept, self._days.name)
        if days is None:
            return None
        per_day = by_day(days)
        stamped = stamp_days(kept, per_day, self._first_values.first, self._check_day)
        lines = render(stamped)
        return Rows(
            ticks=stamped,
            lines=lines,
            days={day: [lines[i] for i in rows] for day, rows in per_day.items()},
            dead=[letter for _, letter, _ in decoded.dead],
            dead_reasons=[reason for _, _, reason in decoded.dead],
            duplicates=found.duplicates,
            last=last_lines(stamped, lines, found.groups, found.fresh, self._state.last),
            keys=found.keys,
        )

    def _written(self, tick: Tick) -> bool:
        """Does the committed file of ``tick``'s day hold its row (see sink.daykeys)?
        Asked only of a tick no later than its asset's newest row and not in the window."""
        try:
            day = self._days.name(tick.timestamp)
        except (ValueError, OverflowError, OSError):
            return False  # no day can hold it (it is dead-lettered as unwritable)
        self._check_day(day)
        return self._day_keys.holds(text_cell(tick.id), tick.timestamp, tick.price_usd, day)

    def holds_record(self, value: bytes | None) -> bool:
        """Does the committed daily file of this record's tick hold its row? False for a
        value that is no tick. Raises :class:`SinkWriteError` (the file cannot be read)."""
        try:
            tick = tick_from_json(value, latest_timestamp(self._clock()))
        except InvalidTick:
            return False
        self._days_checked.clear()
        try:
            return self._written(tick)
        except OSError as exc:
            raise self._write_error(exc) from exc

    def _check_day(self, day: str) -> None:
        """Before a batch reads ``day``'s file (firstValue, copies): once per batch."""
        if day in self._days_checked:
            return
        self._days_checked.add(day)
        name = daily_file(day)
        if name in self._state.sizes:
            self._check(name)

    def _rows_one_by_one(self, decoded: Decoded) -> Rows:
        """The batch's rows, decided row by row: the general path, which takes any batch
        (:meth:`_rows_by_asset` gives the same rows where it applies)."""
        rows = Rows()
        unwritable: list[tuple[int, bytes, str]] = []
        # Per asset: the keys of earlier batches (a set mirroring the window's deque), and
        # this batch's keys as a set and in arrival order.
        seen: dict[str, tuple[set[Key], set[Key], list[Key]]] = {}
        newest_ts: dict[str, float] = {}
        last = self._state.last
        # Per asset the time no committed row is later than: a key not in the window and
        # no later than it may still be in its day's file (the window is not the truth).
        floor = self._newest
        written = self._written
        # The UTC day of the previous row: nearly every row of a batch is on the same one.
        day_rows: list[str] = []
        day = ""
        day_begin = day_end = 0.0
        stamp = self._first_values.stamp
        for n, (tick, rec) in enumerate(zip(decoded.ticks, decoded.sources, strict=True)):
            asset = tick.id
            ts = tick.timestamp
            key = (ts, tick.price_usd)
            keys = seen.get(asset)
            if keys is None:
                keys = seen[asset] = (self._known.get(asset, set()), set(), [])
            if (
                key in keys[0]
                or key in keys[1]
                or (ts <= floor.get(asset, -_INF) and written(tick))
            ):
                rows.duplicates += 1
                continue
            if not day_begin <= ts < day_end:
                try:
                    day = self._days.name(ts)
                except (ValueError, OverflowError, OSError) as exc:
                    # The checks let through a time the calendar cannot place: one record
                    # never stops the sink (it would be read again, and again).
                    letter = dead_letter(self.topic, rec, "unwritable", str(exc)[:80])
                    unwritable.append((n, letter, "unwritable"))
                    continue
                day_rows = rows.days.setdefault(day, [])
                self._check_day(day)
                day_begin = day_start(day)
                day_end = day_begin + 86400
            keys[1].add(key)
            keys[2].append(key)
            tick = stamp(tick, day)
            line = csv_line(tick)
            rows.lines.append(line)
            day_rows.append(line)
            rows.ticks.append(tick)
            newest = newest_ts.get(asset)
            if newest is None:
                prev = last.get(asset)
                newest = -_INF if prev is None else line_time(prev)
            if newest <= ts:
                rows.last[asset] = line
                newest = ts
            newest_ts[asset] = newest
        # In record order: a record that is no tick comes before the tick decoded after it.
        dead = sorted(decoded.dead + unwritable, key=lambda d: d[0])
        rows.dead = [letter for _, letter, _ in dead]
        rows.dead_reasons = [reason for _, _, reason in dead]
        rows.keys = {asset: order for asset, (_, _, order) in seen.items()}
        return rows

    def _plan(self, rows: Rows) -> list[tuple[str, bytes]]:
        """(file, bytes) of each append of the batch: the rows, each day's, the dead letters."""
        data = "".join(rows.lines).encode()
        plan: list[tuple[str, bytes]] = []
        if rows.lines:
            plan.append((DATA_FILE, data))
        for day, day_rows in rows.days.items():
            # One day (the usual case) holds every row of the batch: the same bytes.
            chunk = data if len(rows.days) == 1 else "".join(day_rows).encode()
            plan.append((daily_file(day), chunk))
        if rows.dead:
            plan.append((DEAD_LETTER_FILE, b"".join(rows.dead)))
        return plan

    def _commit(self, state: _State, offsets: dict[int, int], rows: Rows) -> None:
        """Append the batch and commit the state: when this returns, the batch counts.
        A failure before the commit point rolls every file back (SinkWriteError)."""
        touched: list[str] = []
        try:
            plan = self._plan(rows)
            for name, _ in plan:
                self._check(name)  # the last look before appending
            sizes = dict(state.sizes)
            pending: dict[str, dict[str, Any]] = {}
            for i, (name, chunk) in enumerate(plan):
                start = sizes.get(name, 0)
                if start == 0 and name.startswith(_DAILY):
                    plan[i] = (name, chunk := _HEADER + chunk)
                end = start + len(chunk)
                pending[name] = {"start": start, "end": end, "head": chunk[:_HEAD].hex()}
            self._write_pending(pending)
            for name, chunk in plan:
                touched.append(name)
                # Opening a day's file may close the least recently used one (a batch
                # can span any number of days): its size is taken now, not at the end.
                f = self._file(name)
                f.append(chunk)
                sizes[name] = f.size
            last = {**state.last, **rows.last} if rows.last else state.last
            new_state = _State(state.topic, offsets, sizes, last, state.identity)
            # The commit point: once this rename is done, the batch counts.
            atomic_write(
                self.data_dir / SINK_STATE_FILE,
                new_state.to_json(),
                fsync=self._fsync,
                sync_dir=False,
            )
        except Exception as exc:  # a batch fails, never the consumer task
            self._first_values.discard()
            self._rollback(touched, state.sizes)
            if isinstance(exc, OSError):
                raise self._write_error(exc) from exc
            raise self._unexpected(exc) from exc
        self._state = new_state

    def _remember(self, keys: dict[str, list[Key]]) -> None:
        """After the commit point: the batch's keys join each asset's duplicate window."""
        for asset, order in keys.items():
            if not order:
                continue
            known = self._known.setdefault(asset, set())
            window = self._window.setdefault(asset, deque(maxlen=RECENT_KEYS))
            # The keys that fall out of the window leave the set too; added first, as a
            # batch larger than the window pushes some of its own keys out.
            evicted = len(window) + len(order) - RECENT_KEYS
            known.update(order)
            if evicted > 0:
                known.difference_update(islice(chain(window, order), evicted))
            window.extend(order)
            # An upper bound (evicted keys are not subtracted): later than it is no copy.
            newest = newest_time(order)
            if newest > self._newest.get(asset, -_INF):
                self._newest[asset] = newest

    def _unexpected(self, exc: Exception) -> SinkWriteError:
        """An error no one foresaw, before the commit point: the batch fails (rolled
        back, retried, counted in sink_errors{kind="unexpected"}), the consumer goes on."""
        self.metrics.sink_errors.labels("unexpected").inc()
        log.error("sink_batch_failed", error=repr(exc)[:200], exc_info=exc)
        return SinkWriteError("unexpected", f"{type(exc).__name__}: {exc}"[:300])

    def _write_error(self, exc: OSError) -> SinkWriteError:
        kind = "disk_full" if exc.errno == errno.ENOSPC else "io_error"
        self.metrics.sink_errors.labels(kind).inc()
        return SinkWriteError(kind, f"{exc.strerror or exc} ({exc.filename or ''})")

    def _sync_state_dir(self) -> None:
        """Make the committed state's rename durable. After the commit point: a failure
        is reported, never rolled back (the state on disk already counts the rows).
        The next batch's state write syncs the directory again."""
        try:
            fsync_dir((self.data_dir / SINK_STATE_FILE).parent)
        except OSError as exc:
            self.metrics.sink_errors.labels("io_error").inc()
            log.error(
                "sink_state_dir_fsync_failed",
                error=exc.strerror or str(exc),
                note="batch committed; its durability across a power cut is not confirmed",
            )

    def _after_commit(self, written: list[Tick]) -> None:
        """Derived work; failures here never undo or block the committed batch."""
        if self.candles is not None:
            self._candles_do(self.candles.add, written)
        if self._retention_days:
            self._maybe_trim()
        for observer in self._observers:
            try:
                observer(written)
            except Exception:
                log.exception("sink_observer_failed")

    def _candles_do(self, step: Callable[..., None], *args: Any) -> None:
        """Run a step of the derived candles: whatever it raises (a full disk, a value
        its arithmetic cannot hold) never stops the sink, at start or after a batch;
        the candles are rebuilt from the daily files later."""
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - derived files never stop the sink
            self.metrics.sink_errors.labels("candles").inc()
            error = (exc.strerror if isinstance(exc, OSError) else None) or repr(exc)
            if error != self._candles_error:  # once per kind of failure, not per batch
                log.error("candles_not_written", error=error)
            self._candles_error = error
        else:
            self._candles_error = None

    def _rollback(self, touched: list[str], sizes: dict[str, int]) -> None:
        """Cut every touched file back to its last committed length.

        A file a many-day batch already closed is opened again. If a cut fails the
        files no longer match the state in memory, so the sink is marked broken:
        the next write first recovers from the state on disk, as a restart would,
        instead of appending the batch again after rows that should be gone.
        """
        for name in dict.fromkeys(touched):
            size = sizes.get(name, 0)
            try:
                f = self._file(name)
                if f.actual_size() != size:
                    f.truncate(size)
                f.size = size
            except OSError as exc:
                self._broken = True
                log.error("sink_rollback_failed", file=name, error=exc.strerror or str(exc))

    def _recover_from_state(self) -> None:
        """After a failed rollback: close everything and recover as on a restart."""
        log.warning("sink_recovering_from_state")
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._first_values.forget()
        self._day_keys.forget()
        try:
            self._open()
        except (OSError, SinkError) as exc:
            self.metrics.sink_errors.labels("io_error").inc()
            raise SinkWriteError("io_error", f"recovery from the sink state failed: {exc}") from exc

    def _write_last_values(self) -> None:
        rows = self._state.last
        data = HEADER + "".join(rows[k] for k in sorted(rows))
        # No fsync at all: it is derived from the state, and open() writes it again from
        # there after a crash or a power cut, whatever this write left behind. That
        # saves two of the six fsyncs a batch once had (see docs/performance.md).
        atomic_write(self.data_dir / LAST_VALUES_FILE, data.encode(), fsync=False)

    # -- retention -----------------------------------------------------------------

    def _maybe_trim(self) -> None:
        today = self._days.name(self._clock())
        if today == self._trimmed_on:
            return
        cutoff = day_start(today) - (self._retention_days - 1) * 86400
        try:
            removed = self._trim(cutoff)
        except Exception as exc:  # noqa: BLE001 - derived work never stops the sink
            self.metrics.sink_errors.labels("retention").inc()
            error = (exc.strerror if isinstance(exc, OSError) else None) or repr(exc)
            log.error("retention_trim_failed", error=error)
            return
        self._trimmed_on = today
        if removed:
            log.info(
                "retention_trimmed",
                file=DATA_FILE,
                rows_removed=removed,
                keep_days=self._retention_days,
            )

    def _trim(self, cutoff: float) -> int:
        """Drop every row older than ``cutoff`` (a UTC midnight) from crypto_data.csv
        (atomic replace); the daily files keep them.

        Whole days go, late rows of those days included: every day the file keeps
        has all its rows, so its first row per asset stays the one that set the
        rows' firstValue (see :mod:`cryptostream.sink.firstvalues`).
        """
        path = self.data_dir / DATA_FILE
        unreadable = 0
        with path.open("rb") as src:
            src.readline()
            # Rewrite only when some row is older (found at the top on most days).
            if not any(_bytes_ts(line) < cutoff for line in src):
                return 0
            src.seek(0)
            src.readline()
            removed = 0
            with replacing(path, fsync=self._fsync) as dst:
                dst.write(_HEADER)
                for n, line in enumerate(src, 1):
                    if not n % YIELD_ROWS:
                        time.sleep(YIELD_SECONDS)  # the event loop's turn (see YIELD_ROWS)
                    ts = _bytes_ts(line)
                    if ts < cutoff:
                        removed += 1
                    else:
                        # A line without a time (a person's) is kept where it was.
                        unreadable += ts == _INF
                        dst.write(line)
                dst.flush()
                # Shorter than the state says until the state is written: not a person's.
                self._write_pending({DATA_FILE: {"trimmed_to": dst.tell()}})
                self._files.pop(DATA_FILE).close()
        # A crash before the next line leaves a file shorter than the state records:
        # start-up accepts that (nothing uncommitted can be in it at this point).
        self._state.sizes[DATA_FILE] = self._file(DATA_FILE).size
        atomic_write(self.data_dir / SINK_STATE_FILE, self._state.to_json(), fsync=self._fsync)
        self._unreadable.skip("retention", "not_a_number", DATA_FILE, unreadable)
        return removed

    def close(self) -> None:
        if self.candles is not None:
            self._candles_do(self.candles.close)
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._first_values.forget()
        self._day_keys.forget()
        self.opened = False


def _bytes_ts(line: bytes) -> float:
    """The time of a line of crypto_data.csv; +inf (newer than any cutoff: kept) for
    a line that has none a number can be read from."""
    try:
        ts = float(line.split(b",", 1)[0])
    except ValueError:
        return _INF
    return ts if ts == ts else _INF  # NaN: kept too
