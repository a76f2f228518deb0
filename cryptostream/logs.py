"""structlog set-up: JSON lines off a terminal, readable console on one, secrets masked.

Every event is a short snake_case name plus key-value pairs, e.g.
``log.warning("api_rate_limited", retry_after=2.0)``.
"""

from __future__ import annotations

import json
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
        self._ordered: list[str] = []

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would mask innocent text; real keys are long.
        for secret in secrets:
            if len(secret) >= 4:
                self._secrets.update(_spellings(secret))
        # Longest first: a spelling that contains another is masked whole.
        self._ordered = sorted(self._secrets, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __call__(self, _logger: Any, _method: str, rendered: str | bytes) -> str:
        text = rendered.decode() if isinstance(rendered, bytes) else rendered
        return self.mask(text)


def _spellings(secret: str) -> set[str]:
    """How a secret can look in rendered output: as is, as Python's repr() shows it,
    and as JSON escapes either (quotes, backslashes, non-ASCII as \\u00e4)."""
    plain = {secret, repr(secret)[1:-1]}
    forms = set(plain)
    for form in plain:
        forms.add(json.dumps(form)[1:-1])
        forms.add(json.dumps(form, ensure_ascii=False)[1:-1])
    return {form for form in forms if form}


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
        # No local variables in tracebacks: a secret in a local, cut short by the
        # renderer's length limit, would no longer match the masker.
        processors.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
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
