"""The fault suite's audit itself: it must see a row that is wrong in any column
(firstValue by its own rule: the price of the first row of that asset and day).

No Kafka needed: the topic's content is built the way :func:`read_topic` builds it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.faults.harness import HEADER, TopicContent, audit, key_of, message_row

MESSAGE = {
    "timestamp": 1_741_381_815.25,
    "id": "bitcoin",
    "symbol": "=BTC",
    "name": 'Bit\tcoin, "the" first',
    "priceUsd": "86466.98",
    "changePercent24Hr": -2.5,
    # The producer's view; the file's firstValue follows the rule, whatever this says.
    "firstValue": "86000.5",
    "vwap24Hr": None,
}
GOOD_ROW = '1741381815.25,bitcoin,\'=BTC,"Bit coin, ""the"" first",86466.98,-2.5,86466.98,\n'


def content_of(*messages: dict[str, object]) -> TopicContent:
    content = TopicContent([], [])
    for m in messages:
        row = message_row(orjson.dumps(m))
        assert row is not None
        key = key_of(row[1], row[0], row[4])
        content.ticks.append(key)
        content.rows.setdefault(key, []).append(row)
    return content


def write(data_dir: Path, *rows: str) -> None:
    (data_dir / "crypto_data.csv").write_bytes(HEADER + "".join(rows).encode())
    (data_dir / "crypto_last_values.csv").write_bytes(HEADER + rows[-1].encode())


def test_a_row_equal_to_its_message_is_right(tmp_path: Path) -> None:
    write(tmp_path, GOOD_ROW)
    figures = audit("audit", tmp_path, content_of(MESSAGE))
    assert (figures.lost, figures.duplicated, figures.torn, figures.wrong) == (0, 0, 0, 0)
    figures.assert_exact()


@pytest.mark.parametrize(
    "bad_row",
    [
        # symbol not neutralised, name without its tab replaced, change, vwap
        '1741381815.25,bitcoin,=BTC,"Bit coin, ""the"" first",86466.98,-2.5,86466.98,\n',
        '1741381815.25,bitcoin,\'=BTC,"Bit coin, ""a"" first",86466.98,-2.5,86466.98,\n',
        '1741381815.25,bitcoin,\'=BTC,"Bit coin, ""the"" first",86466.98,2.5,86466.98,\n',
        '1741381815.25,bitcoin,\'=BTC,"Bit coin, ""the"" first",86466.98,-2.5,86466.98,1\n',
    ],
)
def test_a_row_wrong_in_any_column_is_counted(tmp_path: Path, bad_row: str) -> None:
    write(tmp_path, bad_row)
    figures = audit("audit", tmp_path, content_of(MESSAGE))
    assert (figures.lost, figures.duplicated, figures.torn) == (0, 0, 0)
    assert figures.wrong == 1
    with pytest.raises(AssertionError, match="wrong=1"):
        figures.assert_exact()


def test_a_first_value_that_is_not_the_days_first_price_is_counted(tmp_path: Path) -> None:
    # The message's own firstValue (86000.5) is not the day's first price in the file.
    write(tmp_path, GOOD_ROW.replace("-2.5,86466.98,", "-2.5,86000.5,"))
    figures = audit("audit", tmp_path, content_of(MESSAGE))
    assert figures.wrong == 0
    assert figures.notes["first_value_wrong"] == 2  # in crypto_data.csv and last values


def test_messages_outside_the_time_range_are_not_ticks() -> None:
    for ts in (1.7e12, -1.0, 0, 1_000_000_000, 1e20):
        assert message_row(orjson.dumps({**MESSAGE, "timestamp": ts})) is None, ts
