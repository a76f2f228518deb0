"""`cryptostream powerbi` writes a Power BI Project that passes every offline check.

The project is generated once by the real command (a subprocess, as a user runs
it) and then checked: every JSON file against Microsoft's published schema it
names, the TMDL by the reader of the documented syntax in tests/support/pbip.py,
every field a visual or a measure names against the model, the M of every
partition against the kit in powerbi/, and the report with Microsoft's
report-authoring command line when it is installed (./scripts/test installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cryptostream.csvrow import COLUMNS, HEADER
from cryptostream.powerbi import kit, queries, report
from cryptostream.powerbi.project import MODEL_DIR, PBIP, REPORT_DIR
from tests.support import pbip

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "powerbi"
DATA_FOLDER = "C:\\Users\\analyst\\cryptostream\\data"
# Where ./scripts/test installs @microsoft/powerbi-report-authoring-cli.
AUTHOR_CLI = REPO / ".cache" / "powerbi-report-authoring-cli" / "node_modules" / ".bin"
AUTHOR_CLI_BIN = AUTHOR_CLI / "powerbi-report-author"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pbip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSTREAM_")}
    env.pop("COINCAP_API_KEY", None)  # not needed to describe the files
    env["CRYPTOSTREAM_STORAGE__DATA_DIR"] = str(root / "data")
    out = root / "project"
    command = [sys.executable, "-m", "cryptostream", "powerbi", "--out", str(out)]
    result = subprocess.run(
        [*command, "--data-folder", DATA_FOLDER],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"Open {out / PBIP} in Power BI Desktop, then click Refresh once."
    return out


@pytest.fixture(scope="module")
def model(project: Path) -> pbip.Model:
    return pbip.read_model(project / MODEL_DIR / "definition")


def visual_docs(project: Path) -> dict[str, dict[str, Any]]:
    pages = project / REPORT_DIR / "definition" / "pages"
    return {
        p.parent.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(pages.glob("*/visuals/*/visual.json"))
    }


# --- files ------------------------------------------------------------------------


def test_every_json_file_matches_the_schema_it_names(project: Path) -> None:
    registry = pbip.schema_registry()
    files = pbip.json_files(project)
    themes = {p for p in files if "StaticResources" in p.parts}
    checked = 0
    for path in files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if path in themes:
            continue  # report themes have no $schema of this family (checked below)
        errors = pbip.schema_errors(doc, registry)
        assert not errors, f"{path.relative_to(project)}: {errors}"
        checked += 1
    # .pbip, 2 x .platform, .pbism, .pbir, version, report, pages, page, 10 visuals
    assert checked == 19


def test_the_schema_check_fails_on_a_broken_file(project: Path) -> None:
    registry = pbip.schema_registry()
    page = json.loads((project / REPORT_DIR / "definition/pages/prices/page.json").read_text())
    assert pbip.schema_errors(page, registry) == []
    del page["displayOption"]
    assert pbip.schema_errors(page, registry)
    visual = next(iter(visual_docs(project).values()))
    visual["position"]["x"] = "left"
    assert pbip.schema_errors(visual, registry)


def test_files_are_utf8_without_bom_with_unix_line_ends(project: Path) -> None:
    for path in project.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not data.startswith(b"\xef\xbb\xbf"), path
            assert b"\r\n" not in data, path
            data.decode("utf-8")


def test_the_layout_is_a_pbip_project(project: Path) -> None:
    shortcut = json.loads((project / PBIP).read_text())
    assert shortcut["artifacts"] == [{"report": {"path": REPORT_DIR}}]
    pbir = json.loads((project / REPORT_DIR / "definition.pbir").read_text())
    assert (project / REPORT_DIR / pbir["datasetReference"]["byPath"]["path"]).resolve() == (
        project / MODEL_DIR
    )
    for folder, kind in ((REPORT_DIR, "Report"), (MODEL_DIR, "SemanticModel")):
        platform = json.loads((project / folder / ".platform").read_text())
        assert platform["metadata"]["type"] == kind
        assert re.fullmatch(
            r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", platform["config"]["logicalId"]
        )
    # TMDL, not model.bim: definition.pbism 4.0 and a definition/ folder.
    assert json.loads((project / MODEL_DIR / "definition.pbism").read_text())["version"] == "4.0"
    assert not (project / MODEL_DIR / "model.bim").exists()


def test_names_of_pages_and_visuals_are_safe(project: Path) -> None:
    pages = project / REPORT_DIR / "definition" / "pages"
    page_dirs = [p for p in pages.iterdir() if p.is_dir()]
    assert [p.name for p in page_dirs] == ["prices"]
    for page in page_dirs:
        assert json.loads((page / "page.json").read_text())["name"] == page.name
    for folder, doc in visual_docs(project).items():
        assert re.fullmatch(r"[A-Za-z0-9_-]+", folder) and doc["name"] == folder
    order = json.loads((pages / "pages.json").read_text())
    assert order["pageOrder"] == ["prices"] and order["activePageName"] == "prices"


def test_the_themes_report_json_names_exist(project: Path) -> None:
    rdir = project / REPORT_DIR
    doc = json.loads((rdir / "definition/report.json").read_text())
    packages = {p["name"]: p for p in doc["resourcePackages"]}
    for slot in ("baseTheme", "customTheme"):
        theme = doc["themeCollection"][slot]
        package = packages[theme["type"]]
        item = next(i for i in package["items"] if i["name"] == theme["name"])
        base = "BaseThemes/" if slot == "baseTheme" else ""
        assert item["path"] == f"{base}{theme['name']}" + ("" if slot == "customTheme" else ".json")
        path = rdir / "StaticResources" / theme["type"] / item["path"]
        content = json.loads(path.read_text(encoding="utf-8"))
        assert content["name"] == theme["name"]
        if slot == "customTheme":
            assert content["dataColors"] == report.COLORS
            assert all(re.fullmatch(r"#[0-9a-fA-F]{6}", c) for c in content["dataColors"])
        else:
            # Desktop resolves the base theme by its built-in name: the file only names it.
            assert content == {"name": "CY24SU10"}


def test_the_page_is_16_9_and_every_visual_fits_without_overlap(project: Path) -> None:
    page = json.loads((project / REPORT_DIR / "definition/pages/prices/page.json").read_text())
    assert (page["width"], page["height"]) == (1280, 720)
    boxes = []
    for name, doc in visual_docs(project).items():
        p = doc["position"]
        assert p["x"] >= 0 and p["x"] + p["width"] <= 1280, name
        assert p["y"] >= 0 and p["y"] + p["height"] <= 720, name
        boxes.append((name, p["x"], p["y"], p["x"] + p["width"], p["y"] + p["height"]))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2], (a[0], b[0])


def test_the_page_has_the_classic_visuals(project: Path) -> None:
    docs = visual_docs(project)
    kinds = sorted(d["visual"]["visualType"] for d in docs.values())
    assert kinds == ["card"] * 6 + ["lineChart", "slicer", "slicer", "tableEx"]
    chart = docs["chart_variation"]["visual"]["query"]["queryState"]
    assert chart["Y"]["projections"][0]["field"]["Measure"]["Property"] == "Price Variation %"
    assert chart["Series"]["projections"][0]["field"]["Column"]["Property"] == "symbol"
    slicer = docs["slicer_date"]["visual"]["query"]["queryState"]["Values"]["projections"]
    assert [p["field"]["HierarchyLevel"]["Level"] for p in slicer] == ["Year", "Month", "Day"]
    assets = docs["slicer_asset"]["visual"]["query"]["queryState"]["Values"]["projections"]
    assert [p["field"]["Column"]["Property"] for p in assets] == ["name"]
    cards = {
        d["visual"]["query"]["queryState"]["Values"]["projections"][0]["field"]["Measure"][
            "Property"
        ]
        for d in docs.values()
        if d["visual"]["visualType"] == "card"
    }
    assert cards == {"Asset", "Last Price Card", "Last Time", "Records", "Assets", "Days Tracked"}


def test_grouping_fields_are_active_as_desktop_saves_them(project: Path) -> None:
    """The slicers' fields and the chart's X axis carry "active": true; nothing else does."""
    active = set()
    for name, doc in visual_docs(project).items():
        for role, state in doc["visual"]["query"]["queryState"].items():
            for projection in state["projections"]:
                if projection.get("active") is True:
                    active.add((name, role, projection["nativeQueryRef"]))
                else:
                    assert "active" not in projection, (name, role)
    assert active == {
        ("slicer_date", "Values", "Date Year"),
        ("slicer_date", "Values", "Date Month"),
        ("slicer_date", "Values", "Date Day"),
        ("slicer_asset", "Values", "name"),
        ("chart_variation", "Category", "TimeUTC"),
    }


# --- the model --------------------------------------------------------------------


def _fields(node: Any) -> list[dict[str, Any]]:
    """Every Column / Measure / HierarchyLevel expression inside a visual."""
    found = []
    if isinstance(node, dict):
        for key in ("Column", "Measure", "HierarchyLevel"):
            if key in node and isinstance(node[key], dict) and "Expression" in node[key]:
                found.append(node)
        for value in node.values():
            found += _fields(value)
    elif isinstance(node, list):
        for value in node:
            found += _fields(value)
    return found


def test_every_field_a_visual_names_exists_in_the_model(project: Path, model: pbip.Model) -> None:
    count = 0
    for name, doc in visual_docs(project).items():
        for f in _fields(doc["visual"]):
            count += 1
            if "HierarchyLevel" in f:
                hl = f["HierarchyLevel"]
                h = hl["Expression"]["Hierarchy"]
                table = model.tables[h["Expression"]["SourceRef"]["Entity"]]
                levels = table.kids("hierarchy")[h["Hierarchy"]].kids("level")
                assert hl["Level"] in levels, (name, hl["Level"])
                continue
            kind = "Column" if "Column" in f else "Measure"
            entity = f[kind]["Expression"]["SourceRef"]["Entity"]
            prop = f[kind]["Property"]
            assert entity in model.tables, (name, entity)
            assert prop in model.tables[entity].kids(kind.lower()), (name, entity, prop)
    assert count >= 15


def test_every_column_a_measure_names_exists(model: pbip.Model) -> None:
    ticks = model.tables["crypto_ticks"]
    measures = ticks.kids("measure")
    assert set(measures) == {
        "Records",
        "Assets",
        "Days Tracked",
        "Last Time",
        "Asset",
        "Last Price",
        "Last Price Card",
        "Price Variation %",
    }
    for name, m in measures.items():
        refs = re.findall(r"(\w+)\[([^\]]+)\]", m.text)
        tables = re.findall(r"COUNTROWS \( (\w+) \)", m.text)
        assert refs or tables, name
        for table, column in refs:
            assert column in model.tables[table].kids("column"), (name, table, column)
        for table in tables:
            assert table in model.tables, name


def test_the_model_has_an_explicit_date_hierarchy_and_no_auto_dates(project: Path) -> None:
    text = (project / MODEL_DIR / "definition/model.tmdl").read_text()
    assert "annotation __PBI_TimeIntelligenceEnabled = 0" in text
    ticks = pbip.read_model(project / MODEL_DIR / "definition").tables["crypto_ticks"]
    levels = ticks.kids("hierarchy")["Date"].kids("level")
    assert [lv.props["column"] for lv in levels.values()] == ["Year", "Month", "Day"]
    columns = ticks.kids("column")
    assert columns["TimeUTC"].props["dataType"] == "dateTime"
    assert columns["Month"].props["sortByColumn"] == "MonthNumber"
    assert columns["PriceVariation"].props["formatString"] == "0.00%"


def test_the_data_folder_is_a_parameter_with_the_path(model: pbip.Model) -> None:
    data_folder = model.expressions["DataFolder"].text
    assert data_folder.startswith('"C:\\Users\\analyst\\cryptostream\\data" meta [')
    assert "IsParameterQuery = true" in data_folder
    assert model.expressions["TicksFrom"].text.startswith('"history" meta [')


# --- one source of truth for M ----------------------------------------------------


def kit_body(name: str) -> str:
    """A kit file without its leading ``//`` description."""
    lines = (KIT / name).read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("//"):
        lines.pop(0)
    return "\n".join(lines)


def test_the_m_of_every_partition_and_function_is_the_kits(model: pbip.Model) -> None:
    compared = 0
    for table in model.tables.values():
        (partition,) = table.kids("partition").values()
        assert partition.props["source"] == kit_body(f"{table.name}.pq"), table.name
        compared += 1
    for name, expr in model.expressions.items():
        if expr.expression is not None:  # functions; parameters differ by value only
            assert expr.expression == kit_body(f"{name}.pq"), name
            compared += 1
        else:
            kit_value = kit_body(f"{name}.pq")
            assert re.sub(r'^"[^"]*"', "", expr.value) == re.sub(r'^"[^"]*"', "", kit_value)
            compared += 1
    assert compared == len(queries.queries())


def test_the_committed_kit_is_what_the_generator_writes() -> None:
    for name, text in kit.kit_files().items():
        assert (KIT / name).read_text(encoding="utf-8") == text, (
            f"powerbi/{name} is stale: run python -m cryptostream.powerbi.kit"
        )
    written = {p.name for p in KIT.glob("*.pq")} | {"measures.dax"}
    assert written == set(kit.kit_files())


def test_the_m_reads_every_column_with_the_en_us_locale_and_no_fixed_count() -> None:
    m = kit_body("fnCryptoTicks.pq")
    assert '"en-US"' in m
    assert "Table.RemoveRowsWithErrors" in m and "<> null" in m
    csv = re.sub(r"//[^\n]*", "", kit_body("fnCryptoCsv.pq"))
    assert "Columns" not in csv and csv.count("Table.PromoteHeaders") == 1
    folder = kit_body("fnCryptoFolder.pq")
    assert "Folder.Files" in folder and "Table.Combine" in folder


# --- the CSV contract -------------------------------------------------------------


def test_the_report_reads_exactly_the_csv_header() -> None:
    """Renaming or reordering a CSV column in the sink fails here, not in a user's report."""
    assert [name for name, _ in queries.CSV_COLUMNS] == list(COLUMNS)
    assert ",".join(name for name, _ in queries.CSV_COLUMNS) + "\n" == HEADER
    contract = (REPO / "docs" / "files.md").read_text(encoding="utf-8")
    for name, _ in queries.CSV_COLUMNS:
        assert f"`{name}`" in contract, name


def test_every_csv_column_the_model_loads_is_in_the_header(model: pbip.Model) -> None:
    derived = {"TimeUTC", "DateUTC", "Year", "MonthNumber", "Month", "Day", "PriceVariation"}
    for table in model.tables.values():
        sources = {c.props["sourceColumn"] for c in table.kids("column").values()}
        assert sources - derived == set(COLUMNS), table.name


# --- Microsoft's report-authoring command line ------------------------------------

# Power BI Desktop saves a hierarchy slicer with one projection per level; the
# command line's catalogue gives the slicer's field well one projection at most.
KNOWN_DIAGNOSTICS = {("PBIR_ROLE_MAX_EXCEEDED", "slicer_date")}


def test_microsofts_report_validator_accepts_the_report(project: Path) -> None:
    if not AUTHOR_CLI_BIN.exists() or shutil.which("node") is None:
        message = f"{AUTHOR_CLI_BIN} missing: ./scripts/test installs it (npm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [str(AUTHOR_CLI_BIN), "validate", str(project / PBIP), "--no-schema"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    envelope = json.loads(result.stdout)
    assert "data" in envelope, envelope
    diagnostics = envelope["data"].get("diagnostics", {})
    found = set()
    for code, group in diagnostics.items():
        for item in group["items"]:
            visual = Path(item.get("file", "")).parent.name
            found.add((code, visual))
            assert (code, visual) in KNOWN_DIAGNOSTICS, item["message"]
    assert found <= KNOWN_DIAGNOSTICS
    assert envelope["data"]["warningCount"] == 0


def test_microsofts_validator_catches_an_unknown_role(project: Path, tmp_path: Path) -> None:
    if not AUTHOR_CLI_BIN.exists() or shutil.which("node") is None:
        pytest.skip("validator not installed (see the test above)")
    broken = tmp_path / "broken"
    shutil.copytree(project, broken)
    path = broken / REPORT_DIR / "definition/pages/prices/visuals/chart_variation/visual.json"
    doc = json.loads(path.read_text())
    state = doc["visual"]["query"]["queryState"]
    state["Legend"] = state.pop("Series")
    path.write_text(json.dumps(doc))
    result = subprocess.run(
        [str(AUTHOR_CLI_BIN), "validate", str(broken / PBIP), "--no-schema"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "PBIR_ROLE_UNKNOWN" in json.loads(result.stdout)["data"]["diagnostics"]


def test_schema_versions_are_vendored() -> None:
    for rel in report.SCHEMAS.values():
        assert (pbip.SCHEMA_DIR / "fabric" / rel / "schema.json").is_file(), rel
