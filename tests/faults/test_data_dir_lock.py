"""Two services on one data directory (a compose stack and a local run on ``./data``).

Two writers would interleave appends and overwrite each other's state. The
second process must refuse to start — exit 2, one line naming the directory —
and the first must go on untouched. The lock is the operating system's
(``flock``), so a process killed with SIGKILL releases it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import unique, wait_until
from tests.faults.harness import (
    ServiceProcess,
    assert_all_files_exact,
    audit,
    read_topic,
    row_count,
    service_env,
)

pytestmark = pytest.mark.faults


@pytest.mark.timeout(180)
async def test_a_second_process_on_the_same_data_dir_refuses_to_start(
    fault_kafka, tmp_path: Path
) -> None:
    bootstrap = fault_kafka.bootstrap_servers
    topic, data_dir = unique("lock"), tmp_path / "data"
    csv_path = data_dir / "crypto_data.csv"
    env = service_env(
        bootstrap=bootstrap,
        topic=topic,
        group=unique("lock-group"),
        data_dir=data_dir,
        extra={"CRYPTOSTREAM_DEMO__RATE": "200"},
    )
    first = ServiceProcess(env, tmp_path, "first")
    second = ServiceProcess(env, tmp_path, "second")
    try:
        await first.start()
        await wait_until(lambda: row_count(csv_path) >= 200, 60, "rows of the first process")
        await second.start()
        await wait_until(lambda: not second.running, 30, "the second process to exit")
        assert second.proc is not None
        refused_with = second.proc.returncode
        refusal = second.output(this_run=True)
        rows = row_count(csv_path)
        await wait_until(lambda: row_count(csv_path) >= rows + 200, 30, "the first to go on")
        assert first.running, first.tail()

        # A crash releases the lock: after SIGKILL of the first, the second starts.
        await first.kill()
        await second.start()
        await second.wait_event("service_started")
        rows = row_count(csv_path)
        await wait_until(lambda: row_count(csv_path) >= rows + 200, 60, "the second to write")
        assert await second.stop() == 0, second.tail()
    finally:
        await first.ensure_stopped()
        await second.ensure_stopped()

    assert refused_with == 2, refusal
    # One line on stderr, naming the directory; nothing else (no traceback).
    assert len(refusal.strip().splitlines()) == 1, refusal
    assert str(data_dir) in refusal and "another cryptostream process" in refusal, refusal
    content = await read_topic(bootstrap, topic)
    figures = audit("two processes", data_dir, content)
    figures.notes.update(second_exit_code=refused_with)
    figures.report()
    assert_all_files_exact(figures)
