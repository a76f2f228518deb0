"""Which sources run, in which order, and which exchange market prices which asset.

A fact of the configuration, below everything that uses it: :mod:`cryptostream.config`
checks it, the credit budget and the sources read it. It imports nothing of the
package, so every import runs downward (sources and credits → config → chain).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: What an asset id may look like (CoinCap's ids: lower case, no blanks or separators).
ASSET_ID_PATTERN = r"^[^A-Z ,/?&#]+$"
#: Sources that need COINCAP_API_KEY.
KEYED_SOURCES = ("coincap", "coincap-ws")
#: Sources that price assets through a market mapping, and the label of one entry.
MAPPED_SOURCES = {"binance": "Binance symbol", "kraken": "Kraken pair"}


def source_chain(name: str, fallbacks: tuple[str, ...], has_key: bool) -> tuple[str, ...]:
    """The sources to use, most preferred first: ``source.name`` then ``source.fallbacks``.

    ``auto`` is CoinCap when COINCAP_API_KEY is set, else Binance; with no fallbacks
    configured it falls back to the keyless sources (Binance, then Kraken).
    """
    if name != "auto":
        return (name, *fallbacks)
    first = "coincap" if has_key else "binance"
    rest = fallbacks or ("binance", "kraken")
    return tuple(dict.fromkeys((first, *rest)))


def named_sources(name: str, fallbacks: tuple[str, ...]) -> set[str]:
    """The sources the user named (``source.name``, ``source.fallbacks``); the others
    of a chain were added by ``auto``."""
    return {name, *fallbacks} - {"auto"}


def usable_chain(
    chain: tuple[str, ...],
    named: set[str],
    assets: tuple[str, ...],
    mappings: Mapping[str, Mapping[str, str]],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``chain`` without the sources ``auto`` added that can price none of ``assets``
    (a new coin no exchange lists must not stop CoinCap, which prices it), and those
    left out. A source the user named stays: pricing none is a configuration error."""
    kept: list[str] = []
    dropped: list[str] = []
    for source in chain:
        mapping = mappings.get(source)
        useless = mapping is not None and not any(a in mapping for a in assets)
        (dropped if useless and source not in named else kept).append(source)
    return tuple(kept), tuple(dropped)


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
