"""What the polling sources (CoinCap, Binance, Kraken) share: the poll loop, the
declared retry policy, health updates and reporting of bad records.

A subclass implements :meth:`PollingSource.request`: one HTTP request turned into
valid ticks, raising an :class:`~cryptostream.source.http.ApiError` subclass, which
:class:`~cryptostream.source.http.RetryPolicy` reads the same for every source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.source.assets import describe
from cryptostream.source.base import BadRecords, Emit, SourceHealth, poll_slots
from cryptostream.source.http import AllowanceSpent, ApiError, RetryPolicy
from cryptostream.tick import InvalidTick, Tick, decimal_text

log = get_logger(__name__)


class PollingSource:
    """Polls on a drift-free grid; each poll retries per the declared policy."""

    name = "rest"
    #: Ticks carry the API's time (Kraken overrides: its answers carry none).
    local_time = False
    #: The event that says which configured markets an answer lacks, and its hint.
    missing_event = "assets_not_in_response"
    missing_hint: str | None = None

    def __init__(
        self,
        *,
        assets: tuple[str, ...],
        markets: Mapping[str, str],
        interval: float,
        metrics: Metrics,
        retry: RetryPolicy,
    ) -> None:
        #: CoinCap id -> the API's market name, for the configured assets it lists.
        self.markets = {a: markets[a] for a in assets if a in markets}
        self.unpriced = tuple(a for a in assets if a not in markets)
        self._interval = interval
        self._metrics = metrics
        self._retry = retry
        self.health = SourceHealth()
        self._bad = BadRecords(self.name, metrics)
        self._missing_reported: set[str] = set()

    # -- the loop ----------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        log.info("source_polling", source=self.name, markets=self.markets, interval=self._interval)
        if self.unpriced:
            for asset in self.unpriced:
                self._metrics.assets_unknown.labels(self.name, asset).set(1)
            log.warning(
                "assets_not_on_source",
                source=self.name,
                assets=list(self.unpriced),
                hint=f"add coincap-id=MARKET entries to the [{self.name}] mapping",
            )
        expected = 0
        async for slot in poll_slots(self._interval):
            if slot > expected:
                self._metrics.polls_missed.inc(slot - expected)
                log.warning(
                    "polls_skipped",
                    source=self.name,
                    count=slot - expected,
                    reason="previous poll overran",
                )
            expected = slot + 1
            if not self.due():
                continue  # paced: this slot is skipped on purpose
            emit(await self.poll_once())

    def due(self) -> bool:
        """Whether to poll in this slot (a paced source skips some)."""
        return True

    async def poll_once(self) -> list[Tick]:
        """One poll with retries: the valid ticks, or none if the poll was given up."""
        try:
            return await self._retry.run(self._attempt)
        except AllowanceSpent as exc:
            # Said once where it was decided (budget, or CoinCap's answer); no request
            # went out, so nothing to report per poll.
            log.debug("poll_skipped", source=self.name, reason=str(exc))
            return []
        except ApiError as exc:
            log.error("poll_failed", source=self.name, kind=exc.kind, error=str(exc))
            return []

    async def _attempt(self) -> list[Tick]:
        # Every attempt updates health: failover watches each attempt, not just the
        # end of a retry sequence that may last minutes.
        try:
            ticks = await self.request()
        except AllowanceSpent as exc:
            # Nothing will come before the reset: the failover moves on at once.
            self.health.spent(str(exc))
            raise
        except ApiError as exc:
            self.health.failed(str(exc))
            raise
        if ticks:
            self.health.ok()
        else:
            # An answer without one usable price is no better than no answer.
            self.health.failed("no valid record in the answer")
        return ticks

    async def request(self) -> list[Tick]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- bad and missing records -------------------------------------------------------

    def unexpected(self, label: str) -> None:
        """A record of a market not asked for, or one given twice in one answer."""
        self._bad.reject(label, InvalidTick("unexpected_asset", "not asked for, or twice"))

    def market_tick(
        self, asset: str, timestamp: float, *, price: Any, change: Any, vwap: Any
    ) -> Tick:
        """A tick from an exchange's ticker fields, kept as exact text; symbol and name
        come from the table of well-known assets. Raises :class:`InvalidTick`."""
        price_usd = decimal_text(price, field="price", required=True, allow_negative=False)
        assert price_usd is not None
        symbol, name = describe(asset)
        return Tick(
            timestamp=timestamp,
            id=asset,
            symbol=symbol,
            name=name,
            price_usd=price_usd,
            change_percent_24h=decimal_text(
                change, field="change", required=False, allow_negative=True
            ),
            first_value=None,
            vwap_24h=decimal_text(vwap, field="vwap", required=False, allow_negative=False),
            source=self.name,
        )

    def collect(
        self, records: Iterable[tuple[str | None, str, Any]], make: Callable[[str, Any], Tick]
    ) -> list[Tick]:
        """The ticks of one answer: ``records`` are (asset or None, label, record);
        ``make`` turns one record of an asset into a tick or raises :class:`InvalidTick`.
        A market not asked for, or given twice, is counted; a bad record is reported."""
        ticks: list[Tick] = []
        seen: set[str] = set()
        for asset, label, record in records:
            if asset is None or asset in seen:
                self.unexpected(label)
                continue
            try:
                tick = make(asset, record)
            except InvalidTick as exc:
                self._bad.reject(asset, exc)
                continue
            seen.add(asset)
            ticks.append(tick)
        return self.accepted(ticks)

    def accepted(self, ticks: list[Tick]) -> list[Tick]:
        """Bookkeeping after a response: forgive records that are good again, and say
        once which configured markets the answer lacked."""
        seen = {t.id for t in ticks}
        self._bad.good(seen)
        if not ticks:
            return ticks
        missing: list[str] = []
        for asset in self.markets:
            lacking = asset not in seen and not self._bad.failing(asset)
            self._metrics.assets_unknown.labels(self.name, asset).set(int(lacking))
            if lacking and asset not in self._missing_reported:
                missing.append(asset)
        if missing:
            self._missing_reported.update(missing)
            log.warning(
                self.missing_event,
                source=self.name,
                assets=missing,
                markets=[self.markets[a] for a in missing],
                hint=self.missing_hint,
            )
        return ticks
