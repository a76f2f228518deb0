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
import ssl
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "CRYPTOSTREAM_"
CONFIG_PATH_ENV = "CRYPTOSTREAM_CONFIG"
API_KEY_ENV = "COINCAP_API_KEY"
SASL_PASSWORD_ENV = "KAFKA_SASL_PASSWORD"  # noqa: S105 - the name of a variable
DEFAULT_CONFIG_FILE = "config.toml"

# A shorter access token is guessable; a long random one costs nothing.
MIN_TOKEN_LENGTH = 16

DEFAULT_ASSETS = ("bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana")

#: The price sources ``source.name`` and ``source.fallbacks`` may name.
SourceName = Literal["coincap", "coincap-ws", "binance", "kraken", "demo", "auto"]
#: Sources that can stand in for one another in a failover chain (real prices only).
CHAIN_SOURCES = ("coincap", "coincap-ws", "binance", "kraken")
#: Sources that need COINCAP_API_KEY.
KEYED_SOURCES = ("coincap", "coincap-ws")

# CoinCap id -> exchange market. Binance quotes in USDT (taken as USD); it has no
# tether/USD market, so tether is not priced by Binance. Kraken quotes in real USD
# and keys its answers by these canonical pair names; it lists no BNB market.
DEFAULT_BINANCE_SYMBOLS = (
    "bitcoin=BTCUSDT",
    "ethereum=ETHUSDT",
    "xrp=XRPUSDT",
    "binance-coin=BNBUSDT",
    "solana=SOLUSDT",
)
DEFAULT_KRAKEN_PAIRS = (
    "bitcoin=XXBTZUSD",
    "ethereum=XETHZUSD",
    "tether=USDTZUSD",
    "xrp=XXRPZUSD",
    "solana=SOLUSD",
)


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
    #: CoinCap's price stream (``coincap-ws``); ``assets`` and ``apiKey`` are added.
    ws_url: str = "wss://wss.coincap.io/prices"
    #: A stream quiet for this long is taken as dead and reconnected, seconds.
    ws_silence_timeout: float = 30.0
    #: How often ``coincap-ws`` refreshes symbol, name, change and VWAP over REST, seconds.
    ws_refresh_interval: float = 60.0
    api_key: Secret = field(default_factory=lambda: Secret(""))


@dataclass(frozen=True, slots=True)
class SourceConfig:
    #: ``coincap``/``coincap-ws`` (need COINCAP_API_KEY), ``binance``, ``kraken`` (keyless),
    #: ``demo`` (synthetic prices, offline) or ``auto`` (see :func:`source_chain`).
    name: SourceName = "coincap"
    #: Sources to fail over to, in order, when the one in use keeps failing.
    fallbacks: tuple[str, ...] = ()
    #: Seconds the active source may fail before the next one takes over.
    failover_after: float = 60.0
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
class BinanceConfig:
    base_url: str = "https://api.binance.com"
    #: ``coincap-id=SYMBOL`` pairs: which Binance market prices which asset.
    symbols: tuple[str, ...] = DEFAULT_BINANCE_SYMBOLS
    timeout: float = 10.0
    retry_deadline: float = 300.0
    max_backoff: float = 30.0
    #: Request weight this service allows itself per minute (Binance's IP limit is 6000,
    #: shared with every other program on the same address).
    max_weight: int = 1000


@dataclass(frozen=True, slots=True)
class KrakenConfig:
    base_url: str = "https://api.kraken.com"
    #: ``coincap-id=PAIR`` pairs: which Kraken pair prices which asset.
    pairs: tuple[str, ...] = DEFAULT_KRAKEN_PAIRS
    timeout: float = 10.0
    retry_deadline: float = 300.0
    max_backoff: float = 30.0


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
    #: When the topic behind the stored offsets was reset (new cluster, topic deleted and
    #: created again, log truncated): ``follow`` reads the new topic from its beginning,
    #: ``stop`` exits 1 naming the topic and writes nothing.
    on_topic_reset: Literal["follow", "stop"] = "follow"
    #: How to talk to the brokers: ``plaintext``, ``ssl``, ``sasl_plaintext``, ``sasl_ssl``.
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    #: SASL mechanism with a ``sasl_*`` protocol.
    sasl_mechanism: Literal["plain", "scram-sha-256", "scram-sha-512"] = "plain"
    sasl_username: str = ""
    #: A file holding the SASL password (e.g. a Docker or Kubernetes secret). The other
    #: way is the KAFKA_SASL_PASSWORD variable; the password itself is never a setting.
    sasl_password_file: str = ""
    #: PEM files for TLS: the CA of the brokers' certificates (empty: the system's CAs),
    #: and a client certificate and its (unencrypted) key when the brokers ask for one.
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))


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
    binance: BinanceConfig = field(default_factory=BinanceConfig)
    kraken: KrakenConfig = field(default_factory=KrakenConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    web: WebConfig = field(default_factory=WebConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)

    def secrets(self) -> list[str]:
        """Every secret value in this config, for log redaction."""
        return [
            s
            for s in (
                self.coincap.api_key.get(),
                self.web.token.get(),
                self.kafka.sasl_password.get(),
            )
            if s
        ]


def source_chain(config: Config) -> tuple[str, ...]:
    """The sources to use, most preferred first: ``source.name`` then ``source.fallbacks``.

    ``auto`` is CoinCap when COINCAP_API_KEY is set, else Binance; with no fallbacks
    configured it falls back to the keyless sources (Binance, then Kraken).
    """
    src = config.source
    if src.name != "auto":
        return (src.name, *src.fallbacks)
    first = "coincap" if config.coincap.api_key else "binance"
    rest = src.fallbacks or ("binance", "kraken")
    return tuple(dict.fromkeys((first, *rest)))


def asset_mapping(entries: tuple[str, ...]) -> dict[str, str]:
    """Parse ``("bitcoin=BTCUSDT", ...)``; raises ValueError naming the bad entry."""
    mapping: dict[str, str] = {}
    for entry in entries:
        asset, sep, market = (part.strip() for part in entry.partition("="))
        if not sep or not asset or not market:
            raise ValueError(f"expected coincap-id=MARKET, got {entry!r}")
        if asset != asset.lower() or any(c in asset for c in ", /?&#"):
            raise ValueError(f"invalid asset id {asset!r} in {entry!r}")
        if not all(c.isalnum() or c in "-_." for c in market):
            raise ValueError(f"invalid market name {market!r} in {entry!r}")
        if asset in mapping:
            raise ValueError(f"asset {asset!r} is mapped twice")
        mapping[asset] = market
    return mapping


# Keys that are not read from the file or CRYPTOSTREAM_* variables.
_EXTERNAL_KEYS = {("coincap", "api_key"), ("kafka", "sasl_password")}
_EXTERNAL_HINTS = {
    "api_key": f" (set it with the {API_KEY_ENV} environment variable)",
    "sasl_password": (
        f" (set it with the {SASL_PASSWORD_ENV} environment variable or kafka.sasl_password_file)"
    ),
}


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
        if section == "kafka":
            kwargs["sasl_password"] = _sasl_password(
                kwargs.get("sasl_password_file", ""),
                env,
                sources.get(("kafka", "sasl_password_file"), "[kafka] sasl_password_file"),
            )
        built[section] = cls(**kwargs)
    config = Config(**built)
    _validate(config, sources)
    return config


def _sasl_password(path: str, env: Mapping[str, str], where: str) -> Secret:
    """The SASL password, from $KAFKA_SASL_PASSWORD or the file; never echoed in errors."""
    from_env = env.get(SASL_PASSWORD_ENV, "")
    if not path:
        return Secret(from_env.rstrip("\r\n"))
    if from_env:
        raise ConfigError(f"{where} and {SASL_PASSWORD_ENV} are both set: use one of them")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    # `echo secret > file` adds a line end that is not part of the password.
    return Secret(text.rstrip("\r\n"))


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
                hint = _EXTERNAL_HINTS.get(key, "")
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
    _validate_sources(config, where)

    cc = config.coincap
    if not cc.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where('coincap', 'base_url')}: must start with http:// or https://")
    for key in (
        "timeout",
        "retry_deadline",
        "max_backoff",
        "auth_retry_interval",
        "ws_silence_timeout",
        "ws_refresh_interval",
    ):
        positive("coincap", key, getattr(cc, key))
    if not cc.ws_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{where('coincap', 'ws_url')}: must start with ws:// or wss://")
    keyed = [s for s in source_chain(config) if s in KEYED_SOURCES]
    if keyed and not cc.api_key:
        raise ConfigError(
            f"{API_KEY_ENV} is not set: CoinCap API v3 needs a key for source {keyed[0]} "
            "(get one at https://pro.coincap.io/dashboard, or use source.name = auto, "
            "binance or kraken without one)"
        )
    for section in ("binance", "kraken"):
        sub = getattr(config, section)
        if not sub.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where(section, 'base_url')}: must start with http:// or https://")
        for key in ("timeout", "retry_deadline", "max_backoff"):
            positive(section, key, getattr(sub, key))
    positive("binance", "max_weight", config.binance.max_weight)

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
    _validate_kafka_security(k, where)

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


def _validate_sources(config: Config, where: typing.Callable[[str, str], str]) -> None:
    src = config.source
    for name in src.fallbacks:
        if name not in CHAIN_SOURCES:
            raise ConfigError(
                f"{where('source', 'fallbacks')}: unknown source {name!r} "
                f"(expected {', '.join(CHAIN_SOURCES)})"
            )
    if len(set(src.fallbacks)) != len(src.fallbacks) or src.name in src.fallbacks:
        raise ConfigError(f"{where('source', 'fallbacks')}: a source is listed twice")
    if src.name == "demo" and src.fallbacks:
        raise ConfigError(
            f"{where('source', 'fallbacks')}: the demo source cannot be mixed with real "
            "prices; leave fallbacks empty with source.name = demo"
        )
    if src.failover_after <= 0:
        raise ConfigError(
            f"{where('source', 'failover_after')}: must be greater than 0, got {src.failover_after}"
        )
    chain = source_chain(config)
    for section, key, label in (
        ("binance", "symbols", "Binance symbol"),
        ("kraken", "pairs", "Kraken pair"),
    ):
        try:
            mapping = asset_mapping(getattr(getattr(config, section), key))
        except ValueError as exc:
            raise ConfigError(f"{where(section, key)}: {exc}") from None
        if section in chain and not any(a in mapping for a in src.assets):
            raise ConfigError(
                f"{where(section, key)}: no asset of source.assets has a {label}; "
                f"add coincap-id={label.split()[1].upper()} entries"
            )


def _validate_kafka_security(k: KafkaConfig, where: Callable[[str, str], str]) -> None:
    protocol = k.security_protocol
    if protocol.startswith("sasl_"):
        if not k.sasl_username:
            raise ConfigError(f"{where('kafka', 'sasl_username')}: needed with {protocol}")
        if not k.sasl_password:
            raise ConfigError(
                f"{SASL_PASSWORD_ENV} is not set (nor kafka.sasl_password_file): "
                f"security_protocol {protocol} needs the SASL password"
            )
    else:
        for key in ("sasl_username", "sasl_password_file"):
            if getattr(k, key):
                raise ConfigError(
                    f"{where('kafka', key)}: only used with security_protocol "
                    f"sasl_plaintext or sasl_ssl (it is {protocol})"
                )
    tls = protocol in ("ssl", "sasl_ssl")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(k, key)
        if value and not tls:
            raise ConfigError(
                f"{where('kafka', key)}: only used with security_protocol ssl or sasl_ssl "
                f"(it is {protocol})"
            )
        if value and not Path(value).is_file():
            raise ConfigError(f"{where('kafka', key)}: no such file {value}")
    if k.ssl_keyfile and not k.ssl_certfile:
        raise ConfigError(f"{where('kafka', 'ssl_keyfile')}: needs kafka.ssl_certfile too")
    if tls:
        # Load the files once now: a bad PEM is a configuration error, not a retry loop.
        try:
            context = ssl.create_default_context(cafile=k.ssl_cafile or None)
            if k.ssl_certfile:
                context.load_cert_chain(k.ssl_certfile, k.ssl_keyfile or None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"kafka.ssl_* files cannot be loaded: {exc}") from None


_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
