"""attempt_then_retry: the declared policy's attempts, waits and log lines, and no
garbage in reference cycles when the first attempt succeeds (once per batch)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import tenacity

from cryptostream.retry import attempt_then_retry


class Flaky(Exception):
    pass


def policy_with(slept: list[tuple[int, str]]) -> tenacity.AsyncRetrying:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        slept.append((state.attempt_number, str(exc)))

    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(Flaky),
        wait=tenacity.wait_none(),
        stop=tenacity.stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )


async def test_a_first_success_builds_no_policy() -> None:
    def no_policy() -> tenacity.AsyncRetrying:
        raise AssertionError("the policy was built for a call that succeeded")

    async def call() -> str:
        return "done"

    assert await attempt_then_retry(call, no_policy, Flaky) == ("done", 1)


async def test_failures_go_through_the_policy_as_its_own_attempts() -> None:
    outcomes: Iterator[str | None] = iter(["first", "second", None])
    calls = 0
    slept: list[tuple[int, str]] = []

    async def call() -> int:
        nonlocal calls
        calls += 1
        if (error := next(outcomes)) is not None:
            raise Flaky(error)
        return calls

    result, attempts = await attempt_then_retry(call, lambda: policy_with(slept), Flaky)
    # The first failure is the policy's first attempt: logged as attempt 1, not made twice.
    assert (result, attempts, calls) == (3, 3, 3)
    assert slept == [(1, "first"), (2, "second")]


async def test_other_errors_are_not_retried() -> None:
    slept: list[tuple[int, str]] = []

    async def call() -> None:
        raise ValueError("not retryable")

    with pytest.raises(ValueError, match="not retryable"):
        await attempt_then_retry(call, lambda: policy_with(slept), Flaky)
    assert slept == []


async def test_successful_calls_leave_no_garbage_in_cycles() -> None:
    async def call() -> None:
        return None

    slept: list[tuple[int, str]] = []
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(200):
            await attempt_then_retry(call, lambda: policy_with(slept), Flaky)
        gc.collect()
        cyclic = len(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    # A tenacity loop per call left ~30 objects in cycles each (6,567 for 200 loops).
    assert cyclic == 0
