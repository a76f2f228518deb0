"""``tick_from_json`` has a fast path for well-formed messages: it must agree with the
field-by-field checks on every input, good or bad."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from cryptostream import tick as tick_module
from cryptostream.tick import InvalidTick, Tick, _tick_from_data, tick_from_json

MISSING = object()

GOOD: dict[str, Any] = {
    "schema": "cryptostream.tick/1",
    "timestamp": 1741381815.4672363,
    "id": "bitcoin",
    "symbol": "BTC",
    "name": "Bitcoin",
    "priceUsd": "86466.9872578656434844",
    "changePercent24Hr": "-2.7270275730313168",
    "firstValue": "86000.5",
    "vwap24Hr": "88312.9332932018497620",
    "source": "coincap",
}
DECIMALS = [
    "1",
    "1.",
    ".5",
    "0.000",
    "1e5",
    "1E-5",
    "-0",
    "-0.0",
    "-1",
    "+1",
    " 1.5",
    "1.5 ",
    "NaN",
    "inf",
    "1,5",
    "0x10",
    "1_0",
    "\u0663",
    "\u00b2",
    ".",
    "-",
    "1.2.3",
    "1\x1f2",
    "",
    "  ",
    None,
    12.5,
    7,
    True,
    [],
    MISSING,
]
TEXTS = ["x", "", " ", "\t\n", " a ", "=1", 'a"b', "a,b", "\x1f", None, 5, False, {}, MISSING]
VARIANTS: dict[str, list[Any]] = {
    "timestamp": [0.0, -0.0, 1741381815, -1.0, -1, 1e308, True, "1", None, [], MISSING],
    "id": TEXTS,
    "symbol": TEXTS,
    "name": TEXTS,
    "priceUsd": DECIMALS,
    "changePercent24Hr": DECIMALS,
    "firstValue": DECIMALS,
    "vwap24Hr": DECIMALS,
    "source": ["demo", "", " ", None, 3, MISSING],
}


def outcome(decode: Any, value: Any) -> tuple[str, Tick | str]:
    try:
        return "tick", decode(value)
    except InvalidTick as exc:
        return "invalid", exc.reason


def message(changes: dict[str, Any]) -> dict[str, Any]:
    data = {**GOOD, **changes}
    return {k: v for k, v in data.items() if v is not MISSING}


def cases() -> list[dict[str, Any]]:
    """Every single change to a good message, and every pair of changes to two fields."""
    singles = [(field, v) for field, values in VARIANTS.items() for v in values]
    pairs = [{a: va, b: vb} for (a, va), (b, vb) in itertools.combinations(singles, 2) if a != b]
    return [{}, *({f: v} for f, v in singles), *pairs]


def test_both_paths_agree_on_every_case() -> None:
    checked = 0
    for changes in cases():
        data = message(changes)
        value = orjson.dumps(data)
        assert outcome(tick_from_json, value) == outcome(_tick_from_data, orjson.loads(value)), data
        checked += 1
    assert checked > 10_000


def test_a_well_formed_message_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: Any) -> Tick:
        raise AssertionError("took the checked path")

    monkeypatch.setattr("cryptostream.tick._tick_from_data", refuse)
    tick = tick_from_json(orjson.dumps(GOOD))
    assert tick == Tick(
        1741381815.4672363,
        "bitcoin",
        "BTC",
        "Bitcoin",
        "86466.9872578656434844",
        "-2.7270275730313168",
        "86000.5",
        "88312.9332932018497620",
        "coincap",
    )


def test_the_decimals_string_check_agrees_with_the_expression() -> None:
    # Random short strings over the characters that matter: a check by string methods
    # that accepted what the expression refuses would let a bad decimal through.
    rng = random.Random(24)
    alphabet = "0123456789.-+eE x\u0663\u00b2"
    agreed = 0
    for _ in range(20_000):
        price, change, first, vwap = (
            "".join(rng.choices(alphabet, k=rng.randint(0, 5))) for _ in range(4)
        )
        joined = f"{price}\x1f{change}\x1f{first}\x1f{vwap}"
        expected = tick_module._PLAIN_DECIMALS.fullmatch(joined) is not None
        got = tick_module._plain_decimals(price, change or None, first or None, vwap or None)
        assert got == expected, (price, change, first, vwap)
        agreed += expected
    assert agreed > 100  # the accepting side was reached too


def test_an_asset_id_is_remembered_only_once_valid_and_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tick_module, "_known_ids", set())
    monkeypatch.setattr(tick_module, "_KNOWN_IDS_MAX", 3)
    assert not tick_module._known_id("bad id")
    assert not tick_module._known_id("'formula")
    assert tick_module._known_ids == set()
    for asset in ("a", "b", "c"):
        assert tick_module._known_id(asset)
    assert tick_module._known_ids == {"a", "b", "c"}
    # A fourth id at the bound: the memory starts again, never grows past it.
    assert tick_module._known_id("d")
    assert tick_module._known_ids == {"d"}
    assert not tick_module._known_id("bad id")
