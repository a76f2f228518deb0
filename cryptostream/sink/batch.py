"""The steps of a sink batch that need no file: each a plain function, tested alone.

:meth:`CsvSink.write <cryptostream.sink.csvsink.CsvSink.write>` runs a batch as
named steps. The ones here work on the whole batch and its columns, not row by row:

1. :func:`decode`: every record at once: the offsets it moves, the ticks, the dead
   letters of what cannot be one, the records below the committed offset;
2. :func:`dedup`: per asset, the rows that are no copy of a committed one. An
   asset whose times in the batch are strictly increasing and newer than its
   newest committed row cannot hold a copy: no key is looked up (see
   :func:`fresh_run`); otherwise a key is looked up in the window of recent rows
   and, if older than that newest row, in its day's file (:mod:`cryptostream.sink.daykeys`);
3. :func:`day_names` and :func:`by_day`: the UTC day of every row, the rows of
   each day (the sink then checks each day's file and stamps ``firstValue``, one
   look-up per asset and day, see :func:`stamped`);
4. :func:`render` and :func:`last_lines`: the CSV lines, and each asset's newest row.

The CSV bytes are those of the row-by-row path (``tests/unit/test_sink_batch_paths.py``
holds both to byte-identical files on random batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter

import orjson

from cryptostream.csvrow import csv_line
from cryptostream.days import DAY, day_start
from cryptostream.sinkport import KafkaRecord
from cryptostream.tick import InvalidTick, Tick, tick_from_json

#: A tick's identity within its asset: (timestamp, priceUsd).
Key = tuple[float, str]
_INF = float("inf")
#: A tick's key (see :data:`Key`): its fields 0 and 4.
_key: Callable[[Tick], Key] = itemgetter(0, 4)


@dataclass(slots=True)
class Decoded:
    """A batch's records, decoded."""

    #: The next offset per partition, this batch's records counted.
    offsets: dict[int, int]
    ticks: list[Tick] = field(default_factory=list)
    #: The record each tick came from (for a dead letter decided later).
    sources: list[KafkaRecord] = field(default_factory=list)
    #: (ticks before it, line, reason) of each record that is no tick, in record order.
    dead: list[tuple[int, bytes, str]] = field(default_factory=list)
    #: Records below the offset already consumed for their partition.
    below_offset: int = 0


@dataclass(slots=True)
class Rows:
    """What a batch writes, once its rows are decided."""

    #: The rows' ticks (firstValue stamped), in record order.
    ticks: list[Tick] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    #: The lines of each UTC day, days in the order the batch reaches them.
    days: dict[str, list[str]] = field(default_factory=dict)
    #: Dead-letter lines and their reasons, in record order.
    dead: list[bytes] = field(default_factory=list)
    dead_reasons: list[str] = field(default_factory=list)
    duplicates: int = 0
    #: Asset -> its newest line, for the assets whose newest row changed.
    last: dict[str, str] = field(default_factory=dict)
    #: Asset -> the keys of its rows, in order (for the duplicate window).
    keys: dict[str, list[Key]] = field(default_factory=dict)


@dataclass(slots=True)
class Dedup:
    """The rows of a batch that are no copy of a recent one."""

    #: Indices (into the decoded ticks) of the rows kept, in order.
    kept: list[int]
    duplicates: int
    #: Asset -> the positions (in ``kept``) of its rows, in order.
    groups: dict[str, list[int]]
    #: Asset -> the keys of its kept rows, in order.
    keys: dict[str, list[Key]]
    #: The assets whose rows were taken without a look-up (see :func:`fresh_run`).
    fresh: set[str]


def dead_letter(topic: str, rec: KafkaRecord, reason: str, detail: str) -> bytes:
    """One line of the dead-letter file (JSON): where the record was, why, its value."""
    value = rec.value or b""
    try:
        text: str = value.decode()
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    return orjson.dumps(
        {
            "topic": topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "reason": reason,
            "detail": detail,
            "value": text,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def decode(
    records: Iterable[KafkaRecord], offsets: Mapping[int, int], latest: float, topic: str
) -> Decoded:
    """Decode a batch: ``offsets`` are the next offsets consumed so far per partition (a
    record below its partition's, this batch's own earlier ones included, is skipped);
    ``latest`` the latest plausible tick time (:func:`~cryptostream.tick.latest_timestamp`)."""
    out = Decoded(dict(offsets))
    moved = out.offsets
    ticks = out.ticks
    sources = out.sources
    dead = out.dead
    below = 0
    for rec in records:
        partition = rec.partition
        offset = rec.offset
        if offset < moved.get(partition, 0):
            below += 1
            continue
        moved[partition] = offset + 1
        try:
            tick = tick_from_json(rec.value, latest)
        except InvalidTick as exc:
            dead.append((len(ticks), dead_letter(topic, rec, exc.reason, exc.detail), exc.reason))
            continue
        ticks.append(tick)
        sources.append(rec)
    out.below_offset = below
    return out


def positions(keys: Iterable[str]) -> dict[str, list[int]]:
    """Key -> the positions where it occurs, in order; keys in the order first met."""
    out: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        found = out.get(key)
        if found is None:
            out[key] = [i]
        else:
            found.append(i)
    return out


def group_by_asset(ticks: list[Tick]) -> dict[str, list[int]]:
    """Asset -> the indices of its ticks, in order."""
    return positions(t.id for t in ticks)


def fresh_run(times: list[float], newest: float) -> bool:
    """Can none of these rows of one asset be a copy? True when their times are strictly
    increasing and the first is later than ``newest`` (no key of the asset's window is
    later): then no two of them share a key, and none has one the window holds."""
    previous = newest
    for ts in times:
        if not ts > previous:
            return False
        previous = ts
    return True


def dedup(
    ticks: list[Tick],
    groups: Mapping[str, list[int]],
    known: Mapping[str, set[Key]],
    newest: Mapping[str, float],
    written: Callable[[Tick], bool] = lambda tick: False,
) -> Dedup:
    """The rows that are no copy of a committed row or of an earlier row of the batch.

    ``groups`` is :func:`group_by_asset` of ``ticks``; ``known`` holds per asset the keys
    of its recent rows (the window), ``newest`` per asset a time no committed row of it
    is later than, and ``written`` says whether the committed files hold a tick's row.
    An asset that passes :func:`fresh_run` is taken whole, without a look-up; the others
    have each key looked up in the window and among the batch's earlier rows, and a key
    found in neither but no later than ``newest`` is asked of ``written``."""
    kept_groups: dict[str, list[int]] = {}
    keys: dict[str, list[Key]] = {}
    fresh: set[str] = set()
    duplicates = 0
    # (timestamp, priceUsd) of every tick: by position, not by (slower) field name.
    all_keys: list[Key] = list(map(_key, ticks))
    for asset, indices in groups.items():
        asset_keys = list(map(all_keys.__getitem__, indices))
        if fresh_run([k[0] for k in asset_keys], newest.get(asset, -_INF)):
            fresh.add(asset)
            kept_groups[asset] = indices
            keys[asset] = asset_keys
            continue
        window = known.get(asset, set())
        floor = newest.get(asset, -_INF)
        seen: set[Key] = set()
        kept: list[int] = []
        order: list[Key] = []
        for i, key in zip(indices, asset_keys, strict=True):
            if key in window or key in seen or (key[0] <= floor and written(ticks[i])):
                duplicates += 1
                continue
            seen.add(key)
            kept.append(i)
            order.append(key)
        kept_groups[asset] = kept
        keys[asset] = order
    if not duplicates:
        # Nothing dropped: a row's position among the kept rows is its index.
        return Dedup(list(range(len(ticks))), 0, kept_groups, keys, fresh)
    mask = [False] * len(ticks)
    for indices in kept_groups.values():
        for i in indices:
            mask[i] = True
    kept_all = [i for i, keep in enumerate(mask) if keep]
    position = {i: n for n, i in enumerate(kept_all)}
    positions = {a: [position[i] for i in indices] for a, indices in kept_groups.items()}
    return Dedup(kept_all, duplicates, positions, keys, fresh)


def day_names(ticks: list[Tick], name: Callable[[float], str]) -> list[str] | None:
    """The UTC day of each tick (``name`` names a time's day); None when a time cannot
    be placed on the calendar (the row-by-row path then dead-letters that row)."""
    days: list[str] = []
    day = ""
    begin = end = 0.0
    try:
        for t in ticks:
            ts = t.timestamp
            if not begin <= ts < end:
                # The next rows of the same day are placed without a call: nearly every
                # row of a batch is on one day.
                day = name(ts)
                begin = day_start(day)
                end = begin + DAY
            days.append(day)
    except (ValueError, OverflowError, OSError):
        return None
    return days


def by_day(days: list[str]) -> dict[str, list[int]]:
    """Day -> the positions of its rows in order; days in the order the rows reach them."""
    return positions(days)


def stamp_days(
    ticks: list[Tick],
    days: Mapping[str, list[int]],
    first: Callable[[Tick, str], str],
    before_day: Callable[[str], None],
) -> list[Tick]:
    """``ticks`` with the firstValue of their rows: ``first(tick, day)`` is asked once per
    asset and day (for the asset's first row of the day), ``before_day(day)`` before a
    day's first question (the sink checks the day's file there)."""
    out = list(ticks)
    for day, rows in days.items():
        before_day(day)
        firsts: dict[str, str] = {}
        for i in rows:
            tick = ticks[i]
            value = firsts.get(tick.id)
            if value is None:
                value = firsts[tick.id] = first(tick, day)
            if tick.first_value != value:
                out[i] = tick.with_first_value(value)
    return out


def render(ticks: list[Tick]) -> list[str]:
    """The CSV line of each tick (see :func:`~cryptostream.csvrow.csv_line`)."""
    return [csv_line(t) for t in ticks]


def last_lines(
    ticks: list[Tick],
    lines: list[str],
    groups: Mapping[str, list[int]],
    fresh: set[str],
    previous: Mapping[str, str],
) -> dict[str, str]:
    """Asset -> its newest line, for each asset with a row at least as late as its
    ``previous`` line (of rows of the same time the last counts). ``groups`` holds the
    positions of each asset's rows in ``ticks`` and ``lines``; an asset in ``fresh`` has
    its rows in time order: its last row is its newest."""
    updates: dict[str, str] = {}
    for asset, rows in groups.items():
        if not rows:
            continue
        if asset in fresh:
            best = rows[-1]
            newest = ticks[best].timestamp
        else:
            best = rows[0]
            newest = ticks[best].timestamp
            for i in rows:
                ts = ticks[i].timestamp
                if ts >= newest:
                    best, newest = i, ts
        prev = previous.get(asset)
        if prev is None or line_time(prev) <= newest:
            updates[asset] = lines[best]
    return updates


def line_time(line: str) -> float:
    """The time of a CSV line the sink wrote."""
    return float(line.split(",", 1)[0])


def newest_time(keys: list[Key]) -> float:
    """The latest time among an asset's keys (-inf for none)."""
    return max((k[0] for k in keys), default=-_INF)
