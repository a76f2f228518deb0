"""The report's measures answer one question each, for one asset where a value is per asset.

Every asset of one poll carries the same timestamp, so "the value at the newest
timestamp" taken over several assets is a mix of assets (the MAX of their
names, the MAX of their prices). These tests read the measure definitions of
the generated model (cryptostream/powerbi/model.py, the same as measures.dax).
"""

from __future__ import annotations

import re

from cryptostream.powerbi import model

T = model.TICKS
# Columns whose value is the same for every asset of a poll (or names the asset itself):
# aggregating them over several assets still answers one question.
SHARED = {"timestamp", "TimeUTC", "DateUTC", "Year", "MonthNumber", "Month", "Day", "id"}
ONE_ASSET_GUARDS = (f"HASONEVALUE ( {T}[id] )", "AssetCount > 1")
_AGGREGATE = re.compile(
    rf"\b(MAX|MIN|AVERAGE|SUM|SELECTEDVALUE|FIRSTNONBLANK|LASTNONBLANK|VALUES) \( {T}\[(\w+)\]"
)


def by_name() -> dict[str, model.Measure]:
    return {m.name: m for m in model.measures()}


def per_asset_columns(dax: str) -> set[str]:
    """Columns whose values a measure aggregates that differ between assets."""
    return {column for _, column in _AGGREGATE.findall(dax) if column not in SHARED}


def test_a_measure_of_per_asset_values_answers_only_for_one_asset() -> None:
    """Last Price / Asset / Price Variation %: blank or "Select one asset" over several."""
    guarded = set()
    for m in model.measures():
        if per_asset_columns(m.dax) or re.search(r"(?<![\w\]])\[Last Price\]", m.dax):
            assert any(g in m.dax for g in ONE_ASSET_GUARDS), (
                f"{m.name} aggregates {sorted(per_asset_columns(m.dax))} over every asset "
                "in the filter"
            )
            guarded.add(m.name)
    assert guarded == {"Asset", "Last Price", "Last Price Card", "Price Variation %"}


def test_the_old_newest_tick_measure_is_caught() -> None:
    """The rule above rejects the measure that showed XRP's name next to Bitcoin's price."""
    old = (
        f"VAR LastTimestamp = MAX ( {T}[timestamp] )\nRETURN\n"
        f"    CALCULATE ( MAX ( {T}[priceUsd] ), {T}[timestamp] = LastTimestamp )"
    )
    assert per_asset_columns(old) == {"priceUsd"}
    assert not any(g in old for g in ONE_ASSET_GUARDS)


def test_the_cards_say_select_one_asset_over_several() -> None:
    measures = by_name()
    assert f'"{model.SELECT_ONE}"' in measures["Asset"].dax
    assert f'"{model.SELECT_ONE}"' in measures["Last Price Card"].dax
    # The newest tick is taken inside the filter (KEEPFILTERS), not instead of it.
    for name in ("Asset", "Last Price"):
        assert f"KEEPFILTERS ( {T}[timestamp] = LastTimestamp )" in measures[name].dax
