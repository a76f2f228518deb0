"""What the report page shows, computed from the CSV files and from the measures as written.

A small data folder (four assets per poll, every asset of a poll with the same
timestamp as CoinCap stamps them, three UTC days, one asset missing from the
last poll) is written with the sink's own line format. From it, this test
computes in plain Python what each card, the table and the chart must show
(the card meanings of powerbi/README.md, the CSV contract of the main README),
and compares that with the measures of a generated project, read from its
TMDL and evaluated by tests/support/dax.py under the filters the page's
slicers, legend and chart points set. It also checks that no measure can
answer with two different assets' values at once: the measures the report
used before did (the name of XRP beside the price of Bitcoin).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cryptostream.csvrow import HEADER, csv_line
from cryptostream.powerbi import model as pbi_model
from cryptostream.powerbi import queries
from cryptostream.powerbi.project import MODEL_DIR, REPORT_DIR, Options, write_project
from cryptostream.tick import Tick
from tests.support import dax, pbip

ASSETS = (
    ("bitcoin", "BTC", "Bitcoin", 90000.0),
    ("ethereum", "ETH", "Ethereum", 3000.0),
    ("solana", "SOL", "Solana", 150.0),
    ("xrp", "XRP", "XRP", 2.0),
)
DAYS = (date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3))
HOURS = (0, 8, 16)
SELECT_ONE = "Select one asset"
# TimeUTC: Power Query adds the seconds to 1970-01-01 00:00 (UTC).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Measures whose answer is a value of one asset (an asset's name, price or variation).
PER_ASSET = {"Asset", "Last Price", "Last Price Card", "Price Variation %"}
# The measures the report had before: the newest timestamp is every asset's.
OLD_MEASURES = {
    "Last Price": "VAR LastTimestamp = MAX ( crypto_ticks[timestamp] )\nRETURN\n"
    "    CALCULATE ( MAX ( crypto_ticks[priceUsd] ), crypto_ticks[timestamp] = LastTimestamp )",
    "Last Asset": "VAR LastTimestamp = MAX ( crypto_ticks[timestamp] )\nRETURN\n"
    "    CALCULATE ( MAX ( crypto_ticks[name] ), crypto_ticks[timestamp] = LastTimestamp )",
}

Row = dict[str, Any]


# --- the data folder --------------------------------------------------------------


def poll_ticks() -> list[Tick]:
    ticks = []
    for d_index, day in enumerate(DAYS):
        first: dict[str, str] = {}
        for h_index, hour in enumerate(HOURS):
            stamp = datetime(day.year, day.month, day.day, hour, 0, 5, tzinfo=UTC).timestamp()
            stamp += 0.4672363
            for a_index, (asset, symbol, name, base) in enumerate(ASSETS):
                if asset == "solana" and (d_index, h_index) == (2, 2):
                    continue  # not in the last poll: its newest tick is older
                price = f"{base * (1 + 0.01 * (3 * d_index + h_index) * (a_index + 1)):.8f}"
                first.setdefault(asset, price)
                change = f"{0.5 * (a_index - 1):.4f}"
                ticks.append(Tick(stamp, asset, symbol, name, price, change, first[asset], price))
    return ticks


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("semantics") / "data"
    days = data / "history" / "ticks"
    days.mkdir(parents=True)
    ticks = poll_ticks()
    for day in DAYS:
        lines = [
            csv_line(t) for t in ticks if datetime.fromtimestamp(t.timestamp, UTC).date() == day
        ]
        (days / f"{day.isoformat()}.csv").write_text(HEADER + "".join(lines), encoding="utf-8")
    (data / "crypto_data.csv").write_text(HEADER + "".join(map(csv_line, ticks)), "utf-8")
    newest = {t.id: t for t in sorted(ticks, key=lambda t: t.timestamp)}
    last = "".join(csv_line(newest[a]) for a, *_ in ASSETS)
    (data / "crypto_last_values.csv").write_text(HEADER + last, encoding="utf-8")
    return data


def load(paths: list[Path]) -> list[Row]:
    """The rows Power Query gives for these files, by the CSV contract and fnCryptoTicks."""
    types = dict(queries.CSV_COLUMNS)
    rows = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as f:
            for cells in csv.DictReader(f):
                row: Row = {}
                for name, cell in cells.items():
                    if types[name] == "type number":
                        row[name] = float(cell) if cell else None
                    else:
                        row[name] = cell
                if row["timestamp"] is None or row["priceUsd"] is None:
                    continue
                time = EPOCH + timedelta(seconds=row["timestamp"])
                first = row["firstValue"]
                row |= {
                    "TimeUTC": time,
                    "DateUTC": time.date(),
                    "Year": time.year,
                    "MonthNumber": time.month,
                    "Month": time.strftime("%b"),
                    "Day": time.day,
                    "PriceVariation": None if not first else (row["priceUsd"] - first) / first,
                }
                rows.append(row)
    return rows


@pytest.fixture(scope="module")
def project(data_folder: Path) -> Path:
    out = data_folder.parent / "project"
    write_project(Options(out=out, data_folder=str(data_folder)))
    return out


@pytest.fixture(scope="module")
def tmdl(project: Path) -> pbip.Model:
    return pbip.read_model(project / MODEL_DIR / "definition")


def measures_of(tmdl: pbip.Model) -> dict[str, str]:
    return {n: m.text for n, m in tmdl.tables[pbi_model.TICKS].kids("measure").items()}


def ticks_model(tmdl: pbip.Model, rows: list[Row], measures: dict[str, str]) -> dax.Model:
    columns = set(tmdl.tables[pbi_model.TICKS].kids("column"))
    return dax.Model(pbi_model.TICKS, rows, columns, measures)


@pytest.fixture(scope="module")
def ticks(data_folder: Path) -> list[Row]:
    return load(sorted((data_folder / "history" / "ticks").glob("*.csv")))


@pytest.fixture(scope="module")
def report_model(tmdl: pbip.Model, ticks: list[Row]) -> dax.Model:
    return ticks_model(tmdl, ticks, measures_of(tmdl))


# --- what the page must show, from the rows ---------------------------------------


def price_text(value: float) -> str:
    text = f"{value:,.10f}".rstrip("0")
    return text + "0" * (2 - len(text.split(".")[1]))


def expected_cards(rows: list[Row]) -> dict[str, Any]:
    """The README's card meanings, computed from the rows in the filter."""
    ids = {r["id"] for r in rows}
    out: dict[str, Any] = {
        "Records": len(rows) or None,
        "Assets": len(ids) or None,
        "Days Tracked": len({r["DateUTC"] for r in rows}) or None,
        "Last Time": max((r["TimeUTC"] for r in rows), default=None),
        "Asset": None if not ids else SELECT_ONE,
        "Last Price": None,
        "Last Price Card": None if not ids else SELECT_ONE,
        "Price Variation %": None,
    }
    if len(ids) == 1:
        newest = max(r["timestamp"] for r in rows)
        (tick,) = [r for r in rows if r["timestamp"] == newest]
        variations = [r["PriceVariation"] for r in rows if r["PriceVariation"] is not None]
        out |= {
            "Asset": tick["name"],
            "Last Price": tick["priceUsd"],
            "Last Price Card": price_text(tick["priceUsd"]),
            "Price Variation %": sum(variations) / len(variations) if variations else None,
        }
    return out


Filter = tuple[str, Callable[[Any], bool]]


def equals(column: str, value: Any) -> Filter:
    return column, lambda v: v == value


def on_day(day: date) -> list[Filter]:
    """The Date slicer on one day: a filter on each level of the Year / Month / Day hierarchy."""
    return [equals("Year", day.year), equals("Month", day.strftime("%b")), equals("Day", day.day)]


def context(filters: list[Filter]) -> dax.Context:
    ctx = dax.Context()
    for column, pred in filters:
        ctx = ctx.where(column, pred)
    return ctx


def page_filters() -> dict[str, list[Filter]]:
    """The filters a person sets on the page: slicers and a legend click, alone and together."""
    out: dict[str, list[Filter]] = {"the page as it opens": []}
    for day in DAYS:
        out[f"Date slicer {day}"] = on_day(day)
    for _, symbol, name, _ in ASSETS:
        out[f"Asset slicer {name}"] = [equals("name", name)]
        out[f"legend {symbol}"] = [equals("symbol", symbol)]
        out[f"{name} on {DAYS[-1]}"] = [*on_day(DAYS[-1]), equals("name", name)]
    out["Asset slicer Bitcoin and XRP"] = [("name", lambda v: v in ("Bitcoin", "XRP"))]
    out["a day without ticks"] = on_day(date(2026, 11, 30))
    return out


def rows_in(rows: list[Row], filters: list[Filter]) -> list[Row]:
    return [r for r in rows if all(pred(r[column]) for column, pred in filters)]


def mixed_answers(model: dax.Model, names: set[str], filters: list[Filter]) -> dict[str, Any]:
    """Per-asset measures that answer with a value although the filter holds several assets."""
    if len({r["id"] for r in model.rows(context(filters))}) < 2:
        return {}
    answers = {n: model.measure(n, context(filters)) for n in names}
    return {n: a for n, a in answers.items() if a not in (None, SELECT_ONE)}


def approx(value: Any) -> Any:
    return pytest.approx(value, rel=1e-12) if isinstance(value, float) else value


# --- the tests --------------------------------------------------------------------


def test_the_data_folder_has_several_assets_per_poll(ticks: list[Row]) -> None:
    polls: dict[float, set[str]] = {}
    for r in ticks:
        polls.setdefault(r["timestamp"], set()).add(r["id"])
    assert len(polls) == len(DAYS) * len(HOURS)
    assert min(len(ids) for ids in polls.values()) == 3
    assert max(len(ids) for ids in polls.values()) == 4
    assert len({r["DateUTC"] for r in ticks}) == 3


def test_each_measure_names_only_columns_and_measures_that_exist(tmdl: pbip.Model) -> None:
    measures = measures_of(tmdl)
    columns = set(tmdl.tables[pbi_model.TICKS].kids("column"))
    for name, text in measures.items():
        node = dax.parse(text)
        for table, column in dax.columns_named(node):
            assert table == pbi_model.TICKS and column in columns, (name, table, column)
        assert dax.measures_named(node) <= set(measures), name
    with pytest.raises(dax.DaxError, match="no column"):
        ticks_model(tmdl, [], {"Broken": "MAX ( crypto_ticks[price] )"})


def test_the_cards_show_what_the_readme_says(
    project: Path, report_model: dax.Model, ticks: list[Row]
) -> None:
    pages = project / REPORT_DIR / "definition" / "pages"
    cards = {}
    for path in pages.glob("*/visuals/*/visual.json"):
        visual = json.loads(path.read_text(encoding="utf-8"))["visual"]
        if visual["visualType"] == "card":
            (projection,) = visual["query"]["queryState"]["Values"]["projections"]
            cards[path.parent.name] = projection["field"]["Measure"]["Property"]
    assert len(cards) == 6
    for label, filters in page_filters().items():
        expected = expected_cards(rows_in(ticks, filters))
        for card, measure in cards.items():
            shown = report_model.measure(measure, context(filters))
            assert shown == approx(expected[measure]), (label, card, measure)


def test_the_cards_on_the_page_as_it_opens(report_model: dax.Model) -> None:
    """Spelled out: every asset in the filter, so the asset cards ask for one."""
    ctx = dax.Context()
    assert report_model.measure("Asset", ctx) == SELECT_ONE
    assert report_model.measure("Last Price Card", ctx) == SELECT_ONE
    assert report_model.measure("Last Price", ctx) is None
    assert report_model.measure("Assets", ctx) == 4
    assert report_model.measure("Days Tracked", ctx) == 3
    assert report_model.measure("Last Time", ctx) == datetime(2026, 12, 3, 16, 0, 5, 467236, UTC)
    solana = dax.Context().where("name", lambda v: v == "Solana")
    # Solana is not in the last poll: its card shows its own newest tick, not the poll's.
    assert report_model.measure("Last Time", solana) == datetime(2026, 12, 3, 8, 0, 5, 467236, UTC)
    assert report_model.measure("Last Price Card", solana) == price_text(150.0 * (1 + 0.01 * 7 * 3))


def test_no_measure_answers_with_two_assets_values(report_model: dax.Model) -> None:
    for label, filters in page_filters().items():
        assert mixed_answers(report_model, PER_ASSET, filters) == {}, label


def test_the_old_measures_mixed_two_assets(tmdl: pbip.Model, ticks: list[Row]) -> None:
    """The check above catches the measures the report had: XRP's name, Bitcoin's price."""
    old = ticks_model(tmdl, ticks, OLD_MEASURES)
    assert old.measure("Last Asset", dax.Context()) == "XRP"
    bitcoin_last = max((r for r in ticks if r["id"] == "bitcoin"), key=lambda r: r["timestamp"])
    assert old.measure("Last Price", dax.Context()) == bitcoin_last["priceUsd"]
    assert set(mixed_answers(old, set(OLD_MEASURES), [])) == set(OLD_MEASURES)


def test_the_chart_draws_one_line_per_asset_of_its_own_variation(
    report_model: dax.Model, ticks: list[Row]
) -> None:
    """Each point (symbol x TimeUTC) is one tick's variation; a point over assets is blank."""
    for day in DAYS:
        day_rows = rows_in(ticks, on_day(day))
        for _, symbol, _, _ in ASSETS:
            for r in (r for r in day_rows if r["symbol"] == symbol):
                point = [*on_day(day), equals("symbol", symbol), equals("TimeUTC", r["TimeUTC"])]
                value = report_model.measure("Price Variation %", context(point))
                assert value == approx(r["PriceVariation"]), (day, symbol, r["TimeUTC"])
        first_point = min(r["TimeUTC"] for r in day_rows)
        assert report_model.measure("Price Variation %", context(on_day(day))) is None
        at = context([*on_day(day), equals("TimeUTC", first_point)])
        assert report_model.measure("Price Variation %", at) is None
        # The first tick of a UTC day is its firstValue: 0 variation.
        first = context([*on_day(day), equals("symbol", "BTC"), equals("TimeUTC", first_point)])
        assert report_model.measure("Price Variation %", first) == 0


def test_the_table_lists_each_assets_newest_tick(
    project: Path, data_folder: Path, ticks: list[Row]
) -> None:
    path = project / REPORT_DIR / "definition/pages/prices/visuals/table_last_values/visual.json"
    visual = json.loads(path.read_text(encoding="utf-8"))["visual"]
    fields = [
        (
            p["field"]["Column"]["Expression"]["SourceRef"]["Entity"],
            p["field"]["Column"]["Property"],
        )
        for p in visual["query"]["queryState"]["Values"]["projections"]
    ]
    assert {table for table, _ in fields} == {"crypto_last_values"}
    columns = [column for _, column in fields]
    (sort,) = visual["query"]["sortDefinition"]["sort"]
    sort_column = sort["field"]["Column"]["Property"]
    # A table visual of columns shows their distinct combinations, in its sort order.
    last_values = load([data_folder / "crypto_last_values.csv"])
    shown = sorted(
        {tuple(r[c] for c in columns) for r in last_values},
        key=lambda t: t[columns.index(sort_column)],
    )
    # What it must show: the newest tick of every asset, from every tick written.
    newest: dict[str, Row] = {}
    for r in sorted(ticks, key=lambda r: r["timestamp"]):
        newest[r["id"]] = r
    expected = sorted((tuple(r[c] for c in columns) for r in newest.values()), key=lambda t: t[0])
    assert columns[0] == sort_column == "symbol"
    assert shown == expected
    assert [t[0] for t in shown] == ["BTC", "ETH", "SOL", "XRP"]


def test_a_project_without_any_tick_shows_blank_cards(tmdl: pbip.Model) -> None:
    empty = ticks_model(tmdl, [], measures_of(tmdl))
    for name in measures_of(tmdl):
        assert empty.measure(name, dax.Context()) is None, name
