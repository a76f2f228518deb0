"""The tick: one price observation of one asset, and its wire format.

Decimals are kept as the exact strings the API sent (``"86466.9872578656434844"``);
they are validated but never converted to float. The Kafka value is a
self-describing JSON object so other applications can read the topic.

A tick's time must be plausible: from :data:`EARLIEST_TIMESTAMP` (Bitcoin's
genesis block, 2009-01-03 00:00 UTC: no crypto price is older) to
:data:`FUTURE_TOLERANCE` (seven days) past the clock of whoever checks it. That
refuses the usual unit mistakes (milliseconds: 1.7e12, a thousand times too far;
microseconds), negative times and values :mod:`datetime` cannot even hold (1e20),
which would otherwise fail far from here, e.g. when the sink names the day's file.
A tick hours or a few days ahead is not a unit mistake but a clock that is off
(a laptop's after sleep, a restored VM): it is data, written with the source's
time, and the skew is said where it is measured (:mod:`cryptostream.clocks`).
"""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple

import msgspec
import orjson

SCHEMA = "cryptostream.tick/1"

# A plain decimal literal as CoinCap sends it, optionally with an exponent.
# Deliberately excludes "NaN", "Infinity", hex, underscores, whitespace and digits of
# other scripts ("\u0661" is a digit to Python's \d, not to a CSV reader or Power BI).
_UNSIGNED = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DECIMAL = re.compile(rf"-?{_UNSIGNED}")
# The four decimals of a well-formed message at once, joined by \x1f (which no
# decimal contains, so a field cannot smuggle a separator): price (required,
# not negative), change (may be negative), firstValue and vwap (not negative);
# the optional ones may be empty (missing). Anything else takes the checked path.
_PLAIN_DECIMALS = re.compile(
    rf"{_UNSIGNED}\x1f(?:-?{_UNSIGNED})?\x1f(?:{_UNSIGNED})?\x1f(?:{_UNSIGNED})?"
)
#: An asset id is a key (of the Kafka message, of the CSV rows): no blank or control
#: character, and not starting with ``'`` (the CSV's formula guard). So two ids never
#: show as the same CSV cell, and a file's rows of one asset are one id's.
_ASSET_ID = re.compile(r"[^\s'\x00-\x1f\x7f][^\s\x00-\x1f\x7f]*")
#: 2009-01-03T00:00:00Z, Unix seconds: the earliest plausible tick time.
EARLIEST_TIMESTAMP = 1_230_940_800.0
#: Seconds a tick's time may be ahead of the checking clock: a clock that drifted or
#: stepped by hours or days is not a unit mistake (those are factors of 1000).
FUTURE_TOLERANCE = 7 * 86400.0


class InvalidTick(ValueError):
    """A record that cannot become a tick; ``reason`` is a short stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Tick(NamedTuple):
    """Immutable. A named tuple rather than a frozen dataclass: the sink makes one per
    Kafka message, and a tuple is built in a quarter of the time (no per-field
    ``object.__setattr__``), which the sink's throughput shows."""

    timestamp: float
    id: str
    symbol: str
    name: str
    price_usd: str
    change_percent_24h: str | None
    first_value: str | None
    vwap_24h: str | None
    source: str = "coincap"

    def with_first_value(self, first_value: str) -> Tick:
        # The tuple built straight away: _replace is several Python calls, and the sink
        # asks this for nearly every row.
        return _new_tuple(Tick, (*self[:6], first_value, *self[7:]))

    def key(self) -> bytes:
        return self.id.encode()

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "schema": SCHEMA,
                "timestamp": self.timestamp,
                "id": self.id,
                "symbol": self.symbol,
                "name": self.name,
                "priceUsd": self.price_usd,
                "changePercent24Hr": self.change_percent_24h,
                "firstValue": self.first_value,
                "vwap24Hr": self.vwap_24h,
                "source": self.source,
            }
        )


def decimal_text(value: Any, *, field: str, required: bool, allow_negative: bool) -> str | None:
    """Validate a decimal as sent by an API and return its exact text.

    Accepts strings (CoinCap's form) and JSON numbers; ``None``/``""`` is
    missing. Raises :class:`InvalidTick` with a reason label otherwise.
    """
    if value is None or value == "":
        if required:
            raise InvalidTick(f"missing_{field}")
        return None
    if isinstance(value, bool):
        raise InvalidTick(f"non_numeric_{field}", repr(value))
    if isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise InvalidTick(f"non_numeric_{field}", type(value).__name__)
    if not _DECIMAL.fullmatch(text):
        if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise InvalidTick(f"non_finite_{field}", text[:40])
        raise InvalidTick(f"non_numeric_{field}", text[:40])
    if not allow_negative and text.startswith("-") and text.strip("-0.eE") != "":
        raise InvalidTick(f"negative_{field}", text[:40])
    return text


def _text(value: Any, *, field: str, required: bool) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidTick(f"missing_{field}")
        return ""
    if not isinstance(value, str):
        raise InvalidTick(f"invalid_{field}", type(value).__name__)
    return value


def latest_timestamp(now: float | None = None) -> float:
    """The latest plausible tick time for a clock reading ``now`` (default: this clock)."""
    return (time.time() if now is None else now) + FUTURE_TOLERANCE


def check_timestamp(ts: float, latest: float | None = None) -> None:
    """Raise :class:`InvalidTick` unless ``ts`` is a plausible tick time.

    ``latest`` is the upper bound (:func:`latest_timestamp`); callers checking many
    ticks at once compute it once.
    """
    bound = latest_timestamp() if latest is None else latest
    if not EARLIEST_TIMESTAMP <= ts <= bound:
        raise InvalidTick("timestamp_out_of_range", repr(ts)[:40])


def tick_from_api(
    record: Any, timestamp: float, source: str = "coincap", *, latest: float | None = None
) -> Tick:
    """Build a tick from one CoinCap ``/assets`` record; raises :class:`InvalidTick`."""
    if not isinstance(record, dict):
        raise InvalidTick("not_an_object", type(record).__name__)
    check_timestamp(timestamp, latest)
    asset_id = _text(record.get("id"), field="id", required=True)
    if not _ASSET_ID.fullmatch(asset_id):
        raise InvalidTick("invalid_id", repr(asset_id)[:40])
    price = decimal_text(record.get("priceUsd"), field="price", required=True, allow_negative=False)
    assert price is not None
    return Tick(
        timestamp=timestamp,
        id=asset_id,
        symbol=_text(record.get("symbol"), field="symbol", required=False),
        name=_text(record.get("name"), field="name", required=False),
        price_usd=price,
        change_percent_24h=decimal_text(
            record.get("changePercent24Hr"), field="change", required=False, allow_negative=True
        ),
        first_value=None,
        vwap_24h=decimal_text(
            record.get("vwap24Hr"), field="vwap", required=False, allow_negative=False
        ),
        source=source,
    )


class _Wire(msgspec.Struct, gc=False):
    """A message as the service publishes it, typed: what msgspec's decoder checks in
    the same pass that parses the JSON (a missing or mistyped field fails it)."""

    timestamp: float
    id: str
    symbol: str
    name: str
    priceUsd: str
    source: str
    changePercent24Hr: str | None = None
    firstValue: str | None = None
    vwap24Hr: str | None = None


_decode_wire = msgspec.json.Decoder(_Wire).decode
_new_tuple = tuple.__new__
#: Asset ids that passed :data:`_ASSET_ID` (a handful in practice; emptied at the
#: bound, so a stream of ever-new ids costs a match each, never memory).
_known_ids: set[str] = set()
_KNOWN_IDS_MAX = 10_000


def _known_id(asset: str) -> bool:
    """Is ``asset`` a valid asset id (:data:`_ASSET_ID`)? Remembered once matched."""
    if asset in _known_ids:
        return True
    if not _ASSET_ID.fullmatch(asset):
        return False
    if len(_known_ids) >= _KNOWN_IDS_MAX:
        _known_ids.clear()
    _known_ids.add(asset)
    return True


def _digits(text: str) -> bool:
    """ASCII digits with at most one ``.`` among them: the common case of a decimal,
    without a regular expression (anything else is left to :data:`_PLAIN_DECIMALS`)."""
    return text.isascii() and text.replace(".", "", 1).isdigit()


def _plain_decimals(price: str, change: str | None, first: str | None, vwap: str | None) -> bool:
    """The four decimals of a message, each plain (see :data:`_PLAIN_DECIMALS`): by
    :func:`_digits` when every one is that simple, by the expression otherwise."""
    if (
        _digits(price)
        and (not change or _digits(change[1:] if change[0] == "-" else change))
        and (not first or _digits(first))
        and (not vwap or _digits(vwap))
    ):
        return True
    joined = f"{price}\x1f{change or ''}\x1f{first or ''}\x1f{vwap or ''}"
    return _PLAIN_DECIMALS.fullmatch(joined) is not None


def tick_from_json(value: bytes | None, latest: float | None = None) -> Tick:
    """Decode a Kafka message value; raises :class:`InvalidTick` for poison messages.

    ``latest`` is the latest plausible time (:func:`latest_timestamp`, the default).

    The hot path of the sink, once per message. A message as the service
    publishes it (every field of the expected type, plain decimals) is decoded
    and type-checked in one step by msgspec into a typed struct, its asset id
    checked once per id and its four decimals by string methods (a regular
    expression where they are not simple digits), and becomes a tick at once;
    anything else takes the field-by-field path, which gives the same tick or
    the reason it is invalid (``tests/unit/test_tick_fast_path.py`` holds the
    two paths to the same answers).
    """
    if value is None:
        raise InvalidTick("empty_message")
    if latest is None:
        latest = latest_timestamp()
    try:
        m = _decode_wire(value)
    except msgspec.DecodeError:
        pass  # not JSON, or not this shape: the checked path says which
    else:
        ts = m.timestamp
        asset = m.id
        symbol = m.symbol
        name = m.name
        price = m.priceUsd
        change = m.changePercent24Hr
        first = m.firstValue
        vwap = m.vwap24Hr
        if (
            EARLIEST_TIMESTAMP <= ts <= latest
            and m.source
            and _known_id(asset)
            # Blank text is "missing": the checked path turns it into "".
            and symbol
            and not symbol.isspace()
            and name
            and not name.isspace()
            and _plain_decimals(price, change, first, vwap)
        ):
            # tuple.__new__ straight away: the named tuple's own __new__ is one more
            # Python call per message for the same tuple.
            return _new_tuple(
                Tick,
                (
                    ts,
                    asset,
                    symbol,
                    name,
                    price,
                    change or None,
                    first or None,
                    vwap or None,
                    m.source,
                ),
            )
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidTick("not_json", str(exc)[:80]) from None
    return _tick_from_data(data, latest)


def _tick_from_data(data: Any, latest: float | None = None) -> Tick:
    """The checked path: every field validated on its own, with the reason when it fails."""
    if not isinstance(data, dict):
        raise InvalidTick("not_an_object", type(data).__name__)
    ts = data.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not ts == ts:
        raise InvalidTick("invalid_timestamp", repr(ts)[:40])
    if latest is None:
        latest = latest_timestamp()
    # Checked before float(): comparing an int of any size with a float is exact.
    check_timestamp(ts, latest)
    source = str(data.get("source") or "unknown")
    tick = tick_from_api(data, float(ts), source=source, latest=latest)
    first = decimal_text(
        data.get("firstValue"), field="first_value", required=False, allow_negative=False
    )
    return tick.with_first_value(first) if first is not None else tick
