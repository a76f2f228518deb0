"""Fixtures of the fault suite: Kafka clusters this run starts (and may kill).

The suite never uses ``$KAFKA_BOOTSTRAP_SERVERS``: it kills and restarts
brokers, so it always starts its own on 127.0.0.1 (free ports).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import kafkalocal
from tests.faults.harness import FIGURES

# Lets the kill and idle cases use a 2 s consumer session (the broker's floor is 6 s),
# so a restarted service gets its partition back quickly.
FAST_GROUPS = {"group.min.session.timeout.ms": "1000"}


def start_cluster(nodes: int, extra_props: dict[str, str] | None = None) -> Any:
    props = {**FAST_GROUPS, **(extra_props or {})}
    cluster = kafkalocal.KafkaCluster(nodes=nodes, extra_props=props)
    cluster.start(timeout=300)
    return cluster


@pytest.fixture(scope="session")
def fault_kafka() -> Iterator[Any]:
    """One broker for the cases that break the service, the disk or the data."""
    cluster = start_cluster(1)
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("fault suite figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
