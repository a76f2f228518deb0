"""structlog set-up: JSON lines off a terminal, readable console on one, secrets masked.

Every event is a short snake_case name plus key-value pairs, e.g.
``log.warning("api_rate_limited", retry_after=2.0)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

MASK = "**********"


class SecretMasker:
    """A structlog processor that replaces secret values anywhere in the rendered event.

    It runs last, on the final text, so secrets are masked in messages,
    values, exception texts and tracebacks alike.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would mask innocent text; real keys are long.
        self._secrets.update(s for s in secrets if len(s) >= 4)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __call__(self, _logger: Any, _method: str, rendered: str | bytes) -> str:
        text = rendered.decode() if isinstance(rendered, bytes) else rendered
        return self.mask(text)


masker = SecretMasker()


def _drop_none(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {k: v for k, v in event.items() if v is not None}


def configure(
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and the stdlib root logger, for library warnings)."""
    out = stream or sys.stdout
    masker.add(secrets)
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_none,
    ]
    if use_json:
        processors.append(structlog.processors.dict_tracebacks)
    processors += [renderer, masker]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Library loggers (aiokafka, aiohttp) go through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *processors[1:],
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # aiokafka is chatty at INFO about every (re)connection; its warnings matter.
    root.setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
