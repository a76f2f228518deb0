"""Every Power Query (M) expression the generator writes parses with Microsoft's parser.

``@microsoft/powerquery-parser`` (the parser behind Microsoft's Power Query
language services) runs under Node from ``tests/powerquery/`` (its own
package.json and lockfile; installed with ``npm ci`` by ./scripts/test, or here
when missing). The texts are those Power BI Desktop reads: the partitions and
shared expressions of a written project as the TMDL reader gives them back,
for both ticks sources and a data folder that needs escaping, and the
committed kit files ``powerbi/*.pq`` as a person pastes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cryptostream.powerbi import queries
from cryptostream.powerbi.project import MODEL_DIR, Options, write_project
from tests.support import pbip

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / "tests" / "powerquery"
PARSER_PACKAGE = CHECKER / "node_modules" / "@microsoft" / "powerquery-parser" / "package.json"
# A data folder that M must escape: a quote and M's own escape opener "#(".
AWKWARD_FOLDER = 'C:\\Users\\o"brien\\#(lf) data'


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        _unavailable("node is missing: Microsoft's Power Query parser runs under Node")
    assert path is not None
    if not PARSER_PACKAGE.exists():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("npm is missing: cannot install tests/powerquery (npm ci)")
        assert npm is not None
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=CHECKER,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"npm ci in tests/powerquery failed: {result.stderr}"
    return path


def parse(node: str, texts: dict[str, str]) -> dict[str, dict[str, object] | None]:
    """name -> None (parses) or the parser's error with its 1-based line and column."""
    result = subprocess.run(
        [node, str(CHECKER / "parse.js")],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    answers: dict[str, dict[str, object] | None] = json.loads(result.stdout)
    assert set(answers) == set(texts)
    assert (result.returncode == 0) == all(a is None for a in answers.values())
    return answers


def project_m(tmp: Path) -> dict[str, str]:
    """Every M text of written projects, as the TMDL reader gives it back."""
    texts: dict[str, str] = {}
    for ticks_from in queries.TICKS_SOURCES:
        out = tmp / ticks_from
        write_project(Options(out=out, data_folder=AWKWARD_FOLDER, ticks_from=ticks_from))
        model = pbip.read_model(out / MODEL_DIR / "definition")
        for table in model.tables.values():
            for partition in table.kids("partition").values():
                texts[f"{ticks_from}: partition {table.name}"] = partition.props["source"]
        for name, expr in model.expressions.items():
            texts[f"{ticks_from}: expression {name}"] = expr.text
    return texts


def test_every_m_expression_of_the_project_parses(node: str, tmp_path: Path) -> None:
    texts = project_m(tmp_path)
    # 3 partitions and 7 shared expressions (3 parameters, 4 functions), per ticks source.
    assert len(texts) == 2 * len(queries.queries())
    errors = {name: e for name, e in parse(node, texts).items() if e is not None}
    assert errors == {}


def test_every_committed_kit_query_parses(node: str) -> None:
    files = sorted((REPO / "powerbi").glob("*.pq"))
    assert {p.stem for p in files} == {q.name for q in queries.queries()}
    texts = {p.name: p.read_text(encoding="utf-8") for p in files}
    errors = {name: e for name, e in parse(node, texts).items() if e is not None}
    assert errors == {}


def test_the_parser_rejects_broken_m_with_its_position(node: str) -> None:
    good = next(q.m for q in queries.queries() if q.name == "fnCryptoFile")
    broken = {
        # An if without its condition: the error names that line.
        "missing value": good.replace("Rows = if Present", "Rows = if", 1),
        "unterminated text": 'let\n    Source = "C:\\data\nin\n    Source',
        "no in": "let\n    Source = 1",
        "parameter without its value": "meta [IsParameterQuery = true]",
    }
    answers = parse(node, {"good": good, **broken})
    assert answers["good"] is None
    for name in broken:
        assert answers[name] is not None, name
    missing = answers["missing value"]
    line = good[: good.index("Rows = if")].count("\n") + 1
    assert missing is not None and missing["line"] == line
