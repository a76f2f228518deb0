"""A Refresh of a project written before the first tick reads no file unguarded.

No Power BI Desktop runs here, so this reads the M of a freshly written project
(as Desktop loads it: the TMDL partitions and shared expressions): every call
that touches the file system is either counted inside ``try ... otherwise`` or
made only when such a ``Present`` check said the file or folder is there. Missing
files and folders then give an empty, typed table (fnCryptoTicks adds every
column), not a refresh error.
"""

from __future__ import annotations

import re

import pytest

from cryptostream.powerbi import queries
from cryptostream.powerbi.project import MODEL_DIR, Options, write_project
from tests.support import pbip

# Power Query's functions that open something outside the query (a file, a folder,
# a web address...). Csv.Document only parses the binary it is given.
_SOURCE_CALL = re.compile(r"\b((?:File|Folder|Web|Excel|SharePoint|Odbc|Sql)\.\w+)\(")


def strip_comments(m: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", m, flags=re.S)


def bindings(m: str) -> dict[str, str]:
    """The steps of a ``let`` (``Name = ...`` at the let's indentation) -> their text."""
    body = strip_comments(m)
    parts = re.split(r"^    (\w+) =", body, flags=re.M)
    steps = {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}
    if "in" in body.split("\n"):
        last = list(steps)[-1] if steps else None
        if last:
            steps[last] = steps[last].split("\nin\n")[0]
    return steps


def unguarded_reads(m: str) -> list[str]:
    """Calls that open a file or folder without a try or a Present check around them."""
    problems = []
    steps = bindings(m)
    guard_ok = "Present" in steps and re.search(r"\btry\b.*\botherwise\b", steps["Present"], re.S)
    for step, text in steps.items():
        for call in _SOURCE_CALL.findall(text):
            inside_try = re.search(rf"\btry\b[^,]*\b{re.escape(call)}\(", text, re.S)
            behind_present = re.match(r"\s*if Present then\b", text) is not None
            if inside_try or (behind_present and guard_ok):
                continue
            problems.append(f"{step}: {call}")
    if not steps:  # a function body without let
        problems += _SOURCE_CALL.findall(strip_comments(m))
    return problems


@pytest.fixture(scope="module")
def fresh_model(tmp_path_factory: pytest.TempPathFactory) -> pbip.Model:
    """A project for a data folder with no CSV file, no history, no backfill yet."""
    root = tmp_path_factory.mktemp("fresh")
    data = root / "data"
    data.mkdir()
    for ticks_from in queries.TICKS_SOURCES:
        out = root / ticks_from
        write_project(Options(out=out, data_folder=str(data), ticks_from=ticks_from))
    assert not list(data.rglob("*.csv"))
    return pbip.read_model(root / "crypto_data" / MODEL_DIR / "definition")


def every_m(model: pbip.Model) -> dict[str, str]:
    found = {}
    for table in model.tables.values():
        (partition,) = table.kids("partition").values()
        found[table.name] = partition.props["source"]
    for name, expr in model.expressions.items():
        found[name] = expr.text
    return found


def test_every_file_read_of_a_fresh_project_is_guarded(fresh_model: pbip.Model) -> None:
    texts = every_m(fresh_model)
    opened = {name: _SOURCE_CALL.findall(text) for name, text in texts.items()}
    # The reads are where they are expected: two guarded helpers, and nothing else opens.
    assert {n for n, calls in opened.items() if calls} == {
        "fnCryptoFile",
        "fnCryptoFolder",
    }
    for name, text in texts.items():
        assert unguarded_reads(text) == [], name
    # The tables read through the helpers only (crypto_data.csv too: the project is
    # written with TicksFrom = "crypto_data").
    ticks = texts["crypto_ticks"]
    assert 'fnCryptoFile(DataFolder, "crypto_data.csv")' in ticks
    assert 'fnCryptoFile(DataFolder, "crypto_last_values.csv")' in texts["crypto_last_values"]
    assert "fnCryptoFolder(" in texts["crypto_backfill"]


def test_an_empty_read_still_has_every_column(fresh_model: pbip.Model) -> None:
    """No rows is a typed, empty table: fnCryptoTicks adds every CSV column first."""
    ticks_fn = strip_comments(fresh_model.expressions["fnCryptoTicks"].text)
    header = ", ".join(f'"{name}"' for name, _ in queries.CSV_COLUMNS)
    assert f"Table.Combine({{#table({{{header}}}, {{}}), rows}})" in ticks_fn
    for name in ("crypto_ticks", "crypto_last_values", "crypto_backfill"):
        (partition,) = fresh_model.tables[name].kids("partition").values()
        assert "fnCryptoTicks(" in partition.props["source"], name


@pytest.mark.parametrize(
    "m",
    [
        # The crypto_last_values query before the guard: a missing file failed the refresh.
        'let\n    Source = fnCryptoTicks(fnCryptoCsv(File.Contents(DataFolder & "\\\\x.csv")))\n'
        "in\n    Source",
        # A Present check that is not a try.
        "let\n    Present = true,\n"
        '    Rows = if Present then fnCryptoCsv(File.Contents("x")) else #table({}, {})\n'
        "in\n    Rows",
        "(folder as text) as table => Folder.Files(folder)",
    ],
)
def test_an_unguarded_read_is_caught(m: str) -> None:
    assert unguarded_reads(m)


def test_the_guarded_helpers_pass_the_check() -> None:
    by_name = {q.name: q.m for q in queries.queries()}
    assert unguarded_reads(by_name["fnCryptoFile"]) == []
    assert unguarded_reads(by_name["fnCryptoFolder"]) == []
