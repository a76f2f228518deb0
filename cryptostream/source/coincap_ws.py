"""CoinCap's price stream (``coincap-ws``): ``wss://wss.coincap.io/prices?assets=...``.

Each text frame is a JSON object of the assets whose price changed, e.g.
``{"bitcoin": "86467.40", "solana": "143.04"}``; every entry becomes a tick
stamped with the time the frame arrived (the stream carries no time of its own).
The fields the stream lacks (symbol, name, changePercent24Hr, vwap24Hr) come
from CoinCap's REST ``/assets``, refreshed every ``coincap.ws_refresh_interval``
seconds, so they are at most that old; until the first refresh answers, symbol
and name come from the built-in table and the other two cells stay empty.

Faults:

* a frame that is not a JSON object, or has no valid price in it, is skipped and
  counted (``cryptostream_ws_malformed_frames_total{reason}``); a bad value next to
  good ones is a bad record (``cryptostream_ticks_invalid_total``) and the rest pass;
* a stream quiet for ``coincap.ws_silence_timeout`` seconds is taken as dead;
* closed, broken, silent or refused connections are reconnected per a declared
  tenacity policy: exponential backoff with jitter, capped at ``coincap.max_backoff``,
  reset after a session that delivered prices for a while. Each reconnect is counted
  (``cryptostream_ws_reconnects_total{reason}``);
* a handshake refused with 429 waits what its ``Retry-After`` says (at most
  10 minutes, as for the REST API), however short the backoff is, since retrying
  sooner only earns another 429; without the header it backs off as above.

Credits: the minutes connected are charged to the budget (about one credit a minute,
whole minutes as they pass and the started one when a connection ends), the REST
refresh like any CoinCap request. When the budget or CoinCap's allowance is spent no
connection is made, and an open one is closed shortly before a minute it could not pay
begins (the budget is never overspent: the started minute is owed from the start, so
no other request takes its credit); the source says it is exhausted, so the failover
hands over.

The API key travels in the URL (the stream's only way to take it), so the URL is
never logged and connection errors are reported without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import time
from typing import TYPE_CHECKING, NoReturn

import aiohttp
import tenacity

from cryptostream import clocks
from cryptostream.config import Config
from cryptostream.logs import SecretMasker, get_logger
from cryptostream.metrics import Metrics
from cryptostream.source.assets import describe
from cryptostream.source.base import BadRecords, Emit, SourceHealth, poll_slots
from cryptostream.source.coincap import CoinCapClient, record_label
from cryptostream.source.http import AllowanceSpent, ApiError, parse_retry_after
from cryptostream.tick import InvalidTick, Tick, decimal_text, tick_from_api

if TYPE_CHECKING:  # the credits package imports the source package
    from cryptostream.credits import CreditBudget

log = get_logger(__name__)

#: A session that delivered prices for this long resets the reconnect backoff.
STABLE_SESSION = 10.0
#: Malformed frames of one kind are logged at most this often (all are counted).
_FRAME_LOG_EVERY = 60.0
#: Seconds to wait for the close handshake before dropping the connection.
_CLOSE_TIMEOUT = 1.0
#: Seconds before a minute connected ends when the budget is asked for the next one:
#: a stream that must stop is closed (the close handshake included) before it begins.
_DECIDE_BEFORE = 5.0


class StreamBroken(Exception):
    """The connection could not be made or ended early; reconnect with backoff."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        #: Seconds the server asked us to wait (a 429's ``Retry-After``), if it did.
        self.retry_after = retry_after


class StreamEnded(Exception):
    """A long, healthy session ended: reconnect at once with a fresh backoff."""


class CoinCapWsSource:
    name = "coincap-ws"
    local_time = True  # price frames carry no time: stamped when they arrive

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        budget: CreditBudget | None = None,
    ) -> None:
        cc = self._config = config.coincap
        self._budget = budget
        self._assets = config.source.assets
        self._wanted = frozenset(self._assets)
        self._session = session
        self._metrics = metrics
        self._safe_url = cc.ws_url.split("?", 1)[0]
        self._key = cc.api_key.get()
        # aiohttp puts the URL, query and all, in some error texts, with the key as it
        # wrote it there (%2B for '+', ...): they are masked before they are reported.
        self._key_masker = SecretMasker()
        self._key_masker.add([self._key])
        self._silence = cc.ws_silence_timeout
        # Metadata requests must not make the stream look unhealthy: no health here.
        self._client = CoinCapClient(
            cc, session, metrics, source=self.name, budget=budget, kind="refresh"
        )
        self.health = SourceHealth()
        #: The newest REST record per asset (symbol, name, change, VWAP are read from it).
        self.metadata: dict[str, Tick] = {}
        self._last_ts: dict[str, float] = {}
        self._bad = BadRecords(self.name, metrics)
        self._frame_logged: dict[str, float] = {}
        #: Connection attempts so far (for tests and logs).
        self.connects = 0

    # -- run ---------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        log.info(
            "coincap_ws_starting",
            url=self._safe_url,
            assets=list(self._assets),
            silence_timeout=self._silence,
            refresh_interval=self._config.ws_refresh_interval,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._refresh_metadata())
                await self._stream(emit)
        finally:
            if self._budget is not None:
                self._budget.end_stream()
                self._budget.close()

    async def _stream(self, emit: Emit) -> None:
        # 0.5 s, 1 s, 2 s ... plus up to 0.5 s of jitter, capped at max_backoff.
        backoff = tenacity.wait_exponential_jitter(
            multiplier=0.5, max=self._config.max_backoff, jitter=0.5
        )

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, StreamBroken) and exc.retry_after is not None:
                return exc.retry_after
            return backoff(state)

        while True:
            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(StreamBroken),
                wait=wait,
                before_sleep=self._before_reconnect,
                sleep=asyncio.sleep,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._session_once(emit)
            except StreamEnded:
                continue

    def _before_reconnect(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.debug("ws_reconnect_scheduled", error=str(exc), attempt=state.attempt_number, in_s=wait)

    async def _session_once(self, emit: Emit) -> None:
        """One connection, read until it ends; always ends in StreamBroken or StreamEnded."""
        self.connects += 1
        if self._budget is not None:
            reason = self._budget.refusal("stream")
            if reason is not None:
                self.health.spent(reason)
                self._metrics.ws_reconnects.labels("spent").inc()
                raise StreamBroken("spent", reason)
            # Its first minute is owed from now: no request made during the handshake
            # can take that credit.
            self._budget.open_stream()
        try:
            await self._connection(emit)
        finally:
            if self._budget is not None:
                # The started minute (a connection never made costs nothing).
                self._budget.end_stream()

    async def _connection(self, emit: Emit) -> NoReturn:
        """Connect, then read until the connection ends (in StreamBroken or StreamEnded)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._config.timeout):
                ws = await self._session.ws_connect(
                    self._config.ws_url,
                    params={"assets": ",".join(self._assets), "apiKey": self._key},
                    autoping=True,
                    heartbeat=None,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 429:
                retry_after = parse_retry_after(
                    exc.headers.get("Retry-After") if exc.headers else None
                )
                wait = (
                    "no Retry-After, backing off"
                    if retry_after is None
                    else f"waiting {retry_after:g} s as Retry-After asks"
                )
                self._ended(
                    "handshake",
                    f"server answered 429 too many requests: {wait}",
                    retry_after=retry_after,
                )
            if exc.status == 402 and self._budget is not None:
                # Payment required: the allowance is spent (the handshake has no body to
                # read, so only this status says it unambiguously).
                detail = f"stream refused: {exc.status} {exc.message}"
                self._budget.spent_by_api(detail)
                self.health.spent(detail)
            hint = ": check COINCAP_API_KEY" if exc.status in (401, 403) else ""
            self._ended("handshake", f"server answered {exc.status} {exc.message}{hint}")
        except TimeoutError:
            self._ended("error", f"no connection within {self._config.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            self._ended("error", self._key_masker.mask(f"{type(exc).__name__}: {exc}"))
        started = counted = heard = loop.time()
        # The first minute was allowed before connecting; whether the next one may begin
        # is asked shortly before each minute ends, frames or not.
        decide_at = started + 60 - _DECIDE_BEFORE if self._budget is not None else math.inf
        frames = 0
        (log.info if self.connects == 1 else log.debug)(
            "ws_connected", url=self._safe_url, attempt=self.connects
        )
        try:
            while True:
                now = loop.time()
                if self._budget is not None:
                    self._budget.charge_stream(now - counted)
                    counted = now
                    if now >= decide_at:
                        spent = self._budget.next_stream_minute()
                        if spent is not None:
                            self.health.spent(spent)
                            reason, detail = "spent", spent
                            break
                        decide_at += 60
                if now - heard >= self._silence:
                    reason, detail = "silent", f"no frame for {self._silence:g} s"
                    break
                try:
                    msg = await ws.receive(timeout=min(heard + self._silence, decide_at) - now)
                except TimeoutError:
                    continue  # the silence is too long, or a minute is about to end
                heard = loop.time()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    if self._on_frame(msg.data, emit):
                        frames += 1
                        if frames == 1 and self._budget is not None:
                            # Prices: an allowance CoinCap said was spent (a probe got
                            # through) is not.
                            self._budget.answered()
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._malformed("binary", f"{len(msg.data)} bytes")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason, detail = "error", self._key_masker.mask(str(ws.exception()))
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    reason, detail = "closed", f"close code {ws.close_code}"
                    break
        finally:
            if self._budget is not None:
                # Counted before the close, which a second cancellation may cut short;
                # _session_once's end_stream() charges the started minute.
                self._budget.charge_stream(loop.time() - counted)
            # A dead peer never answers the close handshake: do not wait long for it
            # (a cancelled close drops the connection).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await ws.close()
        stable = frames > 0 and loop.time() - started >= STABLE_SESSION
        self._ended(reason, detail, frames=frames, stable=stable)

    def _ended(
        self,
        reason: str,
        detail: str,
        *,
        frames: int = 0,
        stable: bool = False,
        retry_after: float | None = None,
    ) -> NoReturn:
        first = self.health.failing_since is None
        self.health.failed(f"stream {reason}: {detail}")
        self._metrics.ws_reconnects.labels(reason).inc()
        # A failure that repeats is said once, then counted (and logged at debug level).
        (log.warning if first else log.debug)(
            "ws_disconnected", reason=reason, detail=detail, frames=frames, reconnecting=True
        )
        if stable:
            raise StreamEnded
        raise StreamBroken(reason, detail, retry_after)

    # -- frames ------------------------------------------------------------------------

    def _on_frame(self, data: str, emit: Emit) -> bool:
        """Turn one text frame into ticks and emit them; False when nothing was usable."""
        try:
            frame = json.loads(data, parse_float=str, parse_int=str)
        except (ValueError, RecursionError):
            self._malformed("not_json", data[:40])
            return False
        if not isinstance(frame, dict):
            self._malformed("not_an_object", type(frame).__name__)
            return False
        received = clocks.wall.now()
        ticks: list[Tick] = []
        for asset, raw in frame.items():
            if asset not in self._wanted:
                self._bad.reject(asset, InvalidTick("unexpected_asset", "not asked for"))
                continue
            try:
                price = decimal_text(raw, field="price", required=True, allow_negative=False)
            except InvalidTick as exc:
                self._bad.reject(asset, exc)
                continue
            assert price is not None
            ticks.append(self._tick(asset, price, received))
        if not ticks:
            if frame:
                self._malformed("no_valid_price", f"{len(frame)} entries")
            return False
        if self.health.failing_since is not None:
            log.info("ws_recovered", after_s=round(self.health.failing_for(), 1))
        self.health.ok()
        emit(ticks)
        return True

    def _tick(self, asset: str, price: str, received: float) -> Tick:
        # Strictly increasing time per asset: two frames within the clock's resolution
        # are still two observations. A clock that stepped back (clocks.StepWatch) is
        # followed: the ticks carry the corrected time, not the old one frozen.
        last = self._last_ts.get(asset, 0.0)
        ts = received if received > last or received < last - clocks.STEP_BACK else last + 1e-6
        self._last_ts[asset] = ts
        # A value that is good again may be reported again when it next fails.
        self._bad.good((asset,))
        meta = self.metadata.get(asset)
        if meta is None:
            symbol, name = describe(asset)
            return Tick(ts, asset, symbol, name, price, None, None, None, self.name)
        # The REST record of this asset, made by this source: only time and price differ.
        return meta._replace(timestamp=ts, price_usd=price)

    def _malformed(self, reason: str, detail: str) -> None:
        self._metrics.ws_malformed_frames.labels(reason).inc()
        # A stream of nothing but garbage is as good as down (a good frame clears it).
        self.health.failed(f"malformed frame: {reason}")
        now = time.monotonic()
        if now - self._frame_logged.get(reason, -math.inf) >= _FRAME_LOG_EVERY:
            self._frame_logged[reason] = now
            log.warning("ws_frame_malformed", reason=reason, detail=detail, action="skipped")

    # -- metadata over REST ------------------------------------------------------------

    async def _refresh_metadata(self) -> None:
        async for _ in poll_slots(self._config.ws_refresh_interval):
            try:
                response = await self._client.retrying(
                    functools.partial(self._client.get_assets, self._assets)
                )
            except AllowanceSpent as exc:
                log.debug("ws_metadata_refresh_skipped", reason=str(exc))
                continue
            except ApiError as exc:
                log.error(
                    "ws_metadata_refresh_failed",
                    kind=exc.kind,
                    error=str(exc),
                    keeping="the previous values",
                )
                continue
            fresh = 0
            for record in response.records:
                try:
                    tick = tick_from_api(record, response.timestamp, source=self.name)
                except InvalidTick as exc:
                    self._bad.reject(record_label(record), exc)
                    continue
                if tick.id in self._wanted:
                    self.metadata[tick.id] = tick
                    fresh += 1
            log.debug("ws_metadata_refreshed", assets=fresh)
