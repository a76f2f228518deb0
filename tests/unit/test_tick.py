from __future__ import annotations

import json

import orjson
import pytest

from cryptostream.tick import (
    EARLIEST_TIMESTAMP,
    FUTURE_TOLERANCE,
    InvalidTick,
    Tick,
    latest_timestamp,
    tick_from_api,
    tick_from_json,
)

RECORD = {
    "id": "bitcoin",
    "symbol": "BTC",
    "name": "Bitcoin",
    "priceUsd": "86466.9872578656434844",
    "changePercent24Hr": "-2.7270275730313168",
    "vwap24Hr": "88312.9332932018497620",
}
NOW = 1741381815.467


def test_decimals_keep_the_exact_digits_sent() -> None:
    tick = tick_from_api(RECORD, 1741381815.467)
    assert tick.price_usd == "86466.9872578656434844"
    assert tick.change_percent_24h == "-2.7270275730313168"
    assert tick.vwap_24h == "88312.9332932018497620"
    assert tick.first_value is None


def test_null_vwap_is_missing_not_zero() -> None:
    tick = tick_from_api({**RECORD, "vwap24Hr": None}, NOW)
    assert tick.vwap_24h is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "missing_id"),
        ({"id": ""}, "missing_id"),
        # Two ids must never show as one CSV cell: no blanks, no formula guard of ours.
        ({"id": "bit coin"}, "invalid_id"),
        ({"id": "bitcoin\t"}, "invalid_id"),
        ({"id": "bit\ncoin"}, "invalid_id"),
        ({"id": "'=x"}, "invalid_id"),
        ({"id": "bit\x00coin"}, "invalid_id"),
        ({"priceUsd": None}, "missing_price"),
        ({"priceUsd": "abc"}, "non_numeric_price"),
        ({"priceUsd": "NaN"}, "non_finite_price"),
        ({"priceUsd": "Infinity"}, "non_finite_price"),
        ({"priceUsd": "-5"}, "negative_price"),
        ({"priceUsd": "1,5"}, "non_numeric_price"),
        ({"priceUsd": True}, "non_numeric_price"),
        # Digits of other scripts are digits to Python, not to a CSV reader or Power BI.
        ({"priceUsd": "\u0661\u0662"}, "non_numeric_price"),
        ({"priceUsd": "1.\uff15"}, "non_numeric_price"),
        ({"vwap24Hr": "\u09e7"}, "non_numeric_vwap"),
        ({"changePercent24Hr": "lots"}, "non_numeric_change"),
        ({"vwap24Hr": "-1"}, "negative_vwap"),
    ],
)
def test_bad_records_have_a_reason(change: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidTick) as err:
        tick_from_api({**RECORD, **change}, NOW)
    assert err.value.reason == reason


def test_json_numbers_are_accepted_as_text() -> None:
    tick = tick_from_api({**RECORD, "priceUsd": 12.5}, NOW)
    assert tick.price_usd == "12.5"


def test_kafka_value_is_self_describing_and_round_trips() -> None:
    tick = tick_from_api(RECORD, 1741381815.4672363).with_first_value("86000.1")
    value = json.loads(tick.to_json())
    assert value["schema"] == "cryptostream.tick/1"
    assert value["priceUsd"] == "86466.9872578656434844"
    assert value["firstValue"] == "86000.1"
    assert value["timestamp"] == 1741381815.4672363
    assert tick_from_json(tick.to_json()) == tick
    assert tick.key() == b"bitcoin"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_message"),
        (b"not json", "not_json"),
        (b"[1,2]", "not_an_object"),
        (b'{"id": "bitcoin", "priceUsd": "1"}', "invalid_timestamp"),
        (b'{"timestamp": "x", "id": "bitcoin", "priceUsd": "1"}', "invalid_timestamp"),
        (b'{"timestamp": 1741381815, "priceUsd": "1"}', "missing_id"),
        (b'{"timestamp": 1741381815, "id": "b", "priceUsd": "-1"}', "negative_price"),
        (
            '{"timestamp": 1741381815, "id": "b", "priceUsd": "\u0661"}'.encode(),
            "non_numeric_price",
        ),
    ],
)
def test_poison_messages_are_rejected(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidTick) as err:
        tick_from_json(value)
    assert err.value.reason == reason


def test_tick_is_immutable() -> None:
    tick = Tick(1.0, "a", "A", "A", "1", None, None, None)
    with pytest.raises(AttributeError):
        tick.price_usd = "2"  # type: ignore[misc]


@pytest.mark.parametrize(
    "ts",
    [
        1.7e12,
        1.7e15,
        1e20,
        1e308,
        -1.0,
        -0.0,
        0.0,
        1e9,
        EARLIEST_TIMESTAMP - 1,
        NOW + FUTURE_TOLERANCE + 1,
    ],
)
def test_implausible_times_are_refused_at_the_source_and_on_the_topic(ts: float) -> None:
    with pytest.raises(InvalidTick) as err:
        tick_from_api(RECORD, ts, latest=latest_timestamp(NOW))
    assert err.value.reason == "timestamp_out_of_range"
    message = orjson.dumps({**RECORD, "timestamp": ts})
    with pytest.raises(InvalidTick) as err:
        tick_from_json(message, latest_timestamp(NOW))
    assert err.value.reason == "timestamp_out_of_range"


def test_the_time_range_holds_its_bounds_and_huge_integers() -> None:
    assert tick_from_api(RECORD, EARLIEST_TIMESTAMP).timestamp == EARLIEST_TIMESTAMP
    latest = latest_timestamp(NOW)
    assert tick_from_api(RECORD, NOW + FUTURE_TOLERANCE, latest=latest).timestamp == latest
    # A clock hours (or days) off is not a unit mistake: such a tick is data.
    for ahead in (3 * 3600, 3 * 86400):
        assert tick_from_api(RECORD, NOW + ahead, latest=latest).timestamp == NOW + ahead
        message = orjson.dumps({**RECORD, "timestamp": NOW + ahead})
        assert tick_from_json(message, latest).timestamp == NOW + ahead
    for ts in (10**30, -(10**30), 1741381815467):
        message = json.dumps({**RECORD, "timestamp": ts}).encode()
        with pytest.raises(InvalidTick, match="timestamp_out_of_range"):
            tick_from_json(message)


def test_both_decoders_refuse_an_id_that_would_show_as_another_ids_cell() -> None:
    for asset in ("0 ", "0\t", "'=x", "a\u2003b"):
        message = orjson.dumps({**RECORD, "id": asset, "timestamp": NOW, "source": "x"})
        with pytest.raises(InvalidTick) as err:
            tick_from_json(message)
        assert err.value.reason == "invalid_id", asset
    # A formula-looking id is fine: its cell gets the guard, and no other id has it.
    ok = orjson.dumps({**RECORD, "id": "=x", "timestamp": NOW, "source": "x"})
    assert tick_from_json(ok).id == "=x"
