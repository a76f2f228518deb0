from __future__ import annotations

import csv
import io

import pytest

from cryptostream.csvrow import HEADER, csv_line, text_cell
from cryptostream.tick import Tick


def parse(line: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(line)))
    assert len(rows) == 1
    return rows[0]


def test_header_is_the_contract() -> None:
    assert HEADER == "timestamp,id,symbol,name,priceUsd,changePercent24Hr,firstValue,vwap24Hr\n"


def test_line_has_eight_columns_and_exact_decimals() -> None:
    tick = Tick(
        1741381815.4672363,
        "bitcoin",
        "BTC",
        "Bitcoin",
        "86466.98725786564348",
        "-2.72",
        "86000.0",
        None,
    )
    line = csv_line(tick)
    assert line.endswith("\n") and line.count("\n") == 1
    assert parse(line) == [
        "1741381815.4672363",
        "bitcoin",
        "BTC",
        "Bitcoin",
        "86466.98725786564348",
        "-2.72",
        "86000.0",
        "",
    ]


@pytest.mark.parametrize(
    "evil",
    [
        '=HYPERLINK("http://x")',
        "+1+2",
        "-2+3",
        "@SUM(A1)",
        "\tTab",
        "\rCR",
        "a\nb",
        'q"uote',
        "com,ma",
        "=cmd|' /C calc'!A0",
        "\r\n=1",
    ],
)
def test_text_cells_are_neutralised(evil: str) -> None:
    tick = Tick(1.5, "x", evil, evil, "1", "-0.5", "1", "1")
    fields = parse(csv_line(tick))
    assert len(fields) == 8
    for cell in (fields[2], fields[3]):
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert "\n" not in cell and "\r" not in cell
    assert fields[5] == "-0.5"  # numeric cells stay plain numbers


def test_plain_text_is_untouched() -> None:
    assert text_cell("Binance Coin") == "Binance Coin"
    assert text_cell("=1") == "'=1"
    assert text_cell("a,b") == '"a,b"'
