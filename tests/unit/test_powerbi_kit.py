"""The Power BI kit names only columns the CSV files have, and its .pbids has the documented shape.

The .pq files and measures.dax are written by ``python -m cryptostream.powerbi.kit``
(test_powerbi_project.py checks they are current); these tests read them as a user
pastes them.

A change of the CSV format that the kit does not follow breaks this test, not a
user's report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cryptostream.csvrow import COLUMNS

KIT = Path(__file__).resolve().parents[2] / "powerbi"
# Columns of Power Query's Folder.Files table that the folder queries use.
FOLDER_FILES_COLUMNS = {"Content", "Name", "Extension"}


def read(name: str) -> str:
    return (KIT / name).read_text(encoding="utf-8")


def strip_m_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def m_scripts() -> dict[str, str]:
    return {p.stem: strip_m_comments(p.read_text(encoding="utf-8")) for p in KIT.glob("*.pq")}


def added_columns(code: str) -> set[str]:
    """Columns a script adds itself: Table.AddColumn(table, "Name", ...)."""
    return set(re.findall(r'Table\.AddColumn\(\s*\w+\s*,\s*"([^"]+)"', code))


def test_the_type_list_is_the_csv_header_in_order() -> None:
    code = m_scripts()["fnCryptoTicks"]
    typed = re.findall(r'\{\s*"([^"]+)"\s*,\s*type\s+\w+\s*\}', code)
    assert typed == list(COLUMNS)
    assert '"en-US"' in code  # decimals read with "." whatever the Windows locale
    # No fixed column count: a column added to the files later is not cut off.
    assert "Columns =" not in m_scripts()["fnCryptoCsv"]


def test_every_column_an_m_script_names_exists() -> None:
    scripts = m_scripts()
    derived = set().union(*(added_columns(code) for code in scripts.values()))
    assert {"TimeUTC", "DateUTC", "Year", "Month", "Day", "PriceVariation"} <= derived
    known = set(COLUMNS) | derived | FOLDER_FILES_COLUMNS
    for name, code in scripts.items():
        # [column] field access; record literals like [Delimiter = ","] do not match.
        fields = set(re.findall(r"\[([A-Za-z_][\w ]*)\]", code))
        assert fields <= known, f"{name}.pq names unknown columns {sorted(fields - known)}"


def test_m_scripts_use_only_queries_of_the_kit_and_the_right_files() -> None:
    scripts = m_scripts()
    for parameter in ("DataFolder", "TicksFrom", "BackfillInterval"):
        assert scripts[parameter].strip().endswith("IsParameterQueryRequired = true]")
    for name in ("crypto_ticks", "crypto_last_values", "crypto_backfill"):
        code = scripts[name]
        assert "DataFolder" in code and "fnCryptoTicks(" in code, name
    assert 'fnCryptoFile(DataFolder, "crypto_data.csv")' in scripts["crypto_ticks"]
    assert '"\\history\\ticks"' in scripts["crypto_ticks"]
    assert "fnCryptoFolder(" in scripts["crypto_ticks"]
    assert 'fnCryptoFile(DataFolder, "crypto_last_values.csv")' in scripts["crypto_last_values"]
    assert '"\\history\\backfill\\"' in scripts["crypto_backfill"]
    assert "Folder.Files" in scripts["fnCryptoFolder"]
    # Every name a query calls is a query of the kit (or M's standard library).
    names = set(scripts)
    for name, code in scripts.items():
        called = set(re.findall(r"\b(fn\w+)\(", code))
        assert called <= names, f"{name}.pq calls {sorted(called - names)}"


def dax_measures(text: str) -> dict[str, str]:
    body = re.sub(r"//[^\n]*", "", text)
    parts = re.split(r"^(?!VAR\b|RETURN\b)([A-Z][\w %]*?) =", body, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_column_a_dax_measure_names_exists() -> None:
    measures = dax_measures(read("measures.dax"))
    assert set(measures) >= {
        "Records",
        "Assets",
        "Days Tracked",
        "Last Time",
        "Asset",
        "Last Price",
        "Last Price Card",
        "Price Variation %",
    }
    queries = set(m_scripts())
    derived = set().union(*(added_columns(code) for code in m_scripts().values()))
    for name, expr in measures.items():
        refs = re.findall(r"(\w+)\[([^\]]+)\]", expr)
        assert refs or "COUNTROWS" in expr, name
        for table, column in refs:
            assert table in queries, f"{name}: no query {table!r}"
            assert column in set(COLUMNS) | derived, f"{name}: no column {column!r}"
        for table in re.findall(r"COUNTROWS\s*\(\s*(\w+)\s*\)", expr):
            assert table in queries, f"{name}: no query {table!r}"


def test_pbids_has_the_documented_shape() -> None:
    data = json.loads(read("cryptostream.pbids"))
    assert set(data) == {"version", "connections"}
    assert data["version"] == "0.1"
    assert isinstance(data["connections"], list) and len(data["connections"]) == 1
    connection = data["connections"][0]
    assert set(connection) <= {"details", "options", "mode"}
    assert connection.get("mode") in (None, "Import")
    details = connection["details"]
    assert details["protocol"] == "folder"
    path = details["address"]["path"]
    assert isinstance(path, str) and path.strip()
    assert set(details["address"]) == {"path"}


@pytest.mark.parametrize("name", sorted(p.name for p in KIT.iterdir() if p.name != "README.md"))
def test_the_guide_mentions_every_file_of_the_kit(name: str) -> None:
    guide = (KIT.parent / "docs" / "powerbi.md").read_text(encoding="utf-8")
    assert f"`{name}`" in guide
