"""The TMDL reader used on the generated model rejects what the syntax does not allow."""

from __future__ import annotations

import pytest

from cryptostream.powerbi import model, queries
from tests.support.pbip import TmdlError, read_tmdl

GOOD = """\
table t
\tlineageTag: 1

\tmeasure 'A b' = COUNTROWS ( t )
\t\tformatString: 0

\tcolumn x
\t\tdataType: double
\t\tsummarizeBy: none
\t\tsourceColumn: x

\t\tannotation SummarizationSetBy = User

\tpartition t = m
\t\tmode: import
\t\tsource =
\t\t\t\tlet
\t\t\t\t    A = 1
\t\t\t\tin
\t\t\t\t    A
"""


def test_a_good_table_reads() -> None:
    (table,) = read_tmdl(GOOD)
    assert table.kind == "table" and table.name == "t"
    assert set(table.kids("measure")) == {"A b"}
    assert table.kids("partition")["t"].props["source"] == "let\n    A = 1\nin\n    A"


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (GOOD.replace("\tcolumn x", "    column x"), "indentation"),
        (GOOD.replace("\t\tdataType: double", "\t\t\tdataType: double"), "indentation"),
        (GOOD.replace("measure 'A b'", "measure A b"), "not TMDL"),
        (GOOD.replace("\tcolumn x", "\tcolum x"), "not TMDL"),
        (GOOD.replace("\t\t\t\tlet", "\t\t\tlet"), "without an M expression"),
        (GOOD.split("\t\tsource =")[0] + "\t\tsource =\n", "without an M expression"),
        (GOOD.replace("\tcolumn x", "\tlevel x"), "cannot be inside"),
        (GOOD.replace("\t\tmode: import", "\t\tmode: import\n\t\tmode: import"), "twice"),
    ],
)
def test_broken_tmdl_is_rejected(broken: str, why: str) -> None:
    with pytest.raises(TmdlError, match=why):
        read_tmdl(broken)


def test_every_generated_file_reads() -> None:
    for path, text in model.tmdl_files(queries.queries()).items():
        assert read_tmdl(text, path), path
