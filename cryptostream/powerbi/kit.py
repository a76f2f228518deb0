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
    lines = textwrap.wrap(text, 86, break_on_hyphens=False, break_long_words=False)
    return "".join(f"// {line}\n" for line in lines)


def kit_files() -> dict[str, str]:
    """File name in ``powerbi/`` -> text."""
    files = {
        f"{q.name}.pq": _comment(f"{q.name} ({_KIND[q.kind]}): {q.doc}") + q.m + "\n"
        for q in queries()
    }
    blocks = [
        _comment(
            f"Measures of the report, on the {TICKS} query. In Power BI Desktop: Modeling > "
            "New measure, paste one definition at a time. Written by "
            "`python -m cryptostream.powerbi.kit` from cryptostream/powerbi/model.py."
        )
    ]
    blocks += [
        _comment(m.doc) + f"{m.name} =\n" + textwrap.indent(m.dax, "    ") + "\n"
        for m in measures()
    ]
    files["measures.dax"] = "\n".join(blocks)
    return files


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("powerbi")
    for name, text in kit_files().items():
        (target / name).write_bytes(text.encode("utf-8"))
        sys.stdout.write(f"{target / name}\n")
