"""Price sources: each turns an outside feed into validated ticks."""

from __future__ import annotations

import aiohttp

from cryptostream.config import Config
from cryptostream.metrics import Metrics
from cryptostream.source.base import Emit, Source
from cryptostream.source.coincap import CoinCapSource
from cryptostream.source.demo import DemoSource

__all__ = ["Emit", "Source", "make_source"]


def make_source(config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> Source:
    """The source named by ``source.name``."""
    if config.source.name == "demo":
        return DemoSource(config)
    return CoinCapSource(config, session, metrics)
