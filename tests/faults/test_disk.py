"""The data directory fills up (a small tmpfs): guarantee 4.

The sink must not commit past the last durable row, must say so (log line,
metric, /readyz 503), and must resume by itself, losing nothing, once space
returns. The consumer stays blocked longer than ``max.poll.interval.ms``
meanwhile, so the rebalance that follows is part of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port, unique, wait_until
from tests.faults.harness import (
    ServiceProcess,
    assert_all_files_exact,
    audit,
    committed_offsets,
    file_size,
    read_topic,
    row_count,
    service_env,
    sink_state,
    state_offsets,
)

pytestmark = pytest.mark.faults

POLL_LIMIT = 4.0  # kafka.max_poll_interval: the full disk outlasts it


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        for _ in range(50):
            umount = subprocess.run(["umount", str(path)], capture_output=True, check=False)
            if umount.returncode == 0:
                break
            time.sleep(0.1)  # a child may still hold a file open for a moment
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system refuses even one more byte."""
    written = 0
    with path.open("wb", buffering=0) as fh:
        chunk = 1 << 16
        while chunk:
            try:
                written += fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2
    return written


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.json()


async def disk_full_errors(port: int) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('cryptostream_sink_errors_total{kind="disk_full"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.timeout(240)
async def test_disk_full_holds_the_commit_reports_and_resumes(fault_kafka, tmp_path: Path) -> None:
    bootstrap = fault_kafka.bootstrap_servers
    topic, group = unique("disk"), unique("disk-group")
    port = free_port()
    with small_tmpfs(tmp_path / "data") as data_dir:
        csv_path = data_dir / "crypto_data.csv"
        svc = ServiceProcess(
            service_env(
                bootstrap=bootstrap,
                topic=topic,
                group=group,
                data_dir=data_dir,
                extra={
                    "CRYPTOSTREAM_DEMO__RATE": "300",
                    "CRYPTOSTREAM_WEB__PORT": str(port),
                    "CRYPTOSTREAM_KAFKA__MAX_POLL_INTERVAL": str(POLL_LIMIT),
                },
            ),
            tmp_path,
        )
        try:
            await svc.start()
            await wait_until(lambda: row_count(csv_path) >= 600, 60, "rows before the disk fills")
            filled = await asyncio.to_thread(fill, data_dir / "filler.bin")

            # Reported: /readyz 503 naming the cause, the metric, one log line.
            async def not_ready() -> bool:
                status, body = await readyz(port)
                return status == 503 and body.get("sink") == "disk_full"

            for _ in range(300):
                if await not_ready():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"/readyz never said disk_full: {await readyz(port)}")
            assert await disk_full_errors(port) >= 1

            # Held: nothing is committed past the last durable row while the disk is full,
            # not even after the consumer overran max.poll.interval and was rebalanced.
            held = state_offsets(data_dir)
            await asyncio.sleep(2 * POLL_LIMIT + 2)
            assert state_offsets(data_dir) == held
            recorded = sink_state(data_dir)["files"]["crypto_data.csv"]
            assert file_size(csv_path) == recorded, "a failed batch left rows behind"
            kafka_committed = await committed_offsets(bootstrap, group)
            assert all(kafka_committed.get(p, 0) <= o for p, o in held.items()), kafka_committed
            failures = [e for e in svc.events("sink_write_failed") if e.get("kind") == "disk_full"]
            assert len(failures) == 1, "the failure is logged once, then counted"
            errors_while_full = await disk_full_errors(port)

            # Space returns: it resumes by itself and catches up.
            (data_dir / "filler.bin").unlink()
            for _ in range(600):
                if (await readyz(port))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"/readyz did not recover: {await readyz(port)}")
            rows = row_count(csv_path)
            await wait_until(lambda: row_count(csv_path) >= rows + 600, 60, "rows after recovery")
            assert svc.events("sink_recovered")
            assert await svc.stop() == 0, svc.tail()
        finally:
            await svc.ensure_stopped()

        content = await read_topic(bootstrap, topic)
        figures = audit("disk full", data_dir, content)
        figures.notes.update(
            filler_bytes=filled,
            disk_full_errors=int(errors_while_full),
            readyz_while_full=503,
            task_failures=len(svc.events("task_failed")),
        )
        figures.report()
        assert_all_files_exact(figures)
        assert figures.notes["task_failures"] == 0
