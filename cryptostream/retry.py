"""What every declared retry policy logs: the first failure of an episode once, as a
warning; later attempts only at debug level (the metrics count every one). And
:func:`attempt_then_retry`, for a call made once per batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import tenacity

from cryptostream.logs import connect_failures, get_logger

log = get_logger(__name__)

_T = TypeVar("_T")


async def attempt_then_retry(
    call: Callable[[], Awaitable[_T]],
    policy: Callable[[], tenacity.AsyncRetrying],
    errors: type[BaseException] | tuple[type[BaseException], ...],
) -> tuple[_T, int]:
    """``call()`` once; if it raises one of ``errors``, again under ``policy()`` (whose
    ``retry`` must take those errors) until it succeeds. Returns its result and the
    number of attempts.

    The same attempts, waits and log lines as ``policy()`` alone (its first attempt
    is the failure already seen, handed to it without calling again), but no
    tenacity objects on the way when the first attempt succeeds: a retry loop per
    batch made some 30 objects in reference cycles each, which only the garbage
    collector frees — at 1,000 ticks/s some 8,000 a second, freed in pauses of
    up to ~90 ms that held the GIL (docs/performance.md).
    """
    try:
        return await call(), 1
    except errors as exc:
        failed: BaseException | None = exc
    async for attempt in policy():
        with attempt:
            if failed is not None:
                seen, failed = failed, None
                raise seen
            result = await call()
    return result, attempt.retry_state.attempt_number


def log_retries(
    event: str, fields: Callable[[], dict[str, Any]] | None = None
) -> Callable[[tenacity.RetryCallState], None]:
    """A tenacity ``before_sleep`` hook that says ``event`` once per failure episode.

    Each line carries the error, its ``kind`` (when the exception has one), the
    wait before the next attempt, and whatever ``fields()`` adds.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        values: dict[str, Any] = {
            "kind": getattr(exc, "kind", None),
            "error": str(exc) or type(exc).__name__,
            "retry_in": round(wait, 2),
            **(fields() if fields else {}),
        }
        if state.attempt_number == 1:
            log.warning(event, **values)
        else:
            log.debug(event, attempt=state.attempt_number, **values)

    return before_sleep


def log_kafka_retries(
    event: str,
    client: str,
    bootstrap: str,
    unreachable: Callable[[BaseException], bool],
    fields: Callable[[], dict[str, Any]] | None = None,
) -> Callable[[tenacity.RetryCallState], None]:
    """Like :func:`log_retries`, but a Kafka that cannot be reached is said at every
    back-off step as ``kafka_unreachable`` (a warning naming the next attempt's time):
    aiokafka's own "Unable connect" lines are kept at debug (logs.KafkaConnectFailures),
    so this is the one line a user sees per step. Other failures log ``event``."""
    others = log_retries(event, fields)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None or not unreachable(exc):
            others(state)
            return
        wait = state.next_action.sleep if state.next_action else 0.0
        retry_at = datetime.now(UTC) + timedelta(seconds=wait)
        log.warning(
            "kafka_unreachable",
            client=client,
            bootstrap_servers=bootstrap,
            attempt=state.attempt_number,
            error=str(exc) or type(exc).__name__,
            cause=connect_failures.recent(),
            retry_in=round(wait, 2),
            retry_at=retry_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            **(fields() if fields else {}),
        )

    return before_sleep
