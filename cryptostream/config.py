"""Typed, frozen configuration: ``config.toml`` plus environment overrides.

Precedence, lowest first: built-in defaults → the TOML file → environment
variables ``CRYPTOSTREAM_<SECTION>__<KEY>``. The CoinCap API key only ever comes
from ``COINCAP_API_KEY`` so it never sits in a file that gets committed.

The schema below is a tree of frozen :mod:`msgspec` structs; single-key rules
(ranges, URL schemes, names) are constraints on the field types, so msgspec
checks them in the one conversion of the merged settings. Only rules that span
several keys are written out, in :func:`_check`. Every problem is raised as
:class:`ConfigError` naming the offending key and where its value came from;
the CLI turns it into one line on stderr and exit code 2 before anything starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import ssl
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from cryptostream.chain import (
    ASSET_ID_PATTERN,
    KEYED_SOURCES,
    MAPPED_SOURCES,
    asset_mapping,
    named_sources,
    source_chain,
    usable_chain,
)

ENV_PREFIX = "CRYPTOSTREAM_"
CONFIG_PATH_ENV = "CRYPTOSTREAM_CONFIG"
API_KEY_ENV = "COINCAP_API_KEY"
SASL_PASSWORD_ENV = "KAFKA_SASL_PASSWORD"  # noqa: S105 - the name of a variable
DEFAULT_CONFIG_FILE = "config.toml"

# A shorter access token is guessable; a long random one costs nothing.
MIN_TOKEN_LENGTH = 16

DEFAULT_ASSETS = ("bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana")

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


def _rule(error: str, **constraints: Any) -> msgspec.Meta:
    """A msgspec constraint plus what to tell the user when a value breaks it.

    ``error`` follows the key in the message; ``{value!r}`` in it shows the value.
    """
    return msgspec.Meta(**constraints, extra={"error": error})


Positive = Annotated[float, _rule("must be greater than 0, got {value!r}", gt=0)]
PositiveInt = Annotated[int, _rule("must be greater than 0, got {value!r}", gt=0)]
NonNegativeInt = Annotated[int, _rule("must be 0 or more, got {value!r}", ge=0)]
DayOfMonth = Annotated[int, _rule("must be a day of the month, 1-31, got {value!r}", ge=1, le=31)]
HttpUrl = Annotated[str, _rule("must start with http:// or https://", pattern=r"^https?://")]
WsUrl = Annotated[str, _rule("must start with ws:// or wss://", pattern=r"^wss?://")]
AssetId = Annotated[
    str,
    _rule(
        "invalid asset id {value!r} (CoinCap ids are lower-case, e.g. bitcoin, binance-coin)",
        pattern=ASSET_ID_PATTERN,
    ),
]
Assets = Annotated[tuple[AssetId, ...], _rule("the asset list is empty", min_length=1)]
Port = Annotated[int, _rule("must be a port number 0-65535, got {value!r}", ge=0, le=65535)]
BootstrapServers = Annotated[
    str,
    _rule(
        "expected host:port[,host:port], got {value!r}",
        pattern=r"^\s*[^,\s]+:[0-9]+\s*(,\s*[^,\s]+:[0-9]+\s*)*$",
    ),
]
TopicName = Annotated[
    str, _rule("invalid topic name {value!r}", pattern=r"^[a-zA-Z0-9._-]{1,249}$")
]


class CoinCapConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: The API root.
    base_url: HttpUrl = "https://rest.coincap.io/v3"
    #: Seconds for one HTTP request, connect to last byte.
    timeout: Positive = 10.0
    #: How long one poll keeps retrying transient errors before giving up on it.
    retry_deadline: Positive = 300.0
    #: Upper bound of the exponential backoff between retries, seconds.
    max_backoff: Positive = 30.0
    #: Wait between retries after 401/403: a bad key must not hammer the API.
    auth_retry_interval: Positive = 60.0
    #: CoinCap's price stream (``coincap-ws``); ``assets`` and ``apiKey`` are added.
    ws_url: WsUrl = "wss://wss.coincap.io/prices"
    #: A stream quiet for this long is taken as dead and reconnected, seconds.
    ws_silence_timeout: Positive = 30.0
    #: How often ``coincap-ws`` refreshes symbol, name, change and VWAP over REST, seconds.
    ws_refresh_interval: Positive = 60.0
    #: Credits this service may spend per billing period (0 = no limit: counted only).
    #: A free key's monthly allowance was a few thousand credits, and reportedly cut
    #: since: the default keeps a free key within it. Set your plan's (see "Costs and credits").
    monthly_credits: NonNegativeInt = 2500
    #: Day of the month (UTC) the billing period starts; 29-31 mean the last day in
    #: shorter months.
    billing_day: DayOfMonth = 1
    #: When the configured rate would overspend: ``pace`` the polls so the budget lasts,
    #: ``failover`` at the configured rate then hand over to ``source.fallbacks`` until
    #: the reset, or ``auto`` (failover when a fallback exists, else pace).
    budget_mode: Literal["auto", "pace", "failover"] = "auto"
    api_key: Secret = Secret("")


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: ``coincap``/``coincap-ws`` (need COINCAP_API_KEY), ``binance``, ``kraken`` (keyless),
    #: ``demo`` (synthetic prices, offline) or ``auto`` (see ``cryptostream.chain.source_chain``):
    #: the default, so a first run without a key starts on the keyless sources.
    name: Literal["coincap", "coincap-ws", "binance", "kraken", "demo", "auto"] = "auto"
    #: Sources to fail over to, in order, when the one in use keeps failing (real prices
    #: only: the demo source cannot stand in for another).
    fallbacks: tuple[Literal["coincap", "coincap-ws", "binance", "kraken"], ...] = ()
    #: Seconds the active source may fail before the next one takes over.
    failover_after: Positive = 60.0
    #: CoinCap asset ids to track (the other sources map them with their own markets).
    assets: Assets = DEFAULT_ASSETS
    #: Seconds between polls (fractions allowed); the schedule does not drift.
    poll_interval: Positive = 20.0
    #: Ticks buffered between fetcher and producer while Kafka is slow or down.
    queue_size: PositiveInt = 100_000


class DemoConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Ticks per second, all assets together.
    rate: Positive = 10.0
    #: Random seed of the demo walk.
    seed: int = 0


class BinanceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: The API root.
    base_url: HttpUrl = "https://api.binance.com"
    #: ``coincap-id=SYMBOL`` pairs: which Binance market prices which asset.
    symbols: tuple[str, ...] = DEFAULT_BINANCE_SYMBOLS
    #: Seconds for one request.
    timeout: Positive = 10.0
    #: How long one poll keeps retrying before it is given up (logged).
    retry_deadline: Positive = 300.0
    #: Cap of the backoff between retries; also the wait between retries of a 4xx.
    max_backoff: Positive = 30.0
    #: Request weight this service allows itself per minute (Binance's IP limit is 6000,
    #: shared with every other program on the same address).
    max_weight: PositiveInt = 1000


class KrakenConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: The API root.
    base_url: HttpUrl = "https://api.kraken.com"
    #: ``coincap-id=PAIR`` pairs: which Kraken pair prices which asset.
    pairs: tuple[str, ...] = DEFAULT_KRAKEN_PAIRS
    #: Seconds for one request.
    timeout: Positive = 10.0
    #: How long one poll keeps retrying before it is given up (logged).
    retry_deadline: Positive = 300.0
    #: Cap of the backoff between retries; also the wait between retries of a configuration
    #: error.
    max_backoff: Positive = 30.0


class KafkaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: ``host:port[,host:port]`` of the brokers.
    bootstrap_servers: BootstrapServers = "localhost:9092"
    #: The topic of the ticks, created on start if missing.
    topic: TopicName = "crypto_prices"
    #: Consumer group of the CSV sink.
    group_id: Annotated[str, _rule("must not be empty", min_length=1)] = "cryptostream-csv"
    #: Client id the brokers see.
    client_id: str = "cryptostream"
    #: One partition keeps a total order of ticks (the CSV is then a pure function
    #: of the topic: ``cryptostream replay`` reproduces it byte for byte).
    partitions: PositiveInt = 1
    #: When creating the topic (3 on a real cluster).
    replication_factor: PositiveInt = 1
    #: 0 leaves the broker default.
    min_insync_replicas: int = 0
    #: Deadline for one batch of sends to be acknowledged (acks=all), seconds.
    send_timeout: Positive = 30.0
    #: Deadline for connecting / creating the topic / committing, seconds.
    request_timeout: Positive = 15.0
    #: Producer batching delay, milliseconds: ticks that come sooner than this after
    #: the previous batch wait for it and go together; after a quieter spell, at once.
    linger_ms: Annotated[int, _rule("must not be negative, got {value!r}", ge=0)] = 5
    #: Records per consumer batch written to the CSV at once.
    max_batch: PositiveInt = 5000
    #: Consumer group session timeout: how soon a crashed member's partitions move on.
    session_timeout: Positive = 10.0
    #: Longest pause between polls before the consumer is considered stuck and leaves.
    max_poll_interval: Positive = 300.0
    #: Longest time the broker holds a consumer's fetch while it has no new records,
    #: seconds. A fetch that waits holds up the next one of every partition on that broker
    #: (aiokafka keeps one in flight per broker): a partition read to its end would stall
    #: the others', so this is short; each idle second costs 1 / this fetches per broker.
    #: Less than ``request_timeout``.
    fetch_max_wait: Positive = 0.1
    #: When the topic behind the stored offsets was reset (new cluster, topic deleted and
    #: created again; a log that only lost its tail is no reset): ``follow`` reads the
    #: new topic from its beginning, ``stop`` exits 1 naming the topic and writes nothing.
    on_topic_reset: Literal["follow", "stop"] = "follow"
    #: How to talk to the brokers: ``plaintext``, ``ssl``, ``sasl_plaintext``, ``sasl_ssl``.
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    #: SASL mechanism with a ``sasl_*`` protocol.
    sasl_mechanism: Literal["plain", "scram-sha-256", "scram-sha-512"] = "plain"
    #: SASL user name (required with a ``sasl_*`` protocol).
    sasl_username: str = ""
    #: A file holding the SASL password (e.g. a Docker or Kubernetes secret). The other
    #: way is the KAFKA_SASL_PASSWORD variable; the password itself is never a setting.
    sasl_password_file: str = ""
    #: PEM files for TLS: the CA of the brokers' certificates (empty: the system's CAs),
    #: and a client certificate and its (unencrypted) key when the brokers ask for one.
    ssl_cafile: str = ""
    #: PEM client certificate, for brokers that require one (mutual TLS).
    ssl_certfile: str = ""
    #: Its unencrypted PEM key, unless it is in ``ssl_certfile``.
    ssl_keyfile: str = ""
    sasl_password: Secret = Secret("")


class StorageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Where the files go (the folder Power BI reads).
    data_dir: Path = Path("data")
    #: fsync data and state files; turning it off trades crash safety for speed.
    fsync: bool = True
    #: Days of rows kept in crypto_data.csv (0 = everything); history/ticks keeps all.
    retention_days: Annotated[int, _rule("must be 0 (keep all) or more, got {value!r}", ge=0)] = 0
    #: Build OHLC candles (1m, 1h, 1d) under history/candles.
    candles: bool = True


class WebConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Serve ``/healthz``, ``/readyz``, ``/metrics`` (and the dashboard).
    enabled: bool = True
    #: Address to listen on (``0.0.0.0`` in containers).
    host: str = "127.0.0.1"
    #: Port to listen on.
    port: Port = 8000
    #: Serve the live dashboard page and its JSON API (keeps the price history in memory).
    dashboard: bool = True
    #: Optional access token for the dashboard, its API and /metrics; never logged.
    token: Secret = Secret("")


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``auto``: console on a terminal, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"


class ShutdownConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Total budget for an orderly stop after SIGINT/SIGTERM, seconds.
    timeout: Positive = 10.0


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    coincap: CoinCapConfig = CoinCapConfig()
    source: SourceConfig = SourceConfig()
    demo: DemoConfig = DemoConfig()
    binance: BinanceConfig = BinanceConfig()
    kraken: KrakenConfig = KrakenConfig()
    kafka: KafkaConfig = KafkaConfig()
    storage: StorageConfig = StorageConfig()
    web: WebConfig = WebConfig()
    log: LogConfig = LogConfig()
    shutdown: ShutdownConfig = ShutdownConfig()

    def full_chain(self) -> tuple[str, ...]:
        """Every source of ``source.name``/``source.fallbacks``, ``auto`` resolved."""
        src = self.source
        return source_chain(src.name, src.fallbacks, bool(self.coincap.api_key))

    def mappings(self) -> dict[str, dict[str, str]]:
        """The market mapping of each exchange source (raises ValueError if malformed)."""
        return {
            "binance": asset_mapping(self.binance.symbols),
            "kraken": asset_mapping(self.kraken.pairs),
        }

    def source_chain(self) -> tuple[str, ...]:
        """The sources to run, most preferred first: :meth:`full_chain` without those
        that ``auto`` added and that can price none of ``source.assets``."""
        src = self.source
        kept, _ = usable_chain(
            self.full_chain(), named_sources(src.name, src.fallbacks), src.assets, self.mappings()
        )
        return kept

    def secrets(self) -> list[str]:
        """Every secret value in this config, for log redaction."""
        secrets = (self.coincap.api_key, self.web.token, self.kafka.sasl_password)
        return [secret.get() for secret in secrets if secret]


#: section -> key -> declared type (with its constraints), read off the schema.
_SCHEMA: dict[str, dict[str, Any]] = {
    section.name: {f.name: f.type for f in msgspec.structs.fields(section.type)}
    for section in msgspec.structs.fields(Config)
}
# Keys that are not read from the file or CRYPTOSTREAM_* variables.
del _SCHEMA["coincap"]["api_key"], _SCHEMA["kafka"]["sasl_password"]
_EXTERNAL_HINTS = {
    "api_key": f" (set it with the {API_KEY_ENV} environment variable)",
    "sasl_password": (
        f" (set it with the {SASL_PASSWORD_ENV} environment variable or kafka.sasl_password_file)"
    ),
}
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True}
_BOOL_WORDS |= {"0": False, "false": False, "no": False, "off": False}


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, merge and validate the configuration. Raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}

    def where(section: str, key: str) -> str:
        return origins.get((section, key), f"[{section}] {key}")

    def put(section: str, key: str, value: Any, origin: str) -> None:
        origins[(section, key)] = origin
        raw.setdefault(section, {})[key] = _tidy(value, _SCHEMA[section][key], origin)

    file_path = _resolve_path(path, env)
    if file_path is not None:
        for section, key, value in _read_toml(file_path):
            put(section, key, value, f"{file_path}: [{section}] {key}")
    for name, value in sorted(env.items()):
        section, sep, key = name.removeprefix(ENV_PREFIX).lower().partition("__")
        if not name.startswith(ENV_PREFIX) or not sep:
            continue
        if key not in _SCHEMA.get(section, {}):
            raise ConfigError(f"unknown configuration variable {name}")
        origin = f"environment {name}"
        put(section, key, _from_env(value, _SCHEMA[section][key], origin), origin)
    raw.setdefault("coincap", {})["api_key"] = env.get(API_KEY_ENV, "").strip()

    try:
        config = msgspec.convert(raw, Config, dec_hook=_decode_custom)
    except msgspec.ValidationError as exc:
        raise _explain(exc, raw, where) from None
    password = _sasl_password(config.kafka.sasl_password_file, env, where)
    kafka = msgspec.structs.replace(config.kafka, sasl_password=password)
    config = msgspec.structs.replace(config, kafka=kafka)
    _check(config, where)
    return config


def _resolve_path(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        p, whence = Path(path), ""
    elif env.get(CONFIG_PATH_ENV):
        p, whence = Path(env[CONFIG_PATH_ENV]), f" (from {CONFIG_PATH_ENV})"
    else:
        p = Path(DEFAULT_CONFIG_FILE)
        return p if p.is_file() else None
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}{whence}")
    return p


def _read_toml(path: Path) -> list[tuple[str, str, Any]]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    out: list[tuple[str, str, Any]] = []
    for section, table in data.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table [{section}]")
        for key, value in table.items():
            if key not in _SCHEMA[section]:
                hint = _EXTERNAL_HINTS.get(key, "")
                raise ConfigError(f"{path}: unknown key [{section}] {key}{hint}")
            out.append((section, key, value))
    return out


def _unwrap(hint: Any) -> tuple[Any, str | None]:
    """The bare type of a field and its error text, if it carries a constraint."""
    if typing.get_origin(hint) is not Annotated:
        return hint, None
    base, rule = typing.get_args(hint)  # every constraint is one _rule
    return base, rule.extra["error"]


def _from_env(text: str, hint: Any, origin: str) -> Any:
    """The value an environment variable's text stands for, as the file would give it.

    Text that does not parse is passed on unchanged, so that the one type check in
    msgspec reports it in the same words as a bad value in the file.
    """
    base, _ = _unwrap(hint)
    if typing.get_origin(base) is tuple:
        text = text.strip()
        if text.startswith("["):
            try:
                return msgspec.json.decode(text)
            except msgspec.DecodeError:
                raise ConfigError(f"{origin}: invalid JSON list: {text!r}") from None
        return [part for part in text.split(",") if part.strip()]
    if base is bool:
        return _BOOL_WORDS.get(text.strip().lower(), text)
    if base in (int, float):
        with contextlib.suppress(ValueError):
            return base(text)
    return text


def _tidy(value: Any, hint: Any, origin: str) -> Any:
    """Forgive what people type: the case of a choice, blanks around list items."""
    base, _ = _unwrap(hint)
    if base is float and isinstance(value, float) and not math.isfinite(value):
        # msgspec's range checks would let infinity through; no setting wants it.
        raise ConfigError(f"{origin}: expected a number, got {value!r}")
    if typing.get_origin(base) is tuple and isinstance(value, list):
        item = typing.get_args(base)[0]
        return [_tidy(v.strip() if isinstance(v, str) else v, item, origin) for v in value]
    if isinstance(value, str) and typing.get_origin(base) is Literal:
        return value.strip().lower()
    return value


def _decode_custom(kind: type, value: Any) -> Any:
    """msgspec's hook for the two field types it does not know itself."""
    if kind is Secret and isinstance(value, str):
        return Secret(value.strip())
    if kind is Path and isinstance(value, str) and value.strip():
        return Path(value)
    # The message is never shown (see _explain), so it cannot leak a secret.
    raise TypeError(kind.__name__)


def _explain(
    exc: msgspec.ValidationError,
    raw: Mapping[str, Mapping[str, Any]],
    where: Callable[[str, str], str],
) -> ConfigError:
    """msgspec's ``... - at `$.source.assets[2]``` as our one line naming key and origin."""
    problem, _, path = str(exc).rpartition(" - at `$.")
    section, _, rest = path.rstrip("`").partition(".")
    key, _, index = rest.partition("[")
    hint, value = _SCHEMA[section][key], raw[section][key]
    item = value[int(index.rstrip("]"))] if index else None
    if isinstance(item, str):
        # A list item of the right type broke its own rule: name the item.
        hint, value = typing.get_args(_unwrap(hint)[0])[0], item
    base, error = _unwrap(hint)
    # msgspec tells what it got only when the type is wrong, not when a constraint fails.
    if error is not None and ", got `" not in problem:
        return ConfigError(f"{where(section, key)}: {error.format(value=value)}")
    got = "" if base is Secret else f", got {value!r}"  # a secret value is never echoed
    return ConfigError(f"{where(section, key)}: expected {_describe(base)}{got}")


def _describe(base: Any) -> str:
    if typing.get_origin(base) is Literal:
        return "one of " + ", ".join(typing.get_args(base))
    if typing.get_origin(base) is tuple:
        return "a list of strings"
    words = {bool: "true or false", int: "an integer", float: "a number", Path: "a path"}
    return words.get(base, "a string")


def _sasl_password(path: str, env: Mapping[str, str], where: Callable[[str, str], str]) -> Secret:
    """The SASL password, from $KAFKA_SASL_PASSWORD or the file; never echoed in errors."""
    text = env.get(SASL_PASSWORD_ENV, "")
    if path:
        origin = where("kafka", "sasl_password_file")
        if text:
            raise ConfigError(f"{origin} and {SASL_PASSWORD_ENV} are both set: use one of them")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{origin}: {path} is not UTF-8 text") from None
    # `echo secret > file` adds a line end that is not part of the password.
    return Secret(text.rstrip("\r\n"))


def _check(config: Config, where: Callable[[str, str], str]) -> None:
    """The rules no field type can say: those that span keys, each checked once."""
    if len(set(config.source.assets)) != len(config.source.assets):
        raise ConfigError(f"{where('source', 'assets')}: duplicate asset ids")
    _check_sources(config, where)
    k = config.kafka
    if not 0 <= k.min_insync_replicas <= k.replication_factor:
        raise ConfigError(
            f"{where('kafka', 'min_insync_replicas')}: must be between 0 and "
            f"replication_factor ({k.replication_factor})"
        )
    if k.fetch_max_wait >= k.request_timeout:
        # The broker answers a fetch after up to fetch_max_wait: each would time out.
        raise ConfigError(
            f"{where('kafka', 'fetch_max_wait')}: must be less than request_timeout "
            f"({k.request_timeout:g} s), got {k.fetch_max_wait:g}"
        )
    _check_kafka_security(k, where)
    token = config.web.token.get()
    if token and (len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token):
        raise ConfigError(
            f"{where('web', 'token')}: must be at least {MIN_TOKEN_LENGTH} printable "
            "characters without spaces"
        )


def _check_sources(config: Config, where: Callable[[str, str], str]) -> None:
    src = config.source
    if len(set(src.fallbacks)) != len(src.fallbacks) or src.name in src.fallbacks:
        raise ConfigError(f"{where('source', 'fallbacks')}: a source is listed twice")
    if src.name == "demo" and src.fallbacks:
        raise ConfigError(
            f"{where('source', 'fallbacks')}: the demo source cannot be mixed with real "
            "prices; leave fallbacks empty with source.name = demo"
        )
    keys = {"binance": "symbols", "kraken": "pairs"}
    mappings: dict[str, dict[str, str]] = {}
    for section, key in keys.items():
        try:
            mappings[section] = asset_mapping(getattr(getattr(config, section), key))
        except ValueError as exc:
            raise ConfigError(f"{where(section, key)}: {exc}") from None
    named = named_sources(src.name, src.fallbacks)
    chain, _ = usable_chain(config.full_chain(), named, src.assets, mappings)
    for section, key in keys.items():
        # Only a source the user named is an error when it prices nothing; one that
        # ``auto`` added is left out of the chain (said at start, see make_source).
        if section in chain and not any(a in mappings[section] for a in src.assets):
            label = MAPPED_SOURCES[section]
            raise ConfigError(
                f"{where(section, key)}: no asset of source.assets has a {label}; "
                f"add coincap-id={label.split()[1].upper()} entries"
            )
    if not chain:
        raise ConfigError(
            f"{where('source', 'assets')}: no source can price these assets (no Binance "
            "symbol or Kraken pair for any of them, and no COINCAP_API_KEY): set the key, "
            "or add binance.symbols / kraken.pairs entries"
        )
    keyed = [s for s in chain if s in KEYED_SOURCES]
    if keyed and not config.coincap.api_key:
        raise ConfigError(
            f"{API_KEY_ENV} is not set: CoinCap API v3 needs a key for source {keyed[0]} "
            "(get one at https://pro.coincap.io/dashboard, or use source.name = auto, "
            "binance or kraken without one)"
        )
    keyless_fallback = any(s not in KEYED_SOURCES for s in chain[1:])
    cc = config.coincap
    if cc.budget_mode == "failover" and cc.monthly_credits and not keyless_fallback:
        raise ConfigError(
            f"{where('coincap', 'budget_mode')}: failover needs a keyless source to hand "
            "over to: add source.fallbacks (e.g. binance, kraken) or use pace"
        )


def _check_kafka_security(k: KafkaConfig, where: Callable[[str, str], str]) -> None:
    protocol = k.security_protocol
    if protocol.startswith("sasl_"):
        if not k.sasl_username:
            raise ConfigError(f"{where('kafka', 'sasl_username')}: needed with {protocol}")
        if not k.sasl_password:
            raise ConfigError(
                f"{SASL_PASSWORD_ENV} is not set (nor kafka.sasl_password_file): "
                f"security_protocol {protocol} needs the SASL password"
            )
    ssl_keys = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    for keys, protocols in (
        (("sasl_username", "sasl_password_file"), ("sasl_plaintext", "sasl_ssl")),
        (ssl_keys, ("ssl", "sasl_ssl")),
    ):
        for key in keys:
            if getattr(k, key) and protocol not in protocols:
                raise ConfigError(
                    f"{where('kafka', key)}: only used with security_protocol "
                    f"{' or '.join(protocols)} (it is {protocol})"
                )
    for key in ssl_keys:
        path = getattr(k, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"{where('kafka', key)}: no such file {path}")
    if k.ssl_keyfile and not k.ssl_certfile:
        raise ConfigError(f"{where('kafka', 'ssl_keyfile')}: needs kafka.ssl_certfile too")
    if protocol in ("ssl", "sasl_ssl"):
        # Load the files once now: a bad PEM is a configuration error, not a retry loop.
        try:
            context = ssl.create_default_context(cafile=k.ssl_cafile or None)
            if k.ssl_certfile:
                context.load_cert_chain(k.ssl_certfile, k.ssl_keyfile or None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"kafka.ssl_* files cannot be loaded: {exc}") from None
