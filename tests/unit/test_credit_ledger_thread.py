"""The service's credit ledger: its file I/O on a worker thread, never on the event loop.

The ledger's lock is held here by another open file (flock locks belong to the open
file, so the ledger's own flush waits for it as for another process's).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cryptostream.credits import CreditBudget
from cryptostream.credits import ledger as ledger_module
from cryptostream.credits.ledger import FLUSH_EVERY
from cryptostream.layout import CREDITS_LOCK_FILE
from tests.conftest import wait_until
from tests.unit.test_credits import DAY, MARCH, POLL_BYTES, Clock, config, on_disk


class LockHolder:
    """Holds the ledger's lock from a thread until released (or, at the latest, after
    ``limit`` seconds, so a ledger that waits for it on the loop fails the test instead
    of hanging it)."""

    def __init__(self, data_dir: Path, limit: float = 10.0) -> None:
        self.path = data_dir / CREDITS_LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._locked = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(limit,), daemon=True)
        self._thread.start()
        assert self._locked.wait(10)

    def _hold(self, limit: float) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._locked.set()
            self._release.wait(limit)
        finally:
            os.close(fd)

    @property
    def holding(self) -> bool:
        return self._thread.is_alive()

    def release(self) -> None:
        self._release.set()
        self._thread.join(10)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[LockHolder]:
    held = LockHolder(tmp_path / "data")
    yield held
    held.release()


def credits_on_disk(tmp_path: Path, key: str) -> object:
    if not (tmp_path / "data" / ledger_module.LEDGER_FILE).exists():
        return 0
    return on_disk(tmp_path).get(key, {}).get("credits")


async def tick_until(ticks: list[int], more: int) -> None:
    """Wait until the ticker has run ``more`` more times."""
    target = ticks[0] + more
    await wait_until(lambda: ticks[0] >= target, what=f"{more} ticks")


async def test_a_held_lock_stalls_no_loop_and_the_credits_go_in_once(tmp_path: Path) -> None:
    clock = Clock(MARCH + DAY)
    budget = CreditBudget(config(tmp_path), clock=clock)
    await budget.start()
    ticks = [0]

    async def ticker() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    held = LockHolder(tmp_path / "data")
    try:
        budget.charged("poll", 200, POLL_BYTES)
        clock.now += FLUSH_EVERY  # a flush is due: it waits for the lock, the loop does not
        budget.charged("poll", 200, POLL_BYTES)
        for _ in range(3):
            await tick_until(ticks, 5)
            budget.charged("poll", 200, POLL_BYTES)  # more flushes fall due meanwhile
            clock.now += FLUSH_EVERY
            assert budget.plan().used == budget.ledger.used()  # reads answer at once
        assert held.holding, "the lock was held all along"
        assert budget.ledger.used() == 10
        key = budget.ledger.key()
        assert credits_on_disk(tmp_path, key) == 0
        held.release()
        await wait_until(lambda: credits_on_disk(tmp_path, key) == 10)
        budget.charged("poll", 200, POLL_BYTES)
        await budget.aclose(asyncio.get_running_loop().time() + 10)
    finally:
        held.release()
        task.cancel()
    written = on_disk(tmp_path)[key]
    assert (written["credits"], written["calls"], written["by_kind"]) == (12, 6, {"poll": 12})
    assert budget.ledger.used() == 12, "nothing counted twice in memory either"


async def test_a_failed_write_loses_no_credit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(MARCH + DAY)
    budget = CreditBudget(config(tmp_path), clock=clock)
    await budget.start()
    real_write = ledger_module.atomic_write
    failures = [1]

    def atomic_write(path: Path, data: bytes, **options: bool) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError(28, "No space left on device")
        real_write(path, data, **options)

    monkeypatch.setattr(ledger_module, "atomic_write", atomic_write)
    with capture_logs() as logs:
        budget.charged("poll", 200, POLL_BYTES)
        budget.charged("poll", 200, POLL_BYTES)
        clock.now += FLUSH_EVERY
        budget.charged("poll", 200, POLL_BYTES)  # due: this flush fails
        await wait_until(lambda: any(e["event"] == "credit_ledger_unwritable" for e in logs))
        assert budget.ledger.used() == 6
        budget.charged("backfill", 200, 100)
        clock.now += FLUSH_EVERY
        budget.charged("poll", 200, POLL_BYTES)  # due: this one carries them all
        await budget.aclose(asyncio.get_running_loop().time() + 10)
    assert failures == [0]
    written = on_disk(tmp_path)[budget.ledger.key()]
    assert (written["credits"], written["calls"]) == (9, 5)
    assert written["by_kind"] == {"poll": 8, "backfill": 1}
    assert budget.ledger.used() == 9


async def test_spent_marks_set_and_cleared_while_the_lock_is_held(
    tmp_path: Path, holder: LockHolder
) -> None:
    clock = Clock(MARCH + DAY)
    cfg = config(tmp_path)
    budget = CreditBudget(cfg, clock=clock)
    await budget.start()
    budget.spent_by_api("Monthly credit limit reached")  # its flush waits for the lock
    assert budget.refusal("poll") is not None
    clock.now += 3601
    assert budget.refusal("poll") is None  # the hourly probe goes out
    budget.answered()  # CoinCap answers: the mark is gone at once, lock or not
    assert budget.refusal("poll") is None
    holder.release()
    await budget.aclose(asyncio.get_running_loop().time() + 10)
    # In the file too: a restart does not wait for a probe.
    assert CreditBudget(cfg, clock=clock).refusal("poll") is None
    assert on_disk(tmp_path)[budget.ledger.key()]["spent_at"] is None


async def test_a_flush_stuck_at_the_deadline_is_left_behind(
    tmp_path: Path, holder: LockHolder
) -> None:
    clock = Clock(MARCH + DAY)
    budget = CreditBudget(config(tmp_path), clock=clock)
    await budget.start()
    budget.charged("poll", 200, POLL_BYTES)
    budget.close()  # a source stopping: handed to the thread, which waits for the lock
    with capture_logs() as logs:
        await budget.aclose(asyncio.get_running_loop().time() + 0.2)
    event = next(e for e in logs if e["event"] == "credit_ledger_unwritable")
    assert event["credits"] == 2 and "deadline" in event["error"]


def test_a_failed_directory_sync_after_the_rename_counts_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename put the credits in the file: an error syncing the folder afterwards
    is reported, and the credits are not written a second time."""
    clock = Clock(MARCH + DAY)
    budget = CreditBudget(config(tmp_path, storage__fsync="true"), clock=clock)
    real_fsync_dir = ledger_module.fsync_dir
    failures = [1]

    def fsync_dir(path: Path) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError(5, "Input/output error")
        real_fsync_dir(path)

    for _ in range(5):
        budget.charged("poll", 200, POLL_BYTES)  # the first one's sync writes the file
    monkeypatch.setattr(ledger_module, "fsync_dir", fsync_dir)
    with capture_logs() as logs:
        budget.close()  # the folder sync fails after the rename
        budget.close()  # nothing left to add
    assert failures == [0]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "credit_ledger_dir_fsync_failed"
    ]
    assert on_disk(tmp_path)[budget.ledger.key()]["credits"] == 10
    assert budget.ledger.used() == 10


def test_an_interrupted_write_keeps_its_credits_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while the write waits for the lock (a backfill's direct flush) must not
    throw the unwritten credits away."""
    clock = Clock(MARCH + DAY)
    budget = CreditBudget(config(tmp_path), clock=clock)
    real_commit = budget.ledger._commit
    interrupts = [1]

    def commit(*args: object) -> object:
        if interrupts[0]:
            interrupts[0] -= 1
            raise KeyboardInterrupt
        return real_commit(*args)  # type: ignore[arg-type]

    for _ in range(4):
        budget.charged("backfill", 200, 100)  # the first one's sync writes the file
    monkeypatch.setattr(budget.ledger, "_commit", commit)
    with pytest.raises(KeyboardInterrupt):
        budget.close()
    assert budget.ledger.used() == 4
    budget.close()
    assert on_disk(tmp_path)[budget.ledger.key()]["credits"] == 4
    assert budget.ledger.used() == 4


async def test_a_ledger_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    """An unreadable file (here: a folder in its place) is not a count of zero."""
    budget = CreditBudget(config(tmp_path), clock=Clock(MARCH + DAY))
    (tmp_path / "data" / ledger_module.LEDGER_FILE).mkdir(parents=True)
    with pytest.raises(OSError):
        await budget.start()
