"""The step-by-step kit in ``powerbi/``: the queries as ``.pq`` files and ``measures.dax``.

Written from the same definitions as the project, so the two cannot drift:
``python -m cryptostream.powerbi.kit [DIR]`` rewrites them (default ``powerbi``)
and a test checks that the committed files are what this module writes.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from cryptostream.powerbi.model import TICKS, measures
from cryptostream.powerbi.queries import queries

_KIND = {"parameter": "parameter", "function": "function", "table": "query, loaded as a table"}


def _comment(text: str) -> str:
    return (
        "\n".join(
            "// " + line
            for line in textwrap.wrap(text, 86, break_on_hyphens=False, break_long_words=False)
        )
        + "\n"
    )


def header(name: str, kind: str, doc: str) -> str:
    return _comment(f"{name} ({_KIND[kind]}): {doc}")


def kit_files() -> dict[str, str]:
    """File name in ``powerbi/`` -> text."""
    files = {f"{q.name}.pq": header(q.name, q.kind, q.doc) + q.m + "\n" for q in queries()}
    blocks = [
        _comment(
            f"Measures of the report, on the {TICKS} query. In Power BI Desktop: Modeling > "
            "New measure, paste one definition at a time. Written by "
            "`python -m cryptostream.powerbi.kit` from cryptostream/powerbi/model.py."
        )
    ]
    blocks += [_comment(m.doc) + f"{m.name} =\n" + _indent(m.dax) for m in measures()]
    files["measures.dax"] = "\n".join(blocks)
    return files


def _indent(dax: str) -> str:
    return "".join("    " + line + "\n" for line in dax.splitlines())


def write_kit(folder: Path) -> list[Path]:
    written = []
    for name, text in kit_files().items():
        path = folder / name
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("powerbi")
    for path in write_kit(target):
        sys.stdout.write(f"{path}\n")
