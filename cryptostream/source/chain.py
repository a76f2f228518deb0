"""Which sources run, in which order, and which exchange market prices which asset."""

from __future__ import annotations

import re

from cryptostream.config import ASSET_ID_PATTERN, Config

#: Sources that need COINCAP_API_KEY.
KEYED_SOURCES = ("coincap", "coincap-ws")


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
        if not re.match(ASSET_ID_PATTERN, asset):
            raise ValueError(f"invalid asset id {asset!r} in {entry!r}")
        if not all(c.isalnum() or c in "-_." for c in market):
            raise ValueError(f"invalid market name {market!r} in {entry!r}")
        if asset in mapping:
            raise ValueError(f"asset {asset!r} is mapped twice")
        mapping[asset] = market
    return mapping
