"""What every declared retry policy logs: the first failure of an episode once, as a
warning; later attempts only at debug level (the metrics count every one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tenacity

from cryptostream.logs import get_logger

log = get_logger(__name__)


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
