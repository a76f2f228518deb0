"""Ticker symbol and display name of well-known CoinCap asset ids.

CoinCap's own answers carry ``symbol`` and ``name``; the exchange sources
(Binance, Kraken) only know their market names (``BTCUSDT``, ``XXBTZUSD``), so
they label their ticks from this table. An asset not listed here gets empty
``symbol``/``name`` cells from those sources rather than a guess.
"""

from __future__ import annotations

KNOWN_ASSETS: dict[str, tuple[str, str]] = {
    "bitcoin": ("BTC", "Bitcoin"),
    "ethereum": ("ETH", "Ethereum"),
    "tether": ("USDT", "Tether"),
    "xrp": ("XRP", "XRP"),
    "binance-coin": ("BNB", "BNB"),
    "solana": ("SOL", "Solana"),
    "usd-coin": ("USDC", "USDC"),
    "dogecoin": ("DOGE", "Dogecoin"),
    "cardano": ("ADA", "Cardano"),
    "tron": ("TRX", "TRON"),
    "chainlink": ("LINK", "Chainlink"),
    "avalanche": ("AVAX", "Avalanche"),
    "litecoin": ("LTC", "Litecoin"),
    "polkadot": ("DOT", "Polkadot"),
    "bitcoin-cash": ("BCH", "Bitcoin Cash"),
    "stellar": ("XLM", "Stellar"),
}


def describe(asset: str) -> tuple[str, str]:
    """``(symbol, name)`` of a CoinCap id; empty strings when it is not well known."""
    return KNOWN_ASSETS.get(asset, ("", ""))
