"""The coincap-ws source against a local websocket fake of CoinCap's price stream
(and the REST fake for the fields the stream lacks): frames, faults, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from cryptostream.config import Config
from cryptostream.metrics import Metrics
from cryptostream.source.coincap_ws import CoinCapWsSource
from cryptostream.tick import Tick
from tests.conftest import API_KEY, ConfigFactory, wait_until
from tests.support.fake_coincap import FakeCoinCap, Fault
from tests.support.fake_coincap_ws import FakeCoinCapWs

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
