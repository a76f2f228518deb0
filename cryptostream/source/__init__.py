"""Price sources: each turns an outside feed into validated ticks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from cryptostream.chain import KEYED_SOURCES, MAPPED_SOURCES
from cryptostream.clocks import ClockSkew
from cryptostream.config import Config
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.source.base import Emit, Source
from cryptostream.source.binance import BinanceSource
from cryptostream.source.coincap import CoinCapSource
from cryptostream.source.coincap_ws import CoinCapWsSource
from cryptostream.source.demo import DemoSource
from cryptostream.source.failover import FailoverSource
from cryptostream.source.kraken import KrakenSource

if TYPE_CHECKING:  # the credits package imports this one
    from cryptostream.credits import CreditBudget

__all__ = ["Emit", "Source", "make_source"]

log = get_logger(__name__)


def make_one(
    name: str,
    config: Config,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    budget: CreditBudget | None = None,
    skew: ClockSkew | None = None,
) -> Source:
    """One real-price source by name (``coincap``, ``coincap-ws``, ``binance``, ``kraken``);
    the CoinCap ones spend credits through ``budget``; ``skew`` measures the clocks of
    those that stamp ticks with their own time."""
    if name == "coincap":
        return CoinCapSource(config, session, metrics, budget, skew)
    if name == "coincap-ws":
        return CoinCapWsSource(config, session, metrics, budget)
    if name == "binance":
        return BinanceSource(config, session, metrics)
    if name == "kraken":
        return KrakenSource(config, session, metrics)
    raise ValueError(f"unknown source {name!r}")


def make_source(
    config: Config,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    budget: CreditBudget | None = None,
    skew: ClockSkew | None = None,
) -> Source:
    """The source named by ``source.name``; real sources run inside a failover chain
    (``source.fallbacks``; a chain of one simply never switches). With CoinCap in the
    chain, ``budget`` logs the credit plan for the billing period."""
    if config.source.name == "demo":
        return DemoSource(config)
    chain = config.source_chain()
    for name in config.full_chain():
        if name not in chain:
            _say_skipped(name, config, metrics)
    if config.source.name == "auto" and not config.coincap.api_key:
        # The documented first run: no key, keyless prices at once, and how to add one.
        log.warning(
            "coincap_key_missing",
            using=list(chain),
            hint="prices come from keyless sources; to use CoinCap, set COINCAP_API_KEY "
            "(in .env with Docker) and restart",
        )
    elif config.source.name == "auto":
        log.info("source_auto", chain=list(chain), reason="COINCAP_API_KEY is set")
    if budget is not None and any(name in KEYED_SOURCES for name in chain):
        budget.log_plan()
    sources = [make_one(name, config, session, metrics, budget, skew) for name in chain]
    return FailoverSource(sources, config.source.failover_after, metrics)


def _say_skipped(name: str, config: Config, metrics: Metrics) -> None:
    """A source ``auto`` added that prices none of the assets: left out, said once."""
    assets = config.source.assets
    for asset in assets:
        metrics.assets_unknown.labels(name, asset).set(1)
    log.warning(
        "source_skipped",
        source=name,
        reason=f"no asset of source.assets has a {MAPPED_SOURCES.get(name, 'market')}",
        assets=list(assets),
        hint=f"the other sources price them; to use {name} too, add coincap-id=MARKET "
        f"entries to [{name}]",
    )
