"""Typed, frozen configuration: ``config.toml`` plus environment overrides.

Precedence, lowest first: built-in defaults → the TOML file → environment
variables ``CRYPTOSTREAM_<SECTION>__<KEY>``. The CoinCap API key only ever comes
from ``COINCAP_API_KEY`` so it never sits in a file that gets committed.

Every problem is raised as :class:`ConfigError` naming the offending key; the
CLI turns it into one line on stderr and exit code 2 before anything starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "CRYPTOSTREAM_"
CONFIG_PATH_ENV = "CRYPTOSTREAM_CONFIG"
API_KEY_ENV = "COINCAP_API_KEY"
DEFAULT_CONFIG_FILE = "config.toml"

# A shorter access token is guessable; a long random one costs nothing.
MIN_TOKEN_LENGTH = 16

DEFAULT_ASSETS = ("bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana")


class ConfigError(Exception):
    """A configuration problem; ``str()`` is the single line shown to the user."""


class Secret:
    """A string that never shows itself in ``repr``/``str``/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class CoinCapConfig:
    base_url: str = "https://rest.coincap.io/v3"
    #: Seconds for one HTTP request, connect to last byte.
    timeout: float = 10.0
    #: How long one poll keeps retrying transient errors before giving up on it.
    retry_deadline: float = 300.0
    #: Upper bound of the exponential backoff between retries, seconds.
    max_backoff: float = 30.0
    #: Wait between retries after 401/403: a bad key must not hammer the API.
    auth_retry_interval: float = 60.0
    api_key: Secret = field(default_factory=lambda: Secret(""))


@dataclass(frozen=True, slots=True)
class SourceConfig:
    #: ``coincap`` (needs COINCAP_API_KEY) or ``demo`` (synthetic prices, offline).
    name: Literal["coincap", "demo"] = "coincap"
    assets: tuple[str, ...] = DEFAULT_ASSETS
    poll_interval: float = 20.0
    #: Ticks buffered between fetcher and producer while Kafka is slow or down.
    queue_size: int = 100_000


@dataclass(frozen=True, slots=True)
class DemoConfig:
    #: Ticks per second, all assets together.
    rate: float = 10.0
    seed: int = 0


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str = "localhost:9092"
    topic: str = "crypto_prices"
    group_id: str = "cryptostream-csv"
    client_id: str = "cryptostream"
    #: One partition keeps a total order of ticks (the CSV is then a pure function
    #: of the topic: ``cryptostream replay`` reproduces it byte for byte).
    partitions: int = 1
    replication_factor: int = 1
    #: 0 leaves the broker default.
    min_insync_replicas: int = 0
    #: Deadline for one batch of sends to be acknowledged (acks=all), seconds.
    send_timeout: float = 30.0
    #: Deadline for connecting / creating the topic / committing, seconds.
    request_timeout: float = 15.0
    linger_ms: int = 5
    #: Records per consumer batch written to the CSV at once.
    max_batch: int = 5000
    #: Consumer group session timeout: how soon a crashed member's partitions move on.
    session_timeout: float = 10.0
    #: Longest pause between polls before the consumer is considered stuck and leaves.
    max_poll_interval: float = 300.0


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: Path = Path("data")
    #: fsync data and state files; turning it off trades crash safety for speed.
    fsync: bool = True
    #: Days of rows kept in crypto_data.csv (0 = everything); history/ticks keeps all.
    retention_days: int = 0
    #: Build OHLC candles (1m, 1h, 1d) under history/candles.
    candles: bool = True


@dataclass(frozen=True, slots=True)
class WebConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    #: Serve the live dashboard page and its JSON API (keeps the price history in memory).
    dashboard: bool = True
    #: Optional access token for the dashboard, its API and /metrics; never logged.
    token: Secret = field(default_factory=lambda: Secret(""))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``auto``: console on a terminal, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    #: Total budget for an orderly stop after SIGINT/SIGTERM, seconds.
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    coincap: CoinCapConfig = field(default_factory=CoinCapConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    web: WebConfig = field(default_factory=WebConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)

    def secrets(self) -> list[str]:
        """Every secret value in this config, for log redaction."""
        return [s for s in (self.coincap.api_key.get(), self.web.token.get()) if s]


# Keys that are not read from the file or CRYPTOSTREAM_* variables.
_EXTERNAL_KEYS = {("coincap", "api_key")}


def _sections() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, merge and validate the configuration. Raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}

    file_path = _resolve_path(path, env)
    if file_path is not None:
        for section, key, value in _read_toml(file_path):
            raw.setdefault(section, {})[key] = value
            sources[(section, key)] = f"{file_path}: [{section}] {key}"

    sections = _sections()
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if (
            section not in sections
            or not _has_field(sections[section], key)
            or ((section, key) in _EXTERNAL_KEYS)
        ):
            raise ConfigError(f"unknown configuration variable {name}")
        raw.setdefault(section, {})[key] = _EnvText(value)
        sources[(section, key)] = f"environment {name}"

    built: dict[str, Any] = {}
    for section, cls in sections.items():
        values = raw.get(section, {})
        kwargs: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            where = sources[(section, key)]
            kwargs[key] = _coerce(value, hints[key], where)
        if section == "coincap":
            kwargs["api_key"] = Secret(env.get(API_KEY_ENV, "").strip())
        built[section] = cls(**kwargs)
    config = Config(**built)
    _validate(config, sources)
    return config


def _resolve_path(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    if env.get(CONFIG_PATH_ENV):
        p = Path(env[CONFIG_PATH_ENV])
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (from {CONFIG_PATH_ENV})")
        return p
    p = Path(DEFAULT_CONFIG_FILE)
    return p if p.is_file() else None


def _read_toml(path: Path) -> list[tuple[str, str, Any]]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    sections = _sections()
    out: list[tuple[str, str, Any]] = []
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table [{section}]")
        for key, value in table.items():
            if not _has_field(sections[section], key) or (section, key) in _EXTERNAL_KEYS:
                hint = (
                    " (set it with the COINCAP_API_KEY environment variable)"
                    if (key == "api_key")
                    else ""
                )
                raise ConfigError(f"{path}: unknown key [{section}] {key}{hint}")
            out.append((section, key, value))
    return out


def _has_field(cls: type[Any], key: str) -> bool:
    return any(f.name == key for f in dataclasses.fields(cls))


class _EnvText(str):
    """A value that came from the environment: text to be parsed per type."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    is_env = isinstance(value, _EnvText)
    if hint is bool:
        if is_env:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if is_env:
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if is_env:
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if hint is Secret:
        if isinstance(value, str):
            return Secret(value.strip())
        # Never echo the value: it is meant to be secret.
        raise ConfigError(f"{where}: expected a string")
    if hint is Path:
        if isinstance(value, str) and value.strip():
            return Path(str(value))
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        text = str(value).strip().lower() if isinstance(value, str) else value
        if text in choices:
            return text
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    if origin is tuple:
        items: Any = value
        if is_env:
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError:
                    raise ConfigError(f"{where}: invalid JSON list: {text!r}") from None
            else:
                items = [part for part in (p.strip() for p in text.split(",")) if part]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(i.strip() for i in items)
    if isinstance(hint, types.UnionType):  # pragma: no cover - not used by any field yet
        raise ConfigError(f"{where}: unsupported type")
    raise ConfigError(f"{where}: unsupported type {hint!r}")  # pragma: no cover


def _validate(config: Config, sources: Mapping[tuple[str, str], str]) -> None:
    def where(section: str, key: str) -> str:
        return sources.get((section, key), f"[{section}] {key}")

    def positive(section: str, key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{where(section, key)}: must be greater than 0, got {value}")

    src = config.source
    if not src.assets:
        raise ConfigError(f"{where('source', 'assets')}: the asset list is empty")
    for asset in src.assets:
        if not asset or any(c in asset for c in ", /?&#") or asset != asset.lower():
            raise ConfigError(
                f"{where('source', 'assets')}: invalid asset id {asset!r} "
                "(CoinCap ids are lower-case, e.g. bitcoin, binance-coin)"
            )
    if len(set(src.assets)) != len(src.assets):
        raise ConfigError(f"{where('source', 'assets')}: duplicate asset ids")
    positive("source", "poll_interval", src.poll_interval)
    positive("source", "queue_size", src.queue_size)

    positive("demo", "rate", config.demo.rate)

    cc = config.coincap
    if not cc.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where('coincap', 'base_url')}: must start with http:// or https://")
    for key in ("timeout", "retry_deadline", "max_backoff", "auth_retry_interval"):
        positive("coincap", key, getattr(cc, key))
    if src.name == "coincap" and not cc.api_key:
        raise ConfigError(
            f"{API_KEY_ENV} is not set: CoinCap API v3 needs a key "
            "(get one at https://pro.coincap.io/dashboard)"
        )

    k = config.kafka
    if not k.bootstrap_servers.strip():
        raise ConfigError(f"{where('kafka', 'bootstrap_servers')}: must not be empty")
    for server in k.bootstrap_servers.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(
                f"{where('kafka', 'bootstrap_servers')}: expected host:port[,host:port], "
                f"got {server.strip()!r}"
            )
    if not k.topic or any(c not in _TOPIC_CHARS for c in k.topic) or len(k.topic) > 249:
        raise ConfigError(f"{where('kafka', 'topic')}: invalid topic name {k.topic!r}")
    if not k.group_id:
        raise ConfigError(f"{where('kafka', 'group_id')}: must not be empty")
    for key in (
        "partitions",
        "replication_factor",
        "send_timeout",
        "request_timeout",
        "max_batch",
        "session_timeout",
        "max_poll_interval",
    ):
        positive("kafka", key, getattr(k, key))
    if k.min_insync_replicas < 0 or k.min_insync_replicas > k.replication_factor:
        raise ConfigError(
            f"{where('kafka', 'min_insync_replicas')}: must be between 0 and "
            f"replication_factor ({k.replication_factor})"
        )
    if k.linger_ms < 0:
        raise ConfigError(f"{where('kafka', 'linger_ms')}: must not be negative")

    if config.storage.retention_days < 0:
        raise ConfigError(f"{where('storage', 'retention_days')}: must be 0 (keep all) or more")
    if not 0 <= config.web.port <= 65535:
        raise ConfigError(f"{where('web', 'port')}: must be a port number 0-65535")
    token = config.web.token.get()
    if token and (len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token):
        raise ConfigError(
            f"{where('web', 'token')}: must be at least {MIN_TOKEN_LENGTH} printable "
            "characters without spaces"
        )
    positive("shutdown", "timeout", config.shutdown.timeout)


_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
