"""structlog set-up: JSON lines off a terminal, readable console on one, secrets masked.

Every event is a short snake_case name plus key-value pairs, e.g.
``log.warning("api_rate_limited", retry_after=2.0)``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
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
        self._pattern: re.Pattern[str] | None = None

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would mask innocent text; real keys are long.
        self._secrets.update(s for s in secrets if len(s) >= 4)
        if not self._secrets:
            return
        # Longest first: of two secrets where one contains the other, the longer is
        # masked whole (the regex takes the first alternative that matches).
        ordered = sorted(self._secrets, key=lambda s: (-len(s), s))
        alternatives: list[str] = []
        firsts = {"%"}
        for secret in ordered:
            alternatives.append(_url_pattern(secret))
            escaped = sorted(_escaped(secret), key=len, reverse=True)
            alternatives.extend(re.escape(form) for form in escaped)
            firsts.update(form[0] for form in (secret, *escaped))
        # The look-ahead lets the scan skip, in C, every position no spelling can
        # start at: about three times faster on a typical log line.
        first = "[" + "".join(re.escape(c) for c in sorted(firsts)) + "]"
        self._pattern = re.compile(f"(?={first})(?:{'|'.join(alternatives)})")

    def mask(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def __call__(self, _logger: Any, _method: str, rendered: str | bytes) -> str:
        return self.mask(rendered.decode() if isinstance(rendered, bytes) else rendered)


def _escaped(secret: str) -> set[str]:
    """How a renderer can escape a secret: as Python's repr() shows it, and as JSON
    escapes it or its repr (quotes, backslashes, non-ASCII as \\u00e4)."""
    plain = {secret, repr(secret)[1:-1]}
    forms = plain | {
        json.dumps(form, ensure_ascii=as_ascii)[1:-1]
        for form in plain
        for as_ascii in (True, False)
    }
    # The raw spelling is covered by the URL pattern.
    return forms - {secret, ""}


def _url_pattern(secret: str) -> str:
    """A regex for the secret as is and in every URL-encoded spelling.

    Encoders differ in what they escape: ``quote`` keeps ``/``, ``quote_plus``
    writes a space as ``+``, yarl (aiohttp's URLs) keeps ``/`` but escapes
    ``+`` and ``=`` in a query, and hex digits may be either case. So each
    character may stand as itself or as the %XX escapes of its UTF-8 bytes, in
    any mix: an aiohttp error showing a URL with ``apiKey=...`` is masked
    whatever wrote the URL.
    """
    parts = []
    for char in secret:
        escaped = "".join(
            "%" + "".join(_hex_digit(d) for d in f"{byte:02X}") for byte in char.encode()
        )
        spaces = r"|\+" if char == " " else ""
        parts.append(f"(?:{re.escape(char)}|{escaped}{spaces})")
    return "".join(parts)


def _hex_digit(digit: str) -> str:
    return f"[{digit}{digit.lower()}]" if digit.isalpha() else digit


masker = SecretMasker()


def _drop_none(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {k: v for k, v in event.items() if v is not None}


class CoordinatorWarmUp(logging.Filter):
    """aiokafka logs each "coordinator not available" answer (Kafka error 15) as an
    error, and the coordinator it then drops as a warning. A broker that has just
    started gives that answer until its offsets topic is ready, so on a healthy start
    a user would read an error: in the first :data:`WINDOW` seconds both are info.
    Later they keep their level (a broker lost mid-run)."""

    WINDOW = 60.0
    _LOGGER = "aiokafka.consumer.group_coordinator"

    def __init__(self) -> None:
        super().__init__()
        self._until = time.monotonic() + self.WINDOW

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == self._LOGGER and time.monotonic() < self._until:
            text = record.getMessage()
            if "GroupCoordinatorNotAvailable" in text or text.startswith(
                "Marking the coordinator dead"
            ):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class KafkaConnectFailures(logging.Filter):
    """aiokafka logs every failed connection attempt ("Unable connect to ...") as an
    error, one or more a second while a broker is away. The retry policies say it in
    our words once per back-off step (``kafka_unreachable``, retry.log_kafka_retries),
    so aiokafka's line is kept at debug: shown only when the log level is debug.

    The line is the only place that holds the reason (refused, a TLS or SASL error):
    aiokafka raises a bare "Unable to bootstrap". The latest one is kept for
    :meth:`recent`, so our warning carries it as ``cause``."""

    _LOGGER = "aiokafka"
    _PREFIX = "Unable connect to "

    def __init__(self) -> None:
        super().__init__()
        self.show = False
        self._latest: tuple[float, str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == self._LOGGER:
            text = record.getMessage()
            if text.startswith(self._PREFIX):
                self._latest = (time.monotonic(), text[len(self._PREFIX) :][:300])
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return self.show
        return True

    def recent(self, seconds: float = 30.0) -> str | None:
        """The latest connection failure aiokafka logged in the last ``seconds``."""
        if self._latest is None or time.monotonic() - self._latest[0] > seconds:
            return None
        return self._latest[1]


connect_failures = KafkaConnectFailures()


def configure(
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and the stdlib root logger, for library warnings)."""
    out = stream or sys.stdout
    masker.add(secrets)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_none,
    ]
    if fmt == "json" or (fmt == "auto" and not out.isatty()):
        # No local variables in tracebacks: a secret in a local, cut short by the
        # renderer's length limit, would no longer match the masker.
        processors += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    processors.append(masker)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Library loggers (aiokafka, aiohttp) go through the same renderer.
    handler = logging.StreamHandler(out)
    handler.addFilter(CoordinatorWarmUp())
    connect_failures.show = threshold <= logging.DEBUG
    handler.addFilter(connect_failures)
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
