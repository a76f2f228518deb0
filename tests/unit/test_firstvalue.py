from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptostream.firstvalue import FirstValues
from cryptostream.tick import Tick


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def tick(asset: str, when: str, price: str) -> Tick:
    return Tick(ts(when), asset, "S", "N", price, None, None, None)


def test_first_price_of_the_utc_day_sticks(tmp_path: Path) -> None:
    fv = FirstValues(tmp_path / "fv.json")
    assert fv.assign(tick("bitcoin", "2025-03-07T08:00:00", "100")).first_value == "100"
    assert fv.assign(tick("bitcoin", "2025-03-07T23:59:59", "120")).first_value == "100"
    assert fv.assign(tick("ethereum", "2025-03-07T12:00:00", "5")).first_value == "5"


def test_resets_at_midnight_utc(tmp_path: Path) -> None:
    fv = FirstValues(tmp_path / "fv.json")
    fv.assign(tick("bitcoin", "2025-03-07T23:59:59", "100"))
    assert fv.assign(tick("bitcoin", "2025-03-08T00:00:00", "130")).first_value == "130"
    assert fv.assign(tick("bitcoin", "2025-03-08T00:00:20", "131")).first_value == "130"


def test_survives_a_restart_once_saved(tmp_path: Path) -> None:
    fv = FirstValues(tmp_path / "fv.json")
    fv.assign(tick("bitcoin", "2025-03-07T01:00:00", "100"))
    fv.save()  # the producer saves once Kafka acknowledged the batch
    again = FirstValues(tmp_path / "fv.json")
    assert again.assign(tick("bitcoin", "2025-03-07T15:00:00", "150")).first_value == "100"


def test_a_value_never_acknowledged_is_not_remembered(tmp_path: Path) -> None:
    # Stamped, then the process is killed before Kafka acknowledged the batch.
    FirstValues(tmp_path / "fv.json").assign(tick("bitcoin", "2025-03-07T01:00:00", "100"))
    again = FirstValues(tmp_path / "fv.json")
    assert again.assign(tick("bitcoin", "2025-03-07T15:00:00", "150")).first_value == "150"


def test_stamp_keeps_a_value_already_carried(tmp_path: Path) -> None:
    fv = FirstValues(tmp_path / "fv.json")
    spooled = tick("bitcoin", "2025-03-07T01:00:00", "100").with_first_value("90")
    new = tick("bitcoin", "2025-03-07T02:00:00", "110")
    assert [t.first_value for t in fv.stamp([spooled, new])] == ["90", "110"]


def test_damaged_state_file_costs_only_the_day(tmp_path: Path) -> None:
    (tmp_path / "fv.json").write_text("{broken")
    fv = FirstValues(tmp_path / "fv.json")
    assert fv.assign(tick("bitcoin", "2025-03-07T15:00:00", "150")).first_value == "150"
