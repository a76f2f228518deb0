"""The logging set-up of ``logs.configure``: what library log lines look like."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cryptostream import logs
from tests.unit.test_secret_masker import restore_logging  # noqa: F401 - a fixture

COORDINATOR = "aiokafka.consumer.group_coordinator"


def levels(out: io.StringIO) -> list[tuple[str, str]]:
    return [(e["level"], e["event"]) for e in map(json.loads, out.getvalue().splitlines())]


@pytest.mark.usefixtures("restore_logging")
def test_a_coordinator_still_starting_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh broker answers "coordinator not available" until its offsets topic is
    ready: on a healthy start that is info, not the error aiokafka makes of it."""
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    coordinator = logging.getLogger(COORDINATOR)
    coordinator.error(
        "Group Coordinator Request failed: %s",
        "[Error 15] GroupCoordinatorNotAvailableError",
    )
    coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 1, "g")
    coordinator.error("Error sending JoinGroupRequest: %s", "[Error 7] RequestTimedOutError")
    logging.getLogger("aiokafka.conn").error("Unable connect to node with id %s", 2)
    assert levels(out) == [
        ("info", "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"),
        ("info", "Marking the coordinator dead (node 1)for group g."),
        ("error", "Error sending JoinGroupRequest: [Error 7] RequestTimedOutError"),
        ("error", "Unable connect to node with id 2"),
    ]
    # After the start-up window the same answers keep their level (a broker lost later).
    clock = logs.time.monotonic() + logs.CoordinatorWarmUp.WINDOW + 1
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock)
    out.truncate(0)
    out.seek(0)
    coordinator.error(
        "Group Coordinator Request failed: %s",
        "[Error 15] GroupCoordinatorNotAvailableError",
    )
    assert levels(out) == [
        ("error", "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError")
    ]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("level", ["info", "debug"])
def test_aiokafka_connect_failures_are_debug_lines(level: str) -> None:
    """aiokafka says "Unable connect" several times a second while a broker is away; the
    retry policies say it once per back-off step (kafka_unreachable), so aiokafka's
    line is debug: shown only at log level debug. Other aiokafka errors keep theirs."""
    out = io.StringIO()
    logs.configure(level, "json", stream=out)
    client = logging.getLogger("aiokafka")
    client.error('Unable connect to "%s:%s": %s', "kafka", 9092, "[Errno 111] refused")
    client.error("Unable connect to node with id %s: %s", 1, "timeout")
    client.error("Unexpected error in sender routine")
    shown = [("debug", 'Unable connect to "kafka:9092": [Errno 111] refused')]
    shown += [("debug", "Unable connect to node with id 1: timeout")]
    assert levels(out) == (shown if level == "debug" else []) + [
        ("error", "Unexpected error in sender routine")
    ]
