"""The semantic model: tables, columns, the date hierarchy and the measures, as TMDL.

TMDL (Tabular Model Definition Language) is the text form Power BI Desktop
saves a model in: one object per line, properties indented with tabs below
it, multi-line expressions (M, DAX) indented two levels deeper than the line
that declares them. The lineage tags are UUIDs derived from the object's
path, so generating the project twice gives the same files.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from cryptostream.powerbi.queries import CSV_COLUMNS, Query

_TAGS = uuid.UUID("5f0c3a52-8f7e-4d0a-9b51-3c2f6e1d7a90")
TICKS = "crypto_ticks"
HIERARCHY = "Date"

# M type -> TMDL dataType.
_DATA_TYPES = {"type number": "double", "type text": "string"}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    data_type: str  # TMDL: string, double, int64, dateTime
    format_string: str = ""
    hidden: bool = False
    sort_by: str = ""
    date_only: bool = False  # a date stored as dateTime (Power Query's type date)


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    dax: str
    format_string: str
    doc: str


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    measures: tuple[Measure, ...] = ()
    #: (hierarchy name, level columns) pairs.
    hierarchies: tuple[tuple[str, tuple[str, ...]], ...] = ()
    doc: str = ""
    query: str = ""


_PRICE_FORMAT = "#,0.00########"


def tick_columns() -> tuple[Column, ...]:
    """Columns of every tick table: the CSV columns, then those Power Query adds."""
    csv = tuple(
        Column(
            name,
            _DATA_TYPES[mtype],
            _PRICE_FORMAT if name in ("priceUsd", "firstValue", "vwap24Hr") else "",
        )
        for name, mtype in CSV_COLUMNS
    )
    return (
        *csv,
        Column("TimeUTC", "dateTime", "yyyy-mm-dd hh:nn:ss"),
        Column("DateUTC", "dateTime", "yyyy-mm-dd", date_only=True),
        Column("Year", "int64", "0"),
        Column("MonthNumber", "int64", "0", hidden=True),
        Column("Month", "string", sort_by="MonthNumber"),
        Column("Day", "int64", "0"),
        Column("PriceVariation", "double", "0.00%"),
    )


#: What the asset cards say when the filter holds several assets.
SELECT_ONE = "Select one asset"


def measures() -> tuple[Measure, ...]:
    """The report's measures (the kit's measures.dax is written from these).

    Every asset of one poll has the same timestamp, so "the newest tick" names one
    asset only once the filter holds one asset: the per-asset measures answer
    then, and say :data:`SELECT_ONE` (or nothing) otherwise, never a mix of two
    assets' values.
    """
    t = TICKS
    one_asset = f"HASONEVALUE ( {t}[id] )"
    # Rows of the newest timestamp, within the current filter (KEEPFILTERS keeps it).
    newest = f"KEEPFILTERS ( {t}[timestamp] = LastTimestamp )"
    return (
        Measure("Records", f"COUNTROWS ( {t} )", "#,0", "Ticks in the current filter."),
        Measure("Assets", f"DISTINCTCOUNT ( {t}[id] )", "0", "Assets in the current filter."),
        Measure("Days Tracked", f"DISTINCTCOUNT ( {t}[DateUTC] )", "0", "UTC days with ticks."),
        Measure(
            "Last Time",
            f"MAX ( {t}[TimeUTC] )",
            "yyyy-mm-dd hh:nn:ss",
            "Time of the newest tick in the current filter, UTC (one asset picked: its "
            "newest tick; every asset: the newest poll).",
        ),
        Measure(
            "Asset",
            f"VAR AssetCount = DISTINCTCOUNT ( {t}[id] )\n"
            f"VAR LastTimestamp = MAX ( {t}[timestamp] )\n"
            "RETURN\n"
            "    SWITCH (\n"
            "        TRUE (),\n"
            "        AssetCount = 0, BLANK (),\n"
            f'        AssetCount > 1, "{SELECT_ONE}",\n'
            f"        CALCULATE ( MAX ( {t}[name] ), {newest} )\n"
            "    )",
            "",
            "The name of the one asset in the current filter (picked in the Asset slicer, "
            f'a chart legend or a row); "{SELECT_ONE}" when the filter holds several.',
        ),
        Measure(
            "Last Price",
            f"VAR LastTimestamp = MAX ( {t}[timestamp] )\n"
            "RETURN\n"
            "    IF (\n"
            f"        {one_asset},\n"
            f"        CALCULATE ( MAX ( {t}[priceUsd] ), {newest} )\n"
            "    )",
            _PRICE_FORMAT,
            "The price of the newest tick of the one asset in the current filter (a slicer, "
            "a chart legend or a table row picks it); blank when the filter holds several "
            "assets.",
        ),
        Measure(
            "Last Price Card",
            "IF (\n"
            f"    {one_asset},\n"
            f'    FORMAT ( [Last Price], "{_PRICE_FORMAT}" ),\n'
            f'    IF ( NOT ISEMPTY ( {t} ), "{SELECT_ONE}" )\n'
            ")",
            "",
            f'Last Price as the card shows it: "{SELECT_ONE}" when the filter holds several '
            "assets.",
        ),
        Measure(
            "Price Variation %",
            f"IF ( {one_asset}, AVERAGE ( {t}[PriceVariation] ) )",
            "0.00%",
            "The price variation of one asset against its day's first price (the mean over "
            "the ticks of a chart point); blank when the filter holds several assets.",
        ),
    )


def tables(queries: tuple[Query, ...]) -> tuple[Table, ...]:
    """One table per table query, all with the tick columns; the ticks hold the measures."""
    columns = tick_columns()
    return tuple(
        Table(q.name, columns, measures(), ((HIERARCHY, ("Year", "Month", "Day")),), q.doc, q.m)
        if q.name == TICKS
        else Table(q.name, columns, doc=q.doc, query=q.m)
        for q in queries
        if q.kind == "table"
    )


# --- TMDL -------------------------------------------------------------------

_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def name(value: str) -> str:
    """A TMDL object name: quoted with ``'`` unless it is a plain identifier."""
    if _PLAIN_NAME.match(value):
        return value
    return "'" + value.replace("'", "''") + "'"


def lineage_tag(*path: str) -> str:
    return str(uuid.uuid5(_TAGS, "/".join(path)))


def _expression(text: str, depth: int) -> list[str]:
    """A multi-line expression's lines, indented two levels below its declaration."""
    indent = "\t" * (depth + 2)
    return [indent + line if line.strip() else "" for line in text.splitlines()]


def _description(text: str, depth: int) -> list[str]:
    return ["\t" * depth + "/// " + line for line in text.splitlines()] if text else []


def table_tmdl(table: Table) -> str:
    t = table.name
    lines = [*_description(table.doc, 0), f"table {name(t)}", f"\tlineageTag: {lineage_tag(t)}"]
    for m in table.measures:
        lines += ["", *_description(m.doc, 1)]
        if "\n" in m.dax:
            lines += [f"\tmeasure {name(m.name)} =", *_expression(m.dax, 1)]
        else:
            lines.append(f"\tmeasure {name(m.name)} = {m.dax}")
        if m.format_string:
            lines.append(f"\t\tformatString: {m.format_string}")
        lines.append(f"\t\tlineageTag: {lineage_tag(t, 'measure', m.name)}")
    for c in table.columns:
        lines += ["", f"\tcolumn {name(c.name)}", f"\t\tdataType: {c.data_type}"]
        if c.hidden:
            lines.append("\t\tisHidden")
        if c.format_string:
            lines.append(f"\t\tformatString: {c.format_string}")
        lines += [
            f"\t\tlineageTag: {lineage_tag(t, 'column', c.name)}",
            "\t\tsummarizeBy: none",
            f"\t\tsourceColumn: {c.name}",
        ]
        if c.sort_by:
            lines.append(f"\t\tsortByColumn: {name(c.sort_by)}")
        lines += ["", "\t\tannotation SummarizationSetBy = User"]
        if c.date_only:
            lines += ["", "\t\tannotation UnderlyingDateTimeDataType = Date"]
    for hierarchy, levels in table.hierarchies:
        lines += [
            "",
            f"\thierarchy {name(hierarchy)}",
            f"\t\tlineageTag: {lineage_tag(t, 'hierarchy', hierarchy)}",
        ]
        for level in levels:
            lines += [
                "",
                f"\t\tlevel {name(level)}",
                f"\t\t\tlineageTag: {lineage_tag(t, 'hierarchy', hierarchy, level)}",
                f"\t\t\tcolumn: {name(level)}",
            ]
    lines += [
        "",
        f"\tpartition {name(t)} = m",
        "\t\tmode: import",
        "\t\tsource =",
        *_expression(table.query, 2),
        "",
        "\tannotation PBI_ResultType = Table",
        "",
    ]
    return "\n".join(lines)


def expressions_tmdl(queries: tuple[Query, ...]) -> str:
    """Parameters and helper functions: the model's shared expressions."""
    blocks = []
    for q in queries:
        if q.kind == "table":
            continue
        lines = _description(q.doc, 0)
        if q.kind == "parameter":
            lines.append(f"expression {name(q.name)} = {q.m}")
        else:
            lines += [f"expression {name(q.name)} =", *_expression(q.m, 0)]
        lines.append(f"\tlineageTag: {lineage_tag('expression', q.name)}")
        if q.kind == "parameter":
            lines.append("\tqueryGroup: Parameters")
        lines += [
            "",
            f"\tannotation PBI_ResultType = {'Text' if q.kind == 'parameter' else 'Function'}",
            "",
        ]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def model_tmdl(queries: tuple[Query, ...], model_tables: tuple[Table, ...]) -> str:
    order = json.dumps([q.name for q in queries])
    lines = [
        "model Model",
        "\tculture: en-US",
        "\tdefaultPowerBIDataSourceVersion: powerBI_V3",
        "\tsourceQueryCulture: en-US",
        "\tdataAccessOptions",
        "\t\tlegacyRedirects",
        "\t\treturnErrorValuesAsNull",
        "",
        "queryGroup Parameters",
        "",
        "\tannotation PBI_QueryGroupOrder = 0",
        "",
        # Off: no hidden auto date tables; the date hierarchy is the explicit one.
        "annotation __PBI_TimeIntelligenceEnabled = 0",
        "",
        f"annotation PBI_QueryOrder = {order}",
        "",
        *(f"ref table {name(t.name)}" for t in model_tables),
        "",
    ]
    return "\n".join(lines)


DATABASE_TMDL = "database\n\tcompatibilityLevel: 1600\n"


def tmdl_files(queries: tuple[Query, ...]) -> dict[str, str]:
    """Paths under ``definition/`` -> TMDL text."""
    model_tables = tables(queries)
    return {
        "database.tmdl": DATABASE_TMDL,
        "model.tmdl": model_tmdl(queries, model_tables),
        "expressions.tmdl": expressions_tmdl(queries),
        **{f"tables/{t.name}.tmdl": table_tmdl(t) for t in model_tables},
    }
