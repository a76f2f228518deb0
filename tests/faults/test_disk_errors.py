"""The disk fails one call at a time under the running service: fsync, rename, truncate.

The sink's commit point is the rename of its state file. Before it, a failure
rolls the batch back and the batch is retried; after it, the batch counts (a
failed directory fsync is reported, never rolled back under a state that
already counts the rows). A rollback that cannot cut the files back makes the
sink recover from its state, as on a restart, before it writes again. Errors
are injected in the service's own process (``tests/faults/inject.py``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ConfigFactory, wait_until
from tests.faults.harness import (
    assert_all_files_exact,
    audit,
    end_offsets,
    read_topic,
    row_count,
    state_offsets,
)
from tests.faults.inject import DiskFaults, ends_with

pytestmark = pytest.mark.faults


@dataclass
class Case:
    name: str
    faults: list[tuple[str, Callable[[str], bool], int, int | None]]
    #: Stop the service while the fault still fires, then start it again without it.
    stop_while_failing: bool = False


CASES = [
    Case(
        "fsync crypto_data.csv EIO x3",
        [("fsync_file", ends_with("/crypto_data.csv"), errno.EIO, 3)],
    ),
    Case(
        "fsync daily file EINVAL x3",
        [("fsync_file", lambda p: "/history/ticks/" in p, errno.EINVAL, 3)],
    ),
    Case("rename state EIO x3", [("replace", ends_with("/sink_state.json"), errno.EIO, 3)]),
    Case(
        "fsync state dir EIO, stop",
        [("fsync_dir", ends_with("/.cryptostream"), errno.EIO, None)],
        stop_while_failing=True,
    ),
    Case(
        "failed rollback (ftruncate EIO)",
        [
            ("fsync_file", ends_with("/crypto_data.csv"), errno.EIO, 1),
            ("ftruncate", ends_with("/crypto_data.csv"), errno.EIO, 1),
        ],
    ),
]


def env() -> dict[str, str]:
    return {
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_DEMO__RATE": "300",
        "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "2",
        "CRYPTOSTREAM_WEB__DASHBOARD": "false",
        "CRYPTOSTREAM_SHUTDOWN__TIMEOUT": "5",
    }


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_failing_disk_call_loses_doubles_and_tears_nothing(
    make_config: ConfigFactory,
    run_service: Any,
    fault_kafka: Any,
    monkeypatch: pytest.MonkeyPatch,
    case: Case,
) -> None:
    bootstrap = fault_kafka.bootstrap_servers
    config = make_config(bootstrap=bootstrap, env=env())
    disk = DiskFaults.install(monkeypatch)
    running = await run_service(config)
    data_dir: Path = running.data_dir
    csv_path = data_dir / "crypto_data.csv"
    await wait_until(lambda: row_count(csv_path) >= 300, 60, "rows before the fault")
    faults = [disk.add(op, match, err, times=times) for op, match, err, times in case.faults]
    await wait_until(
        lambda: all(f.fired >= (f.times or 3) for f in faults), 60, "every fault to fire"
    )
    codes = []
    if case.stop_while_failing:
        codes.append(await running.stop())
        disk.clear()
        running = await run_service(config)
    else:
        disk.clear()
    rows = row_count(csv_path)
    await wait_until(lambda: row_count(csv_path) >= rows + 300, 60, "rows after the fault")
    failed = running.service.failed
    ends = await end_offsets(bootstrap, config.kafka.topic)
    await wait_until(
        lambda: all(state_offsets(data_dir).get(p, 0) >= e for p, e in ends.items()),
        30,
        "the sink to catch up",
    )
    codes.append(await running.stop())

    content = await read_topic(bootstrap, config.kafka.topic)
    figures = audit(f"disk: {case.name}", data_dir, content)
    figures.notes.update(
        faults_fired=sum(f.fired for f in faults),
        exit_codes=",".join(map(str, codes)),
        task_failures=int(failed is not None),
    )
    figures.report()
    assert_all_files_exact(figures)
    assert failed is None
