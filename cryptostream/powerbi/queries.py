"""The Power Query (M) of the report: one source for the project and the manual kit.

Every query is written here once. ``cryptostream powerbi`` puts them into the
semantic model (TMDL partitions and shared expressions) and
``python -m cryptostream.powerbi.kit`` writes the same text into ``powerbi/*.pq``
for people who build the report by hand; a test keeps the two identical.

The files are read with the en-US culture, so ``.`` is the decimal point
whatever the Windows regional settings say. No query fixes the number of CSV
columns: a column added to the files later reaches Power Query instead of
being cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The tick columns, in the order of the CSV header, with their M types. The
#: header itself is the sink's contract (docs/files.md); a test checks
#: that this list is that header.
CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("timestamp", "type number"),
    ("id", "type text"),
    ("symbol", "type text"),
    ("name", "type text"),
    ("priceUsd", "type number"),
    ("changePercent24Hr", "type number"),
    ("firstValue", "type number"),
    ("vwap24Hr", "type number"),
)

#: Where the ticks come from: every daily file (kept for good) or crypto_data.csv
#: (which storage.retention_days may keep short).
TICKS_SOURCES = ("history", "crypto_data")
#: The intervals ``cryptostream backfill`` writes under history/backfill/.
BACKFILL_INTERVALS = ("m1", "m5", "m15", "m30", "h1", "h2", "h6", "h12", "d1")

Kind = Literal["parameter", "function", "table"]


@dataclass(frozen=True, slots=True)
class Query:
    """One named Power Query query: a parameter, a helper function or a loaded table."""

    name: str
    kind: Kind
    #: What it is, for the kit's header comment and the model's description.
    doc: str
    #: The M expression. For a parameter, its value is filled in by :func:`parameter_m`.
    m: str


def m_text(value: str) -> str:
    """An M text literal: ``"`` doubled, and ``#(`` (M's escape opener) escaped."""
    return '"' + value.replace('"', '""').replace("#(", "#(#)(") + '"'


def parameter_m(value: str, choices: tuple[str, ...] = ()) -> str:
    """The M of a required text parameter (shown in Transform data > Edit parameters)."""
    meta = ["IsParameterQuery = true"]
    if choices:
        meta.append("List = {" + ", ".join(m_text(c) for c in choices) + "}")
        meta.append(f"DefaultValue = {m_text(value)}")
    meta += ['Type = "Text"', "IsParameterQueryRequired = true"]
    return f"{m_text(value)} meta [{', '.join(meta)}]"


def _type_pairs() -> str:
    return ",\n".join(f'            {{"{name}", {mtype}}}' for name, mtype in CSV_COLUMNS)


def _column_list() -> str:
    return ", ".join(f'"{name}"' for name, _ in CSV_COLUMNS)


FN_CSV = """\
(file as binary) as table =>
let
    // No Columns option: the header decides, so a column added later is kept.
    Source = Csv.Document(file, [Delimiter = ",", Encoding = 65001, QuoteStyle = QuoteStyle.Csv]),
    // The file's own header row becomes the column names, once: never a data row.
    Promoted = Table.PromoteHeaders(Source, [PromoteAllScalars = true])
in
    Promoted"""

FN_FOLDER = """\
(folder as text) as table =>
let
    // A folder that does not exist yet (no backfill run, no tick yet) gives no
    // rows instead of a refresh error. RowCount makes the listing happen inside try.
    Present = (try Table.RowCount(Folder.Files(folder)) otherwise -1) >= 0,
    Files = if Present then Folder.Files(folder) else #table({"Name", "Extension", "Content"}, {}),
    DayFiles = Table.SelectRows(
        Files,
        each Text.Lower([Extension]) = ".csv" and not Text.StartsWith([Name], ".")
    ),
    Combined = Table.Combine({#table({}, {})} & List.Transform(DayFiles[Content], fnCryptoCsv))
in
    Combined"""

FN_TICKS = f"""\
(rows as table) as table =>
let
    // Every known column exists, even before the first tick (an empty folder).
    Complete = Table.Combine({{#table({{{_column_list()}}}, {{}}), rows}}),
    // "en-US": "." is the decimal point whatever the Windows locale says. An empty
    // cell (e.g. vwap24Hr when the API sent null) becomes null.
    Typed = Table.TransformColumnTypes(
        Complete,
        {{
{_type_pairs()}
        }},
        "en-US"
    ),
    // A row without a time or a price (a line still being written) is dropped.
    Readable = Table.RemoveRowsWithErrors(Typed, {{"timestamp", "priceUsd"}}),
    Valid = Table.SelectRows(Readable, each [timestamp] <> null and [priceUsd] <> null),
    Clean = Table.ReplaceErrorValues(
        Valid,
        {{{{"changePercent24Hr", null}}, {{"firstValue", null}}, {{"vwap24Hr", null}}}}
    ),
    // timestamp is Unix seconds with a fraction, UTC.
    WithTime = Table.AddColumn(
        Clean,
        "TimeUTC",
        each #datetime(1970, 1, 1, 0, 0, 0) + #duration(0, 0, 0, [timestamp]),
        type datetime
    ),
    WithDate = Table.AddColumn(WithTime, "DateUTC", each DateTime.Date([TimeUTC]), type date),
    // Explicit Year / Month / Day for the slicer's hierarchy (no hidden auto date tables).
    WithYear = Table.AddColumn(WithDate, "Year", each Date.Year([DateUTC]), Int64.Type),
    WithMonthNumber = Table.AddColumn(
        WithYear, "MonthNumber", each Date.Month([DateUTC]), Int64.Type
    ),
    WithMonth = Table.AddColumn(
        WithMonthNumber, "Month", each Date.ToText([DateUTC], "MMM", "en-US"), type text
    ),
    WithDay = Table.AddColumn(WithMonth, "Day", each Date.Day([DateUTC]), Int64.Type),
    // The change against the day's first price (firstValue resets at 00:00 UTC), as a
    // fraction: the model formats it as a percentage.
    WithVariation = Table.AddColumn(
        WithDay,
        "PriceVariation",
        each if [firstValue] = null or [firstValue] = 0 then null
            else ([priceUsd] - [firstValue]) / [firstValue],
        type number
    )
in
    WithVariation"""

FN_FILE = """\
(folder as text, file as text) as table =>
let
    // A file that is not there yet (a project written before the first tick, or
    // moved to another machine) gives no rows instead of a refresh error. The
    // folder's listing (names only: no file is opened) is counted inside try, so
    // a missing folder is no error either.
    Matches = (name as text) => Text.Lower(name) = Text.Lower(file),
    Present =
        (try Table.RowCount(Table.SelectRows(Folder.Contents(folder), each Matches([Name])))
            otherwise 0) > 0,
    Rows = if Present then fnCryptoCsv(File.Contents(folder & "\\" & file)) else #table({}, {})
in
    Rows"""

TICKS = """\
let
    Rows =
        if TicksFrom = "crypto_data" then
            fnCryptoFile(DataFolder, "crypto_data.csv")
        else
            fnCryptoFolder(DataFolder & "\\history\\ticks"),
    Ticks = fnCryptoTicks(Rows)
in
    Ticks"""

LAST_VALUES = """\
let
    Source = fnCryptoTicks(fnCryptoFile(DataFolder, "crypto_last_values.csv"))
in
    Source"""

BACKFILL = """\
let
    Source = fnCryptoTicks(fnCryptoFolder(DataFolder & "\\history\\backfill\\" & BackfillInterval))
in
    Source"""

#: Placeholders of the kit's parameter files (the project has the real values).
KIT_DATA_FOLDER = "C:\\cryptostream\\data"


def queries(
    data_folder: str = KIT_DATA_FOLDER,
    ticks_from: str = "history",
    backfill_interval: str = "h1",
) -> tuple[Query, ...]:
    """Every query, in the order Power Query lists them."""
    return (
        Query(
            "DataFolder",
            "parameter",
            "the folder cryptostream writes its CSV files to (storage.data_dir; with Docker, "
            "the data folder beside docker-compose.yml). Change it in Home > Transform data > "
            "Edit parameters.",
            parameter_m(data_folder),
        ),
        Query(
            "TicksFrom",
            "parameter",
            '"history": the ticks of every daily file history\\ticks\\YYYY-MM-DD.csv, kept for '
            'good; "crypto_data": crypto_data.csv, which storage.retention_days may keep short.',
            parameter_m(ticks_from, TICKS_SOURCES),
        ),
        Query(
            "BackfillInterval",
            "parameter",
            "the interval of `cryptostream backfill` to load (history\\backfill\\<interval>).",
            parameter_m(backfill_interval, BACKFILL_INTERVALS),
        ),
        Query(
            "fnCryptoCsv",
            "function",
            "one cryptostream CSV file -> a table of text columns named by its header.",
            FN_CSV,
        ),
        Query(
            "fnCryptoFolder",
            "function",
            "every daily CSV file of a folder, combined (Folder connector); no rows when the "
            "folder does not exist.",
            FN_FOLDER,
        ),
        Query(
            "fnCryptoFile",
            "function",
            "one CSV file of a folder (fnCryptoCsv); no rows, not an error, when the file "
            "or the folder is not there yet.",
            FN_FILE,
        ),
        Query(
            "fnCryptoTicks",
            "function",
            "tick rows -> typed columns (en-US numbers), TimeUTC, DateUTC, Year, Month, Day "
            "and PriceVariation; rows with no time or price dropped.",
            FN_TICKS,
        ),
        Query(
            "crypto_ticks",
            "table",
            "one row per tick, from the daily files or crypto_data.csv (see TicksFrom).",
            TICKS,
        ),
        Query(
            "crypto_last_values",
            "table",
            "the newest tick of each asset (crypto_last_values.csv, replaced atomically, so a "
            "refresh never sees half a file).",
            LAST_VALUES,
        ),
        Query(
            "crypto_backfill",
            "table",
            "price history fetched by `cryptostream backfill` (changePercent24Hr and vwap24Hr "
            "are empty there); no rows when there is none.",
            BACKFILL,
        ),
    )
