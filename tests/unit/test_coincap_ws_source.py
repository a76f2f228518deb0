"""The coincap-ws source against a local websocket fake of CoinCap's price stream
(and the REST fake for the fields the stream lacks): frames, faults, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import structlog.testing

from cryptostream import clocks
from cryptostream.config import Config
from cryptostream.credits import CreditBudget
from cryptostream.metrics import Metrics
from cryptostream.source.coincap_ws import CoinCapWsSource
from cryptostream.tick import Tick
from tests.conftest import API_KEY, ConfigFactory, wait_until
from tests.support.fake_coincap import FakeCoinCap, Fault
from tests.support.fake_coincap_ws import FakeCoinCapWs
from tests.unit.test_credits import DAY, MARCH, Clock

#: asyncio may run a timer up to its clock resolution early.
_CLOCK_SLACK = 0.01


class Collector:
    """The emit callback: keeps every batch in order."""

    def __init__(self) -> None:
        self.batches: list[list[Tick]] = []

    def __call__(self, ticks: list[Tick]) -> None:
        self.batches.append(ticks)

    @property
    def ticks(self) -> list[Tick]:
        return [t for batch in self.batches for t in batch]


@pytest.fixture
async def fake_ws() -> AsyncIterator[FakeCoinCapWs]:
    async with FakeCoinCapWs(api_key=API_KEY, interval=0.05) as fake:
        yield fake


@pytest.fixture
def ws_config(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, fake_ws: FakeCoinCapWs
) -> Callable[..., Config]:
    def build(**env: str) -> Config:
        return make_config(
            base_url=fake_coincap.base_url,
            env={
                "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
                "CRYPTOSTREAM_COINCAP__WS_URL": fake_ws.ws_url,
                "CRYPTOSTREAM_COINCAP__WS_SILENCE_TIMEOUT": "0.5",
                "CRYPTOSTREAM_COINCAP__WS_REFRESH_INTERVAL": "60",
                **env,
            },
        )

    return build


class Running:
    def __init__(self, source: CoinCapWsSource, out: Collector, metrics: Metrics) -> None:
        self.source = source
        self.out = out
        self.metrics = metrics

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name + "_total", labels) or 0.0


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Running]:
    metrics = Metrics()
    out = Collector()
    async with aiohttp.ClientSession() as session:
        source = CoinCapWsSource(config, session, metrics)
        task = asyncio.create_task(source.run(out))
        try:
            yield Running(source, out, metrics)
        finally:
            task.cancel()
            # A crash of the source (not a cancellation) fails the test here.
            with contextlib.suppress(asyncio.CancelledError):
                await task


def prices(batch: list[Tick]) -> dict[str, Any]:
    return {t.id: t.price_usd for t in batch}


async def test_each_frame_becomes_ticks_with_the_rest_fields_from_rest(
    ws_config: Callable[..., Config], fake_ws: FakeCoinCapWs, fake_coincap: FakeCoinCap
) -> None:
    fake_ws.pause()  # let the REST metadata arrive first, so every field is known
    async with running(ws_config()) as run:
        await wait_until(lambda: len(run.source.metadata) == 6, what="metadata")
        fake_ws.resume()
        await wait_until(lambda: len(run.out.batches) >= 5, what="five frames")
    batches = run.out.batches
    # The recorded frames, exactly: only the assets that changed, digits as sent.
    assert prices(batches[0]) == {"bitcoin": "86466.98", "ethereum": "2141.17"}
    assert prices(batches[1]) == {"bitcoin": "86467.12"}
    assert prices(batches[2]) == {"solana": "143.04", "xrp": "2.4301", "bitcoin": "86467.40"}
    # Every frame sent became one batch, none lost or doubled.
    sent = fake_ws.frames_for(1)
    assert [prices(b) for b in batches] == sent[: len(batches)]
    btc = batches[0][0]
    assert (btc.symbol, btc.name, btc.source) == ("BTC", "Bitcoin", "coincap-ws")
    assert btc.change_percent_24h == "-2.7270275730313168"  # from REST /assets
    assert btc.vwap_24h == "88312.9332932018497620"
    times = [t.timestamp for t in run.out.ticks if t.id == "bitcoin"]
    assert times == sorted(times) and len(set(times)) == len(times)
    handshake = fake_ws.requests_to("/prices")[0]
    assert handshake.query["assets"] == "bitcoin,ethereum,tether,xrp,binance-coin,solana"
    assert handshake.query["apiKey"] == API_KEY
    assert fake_ws.handshakes == 1
    assert run.source.health.healthy


async def test_metadata_is_refreshed_periodically(
    ws_config: Callable[..., Config], fake_coincap: FakeCoinCap
) -> None:
    async with running(ws_config(CRYPTOSTREAM_COINCAP__WS_REFRESH_INTERVAL="0.3")) as run:
        await wait_until(lambda: fake_coincap.calls("/v3/assets") >= 2, what="two refreshes")
        seen = len(run.out.ticks)
        await wait_until(
            lambda: any(t.id == "bitcoin" for t in run.out.ticks[seen:]), what="a later tick"
        )
    later = next(t for t in run.out.ticks[seen:] if t.id == "bitcoin")
    assert later.change_percent_24h == "-3.5085291977089613"  # assets_later.json


async def test_malformed_frames_are_skipped_and_counted_the_stream_goes_on(
    ws_config: Callable[..., Config], fake_ws: FakeCoinCapWs
) -> None:
    async with running(ws_config()) as run:
        await wait_until(lambda: len(run.out.batches) >= 1, what="a first frame")
        fake_ws.pause()
        for text in ("not json", "[1, 2]", '{"bitcoin": "NaN"}', '{"bitcoin": "-1", "xrp": "2.5"}'):
            await fake_ws.push(text)
        await fake_ws.push_binary(b"\x00\x01")
        await wait_until(
            lambda: run.count("cryptostream_ws_malformed_frames", reason="binary") == 1,
            what="the binary frame",
        )
        fake_ws.resume()
        before = len(run.out.batches)
        await wait_until(lambda: len(run.out.batches) >= before + 2, what="frames after")
    for reason in ("not_json", "not_an_object", "no_valid_price", "binary"):
        assert run.count("cryptostream_ws_malformed_frames", reason=reason) == 1, reason
    assert run.count("cryptostream_ticks_invalid", reason="non_finite_price") == 1
    assert run.count("cryptostream_ticks_invalid", reason="negative_price") == 1
    # The good value next to the bad one was kept.
    assert any(t.id == "xrp" and t.price_usd == "2.5" for t in run.out.ticks)
    assert not any(t.price_usd in ("NaN", "-1") for t in run.out.ticks)
    assert fake_ws.handshakes == 1, "a bad frame is no reason to reconnect"


async def test_a_dropped_connection_is_reconnected(
    ws_config: Callable[..., Config], fake_ws: FakeCoinCapWs
) -> None:
    async with running(ws_config()) as run:
        await wait_until(lambda: len(run.out.batches) >= 2, what="frames")
        fake_ws.drop()
        await fake_ws.wait_for_handshakes(2)
        before = len(run.out.batches)
        await wait_until(lambda: len(run.out.batches) >= before + 2, what="frames again")
        reconnects = sum(
            run.count("cryptostream_ws_reconnects", reason=r) for r in ("closed", "error")
        )
        assert reconnects == 1
        assert run.source.health.healthy


async def test_a_silent_stream_is_detected_and_reconnected(
    ws_config: Callable[..., Config], fake_ws: FakeCoinCapWs
) -> None:
    async with running(ws_config()) as run:
        await wait_until(lambda: len(run.out.batches) >= 1, what="a first frame")
        fake_ws.pause()  # connected, but nothing comes (0.5 s silence timeout)
        await wait_until(
            lambda: run.count("cryptostream_ws_reconnects", reason="silent") >= 1,
            what="silence detected",
        )
        assert not run.source.health.healthy
        assert "silent" in run.source.health.last_error
        await fake_ws.wait_for_handshakes(2)
        fake_ws.resume()
        before = len(run.out.batches)
        await wait_until(lambda: len(run.out.batches) > before, what="frames after silence")
        assert run.source.health.healthy


async def test_a_clean_close_is_reconnected(
    ws_config: Callable[..., Config], fake_ws: FakeCoinCapWs
) -> None:
    async with running(ws_config()) as run:
        await wait_until(lambda: len(run.out.batches) >= 1, what="a first frame")
        await fake_ws.close_all()
        await fake_ws.wait_for_handshakes(2)
        assert run.count("cryptostream_ws_reconnects", reason="closed") == 1


async def test_refused_handshakes_back_off_then_connect(
    ws_config: Callable[..., Config], fake_ws: FakeCoinCapWs
) -> None:
    fake_ws.inject(Fault.status(503, path_prefix="/prices", times=2))
    async with running(ws_config()) as run:
        await wait_until(lambda: len(run.out.batches) >= 1, what="frames after two refusals")
        assert run.count("cryptostream_ws_reconnects", reason="handshake") == 2
    assert [r.status for r in fake_ws.requests_to("/prices")][:2] == [503, 503]


async def test_a_rate_limited_handshake_waits_what_retry_after_says(
    ws_config: Callable[..., Config], fake_ws: FakeCoinCapWs
) -> None:
    # The backoff alone would retry within 0.1 s; the server asks for a full second.
    fake_ws.rate_limit(retry_after="1")
    async with running(ws_config(CRYPTOSTREAM_COINCAP__MAX_BACKOFF="0.1")) as run:
        await fake_ws.wait_for_calls(2, "/prices")
        await wait_until(lambda: len(run.out.batches) >= 1, what="frames after the 429")
        assert run.count("cryptostream_ws_reconnects", reason="handshake") == 1
    refused, accepted = fake_ws.handshake_times()[:2]
    assert [r.status for r in fake_ws.requests_to("/prices")][:2] == [429, 101]
    # Both times are taken by the fake, on one clock: the wait it asked for, then soon.
    assert 1.0 - _CLOCK_SLACK <= accepted - refused < 1.0 + 2.0


async def test_a_wrong_key_is_reported_without_the_key(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    async with FakeCoinCapWs(api_key="another-key-entirely") as other:
        config = make_config(
            base_url=fake_coincap.base_url,
            env={
                "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
                "CRYPTOSTREAM_COINCAP__WS_URL": other.ws_url,
            },
        )
        async with running(config) as run:
            await wait_until(
                lambda: run.count("cryptostream_ws_reconnects", reason="handshake") >= 1,
                what="a refused handshake",
            )
            error = run.source.health.last_error
    assert "401" in error and "COINCAP_API_KEY" in error
    assert API_KEY not in error
    assert run.out.batches == []


async def test_a_url_in_an_error_never_shows_the_key_in_any_encoding(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap
) -> None:
    """aiohttp's redirect error quotes the URL, key included, as yarl encoded it
    (``%2B`` for ``+``, ``%3D`` for ``=``): the error text must hide that spelling too."""
    key = "cc+Live/Q7vX=2mN9+pL4/sR8tK=="
    async with FakeCoinCapWs(api_key=key) as other:
        # A redirect loop (a proxy, a moved endpoint) ends in TooManyRedirects.
        other.inject(
            Fault.status(307, headers={"Location": "/prices"}, path_prefix="/prices", times=None)
        )
        config = make_config(
            base_url=fake_coincap.base_url,
            env={
                "COINCAP_API_KEY": key,
                "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
                "CRYPTOSTREAM_COINCAP__WS_URL": other.ws_url,
            },
        )
        async with running(config) as run:
            await wait_until(
                lambda: run.count("cryptostream_ws_reconnects", reason="error") >= 1,
                what="a failed connection",
            )
            error = run.source.health.last_error
    assert "TooManyRedirects" in error and "apiKey=" in error, error
    assert "**" in error.split("apiKey=", 1)[1], error
    for spelling in (key, "cc%2BLive", "Q7vX%3D2mN9", "sR8tK%3D%3D", "Live/Q7vX"):
        assert spelling not in error, error


# -- credits: the budget is never overspent -------------------------------------------------
#
# A scripted connection on a timeline of its own: the event loop's clock is moved to each
# event of the script (a price frame, a REST refresh's budget calls, a pause) or to the
# end of the source's receive timeout, so minutes connected pass at once and every budget
# call happens at the second the script says. Each test runs on an event loop of its own,
# the only one whose clock moves.

#: The budget of these tests; what is left of it is set per test.
MONTHLY = 100
#: A REST refresh of one asset: well under 2,500 bytes, one credit.
REFRESH_BYTES = 400
_HOLD = "hold"
_CLOSE = "close"

Action = Callable[[], object] | str | None


class Timeline:
    """The running event loop's clock, moved forward by the script."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        real = loop.time
        self.offset = 0.0

        def moved() -> float:
            return real() + self.offset

        loop.time = moved  # type: ignore[method-assign]
        self.now = moved

    def move_to(self, when: float) -> None:
        self.offset += max(0.0, when - self.now())


class ScriptedWs:
    """One connection: ``(seconds after it opened, action)`` events, where the action is
    None for a price frame, :data:`_CLOSE` for CoinCap's close, :data:`_HOLD` to wait
    there until cancelled, or a callable (made at that second)."""

    close_code = 1000

    def __init__(
        self,
        timeline: Timeline,
        frames: Iterable[float],
        calls: Iterable[tuple[float, Action]] = (),
    ) -> None:
        self._timeline = timeline
        events: list[tuple[float, Action]] = [(t, None) for t in frames]
        self._events = sorted([*events, *calls], key=lambda e: e[0])
        self.opened = math.nan
        #: Seconds connected when the source began to close the connection.
        self.closed_after: float | None = None
        self.holding = asyncio.Event()
        self.closing = asyncio.Event()
        #: A close that never completes (a peer that does not answer it).
        self.slow_close = False

    def open(self) -> None:
        self.opened = self._timeline.now()

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        await asyncio.sleep(0)
        deadline = self._timeline.now() + (timeout or math.inf)
        while self._events and self.opened + self._events[0][0] <= deadline:
            at, action = self._events.pop(0)
            self._timeline.move_to(self.opened + at)
            if action is None:
                return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, '{"bitcoin": "86467.40"}', None)
            if action == _CLOSE:
                return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, 1000, None)
            if action == _HOLD:
                self.holding.set()
                await asyncio.get_running_loop().create_future()
            elif callable(action):
                action()
        self._timeline.move_to(deadline)
        raise TimeoutError

    def exception(self) -> BaseException | None:
        return None

    async def close(self) -> bool:
        if self.closed_after is None:
            self.closed_after = self._timeline.now() - self.opened
        self.closing.set()
        if self.slow_close:
            await asyncio.get_running_loop().create_future()
        return True


class ScriptedSession:
    """The HTTP session: the scripted connections, one per handshake, then refusals;
    ``during_handshake`` runs while the first handshake is on its way. The REST refresh
    at start never answers (the scripts make their own, as budget calls)."""

    def __init__(
        self, *connections: ScriptedWs, during_handshake: Callable[[], object] | None = None
    ) -> None:
        self._connections = list(connections)
        self._during_handshake = during_handshake

    async def ws_connect(self, url: str, **kwargs: object) -> ScriptedWs:
        await asyncio.sleep(0)
        if self._during_handshake is not None:
            self._during_handshake()
            self._during_handshake = None
        if not self._connections:
            raise aiohttp.ClientConnectionError("the script has no more connections")
        ws = self._connections.pop(0)
        ws.open()
        return ws

    @contextlib.asynccontextmanager
    async def get(self, *args: object, **kwargs: object) -> AsyncIterator[None]:
        await asyncio.get_running_loop().create_future()
        yield


async def settled(predicate: Callable[[], bool], what: str) -> None:
    """wait_until on the real clock (the loop's own jumps with the script)."""
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Budgeted:
    def __init__(self, make_config: ConfigFactory, tmp_path: Path, left: int) -> None:
        self.config = make_config(
            env={
                "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
                "CRYPTOSTREAM_SOURCE__ASSETS": "bitcoin",
                "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": str(MONTHLY),
                "CRYPTOSTREAM_COINCAP__WS_SILENCE_TIMEOUT": "30",
                "CRYPTOSTREAM_COINCAP__WS_REFRESH_INTERVAL": "86400",
                "CRYPTOSTREAM_STORAGE__FSYNC": "false",
            }
        )
        self.wall = Clock(MARCH + DAY)
        self.metrics = Metrics()
        self.budget = CreditBudget(self.config, self.metrics, clock=self.wall)
        self.budget.ledger.charge("backfill", MONTHLY - left)
        self.timeline = Timeline()
        self.refreshes: list[bool] = []
        self.task: asyncio.Task[None] | None = None

    def refresh(self) -> None:
        """A REST refresh's budget calls, as the CoinCap client makes them."""
        allowed = self.budget.refusal("refresh") is None
        if allowed:
            self.budget.charged("refresh", 200, REFRESH_BYTES)
        self.refreshes.append(allowed)

    def used(self) -> dict[str, int]:
        return dict(self.budget.ledger.current().by_kind)

    @contextlib.asynccontextmanager
    async def running(self, session: ScriptedSession) -> AsyncIterator[CoinCapWsSource]:
        source = CoinCapWsSource(
            self.config, cast(aiohttp.ClientSession, session), self.metrics, self.budget
        )
        task = self.task = asyncio.create_task(source.run(Collector()))
        try:
            yield source
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def every(step: float, until: float, first: float | None = None) -> list[float]:
    start = step if first is None else first
    return [start + i * step for i in range(int((until - start) // step) + 1)]


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.parametrize(
    ("left", "frames", "refresh_at", "stream", "refreshed"),
    [
        # One credit left: the first minute, never the second, however often frames come.
        (1, every(0.5, 900, first=0.3), None, 1, None),
        # A refresh in the first minute takes the credit of the second, not of the first.
        (2, every(0.5, 900, first=0.3), 30.0, 1, True),
        # ...nor, in the second minute, the one of the third.
        (3, every(0.5, 900, first=0.3), 70.0, 2, True),
        # Once the stream may go on, the next minute's credit is its own.
        (2, every(0.5, 900, first=0.3), 57.0, 2, False),
        # Frames far apart (the silence timeout is 30 s): no minute begins unchecked.
        (4, every(29, 2000), None, 4, None),
        (7, every(29, 2000), None, 7, None),
    ],
    ids=[
        "1-left",
        "refresh-1st-minute",
        "refresh-2nd-minute",
        "refresh-once-the-next-is-allowed",
        "sparse-4",
        "sparse-7",
    ],
)
async def test_the_stream_stops_before_a_minute_it_cannot_pay(
    make_config: ConfigFactory,
    tmp_path: Path,
    left: int,
    frames: list[float],
    refresh_at: float | None,
    stream: int,
    refreshed: bool | None,
) -> None:
    b = Budgeted(make_config, tmp_path, left)
    calls = [] if refresh_at is None else [(refresh_at, b.refresh)]
    ws = ScriptedWs(b.timeline, frames, calls)
    async with b.running(ScriptedSession(ws)) as source:
        await settled(lambda: ws.closed_after is not None, "the stream to stop")
        assert source.health.exhausted
        assert "budget is spent" in source.health.last_error
    # It used what it could, and not a credit more: it stopped before the next minute.
    assert b.budget.ledger.used() == MONTHLY
    assert b.used().get("stream") == stream
    assert ws.closed_after is not None and ws.closed_after < 60 * stream
    assert b.refreshes == ([] if refreshed is None else [refreshed])


@pytest.mark.asyncio(loop_scope="function")
async def test_a_request_during_the_handshake_leaves_the_first_minute_its_credit(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    b = Budgeted(make_config, tmp_path, 1)
    ws = ScriptedWs(b.timeline, every(1, 900))
    async with b.running(ScriptedSession(ws, during_handshake=b.refresh)):
        await settled(lambda: ws.closed_after is not None, "the stream to stop")
    assert b.refreshes == [False]
    assert b.used().get("stream") == 1
    assert b.budget.ledger.used() == MONTHLY


@pytest.mark.asyncio(loop_scope="function")
async def test_a_stop_charges_the_started_minute_even_if_the_close_is_cut_short(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    b = Budgeted(make_config, tmp_path, MONTHLY)
    ws = ScriptedWs(b.timeline, every(1, 30), [(30.5, _HOLD)])
    ws.slow_close = True
    async with b.running(ScriptedSession(ws)):
        await ws.holding.wait()
        # The shutdown cancels the source, and cancels it again while it closes.
        task = b.task
        assert task is not None
        task.cancel()
        await ws.closing.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ws.closed_after == pytest.approx(30.5, abs=0.1)
    assert b.used().get("stream") == 1


@pytest.mark.asyncio(loop_scope="function")
async def test_a_connection_without_prices_does_not_clear_the_spent_mark(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """The hourly probe is let through, CoinCap accepts the handshake, then closes: that
    says nothing about the allowance (a price would)."""
    b = Budgeted(make_config, tmp_path, MONTHLY)
    b.wall.now -= 2 * 3600
    b.budget.spent_by_api("402 the allowance is spent")
    b.wall.now += 2 * 3600
    closes = ScriptedWs(b.timeline, [], [(5.0, _CLOSE)])
    async with b.running(ScriptedSession(closes)) as source:
        await settled(lambda: closes.closed_after is not None, "the connection to end")
        await settled(lambda: source.connects >= 2, "the next attempt")
        assert b.budget.ledger.current().spent_at is not None
        assert b.budget.exhausted == "coincap"


class SteppingWall:
    """This machine's wall clock at real speed, which the test can step back."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_a_clock_step_back_gives_the_corrected_time_not_a_frozen_one(
    ws_config: Callable[..., Config],
    fake_ws: FakeCoinCapWs,
    fake_coincap: FakeCoinCap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Price frames carry no time: each tick is stamped on arrival with this machine's
    clock. After that clock steps back an hour (NTP, a restored VM) the ticks carry the
    corrected time; before, they stayed at the old time plus a microsecond per frame
    for the whole hour. The step is said once."""
    wall_clock = SteppingWall()
    monkeypatch.setattr(clocks, "wall", clocks.StepWatch(wall_clock))
    with structlog.testing.capture_logs() as logs:
        async with running(ws_config()) as run:
            await wait_until(lambda: len(run.out.batches) >= 3, what="frames")
            before = len(run.out.ticks)
            newest = max(t.timestamp for t in run.out.ticks)
            wall_clock.offset = -3600.0
            await wait_until(lambda: len(run.out.ticks) >= before + 6, what="frames after")
    after = run.out.ticks[before + 1 :]  # one frame may have been stamped mid-step
    assert after
    for tick in after:
        assert abs(tick.timestamp - (time.time() - 3600)) < 30, (tick.timestamp, newest)
    steps = [e for e in logs if e["event"] == "clock_stepped_back"]
    assert len(steps) == 1 and round(steps[0]["by_s"]) == 3600
