"""The consumer's view of a reset topic: the setting, and lag that never hides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptostream.config import ConfigError, load_config
from cryptostream.consumer import partition_lag


def test_lag_counts_every_message_when_the_stored_offset_is_beyond_the_end() -> None:
    assert partition_lag(end=120, next_offset=100) == 20
    assert partition_lag(end=100, next_offset=100) == 0
    # A topic reset under an offset of 5,000: its 40 messages are all unread.
    assert partition_lag(end=40, next_offset=5000) == 40


@pytest.mark.parametrize(
    ("value", "policy"), [(None, "follow"), ("STOP", "stop"), ("follow", "follow")]
)
def test_on_topic_reset_setting(tmp_path: Path, value: str | None, policy: str) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    env = {} if value is None else {"CRYPTOSTREAM_KAFKA__ON_TOPIC_RESET": value}
    assert (
        load_config(empty, {"CRYPTOSTREAM_SOURCE__NAME": "demo", **env}).kafka.on_topic_reset
        == policy
    )


def test_an_unknown_reset_policy_is_a_configuration_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    env = {"CRYPTOSTREAM_SOURCE__NAME": "demo", "CRYPTOSTREAM_KAFKA__ON_TOPIC_RESET": "ignore"}
    with pytest.raises(ConfigError, match=r"ON_TOPIC_RESET.*follow, stop"):
        load_config(empty, env)
