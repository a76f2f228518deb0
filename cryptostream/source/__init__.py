"""Price sources: each turns an outside feed into validated ticks."""

from __future__ import annotations

import aiohttp

from cryptostream.config import Config
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.source.base import Emit, Source
from cryptostream.source.binance import BinanceSource
from cryptostream.source.chain import source_chain
from cryptostream.source.coincap import CoinCapSource
from cryptostream.source.coincap_ws import CoinCapWsSource
from cryptostream.source.demo import DemoSource
from cryptostream.source.failover import FailoverSource
from cryptostream.source.kraken import KrakenSource

__all__ = ["Emit", "Source", "make_source"]

log = get_logger(__name__)


def make_one(name: str, config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> Source:
    """One real-price source by name (``coincap``, ``coincap-ws``, ``binance``, ``kraken``)."""
    if name == "coincap":
        return CoinCapSource(config, session, metrics)
    if name == "coincap-ws":
        return CoinCapWsSource(config, session, metrics)
    if name == "binance":
        return BinanceSource(config, session, metrics)
    if name == "kraken":
        return KrakenSource(config, session, metrics)
    raise ValueError(f"unknown source {name!r}")


def make_source(config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> Source:
    """The source named by ``source.name``; real sources run inside a failover chain
    (``source.fallbacks``; a chain of one simply never switches)."""
    if config.source.name == "demo":
        return DemoSource(config)
    chain = source_chain(config)
    if config.source.name == "auto":
        log.info(
            "source_auto",
            chain=list(chain),
            reason="COINCAP_API_KEY is set" if config.coincap.api_key else "no COINCAP_API_KEY",
        )
    sources = [make_one(name, config, session, metrics) for name in chain]
    return FailoverSource(sources, config.source.failover_after, metrics)
