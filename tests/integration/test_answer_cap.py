"""Every HTTP answer is capped: a gzip bomb from an upstream or a proxy is refused as it
arrives, counted, logged, and charged only for what was read (real HTTP on loopback)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from cryptostream.credits import CreditBudget
from cryptostream.credits.ledger import credits_for
from cryptostream.metrics import Metrics
from cryptostream.source.coincap import CoinCapClient
from cryptostream.source.http import MAX_ANSWER_BYTES, AnswerTooLarge, TransientError
from tests.conftest import ConfigFactory

pytestmark = pytest.mark.integration

#: 64 MB of JSON-ish filler that gzip turns into about 60 KB on the wire.
BOMB = gzip.compress(b'{"data":[' + b" " * (64 * 1024 * 1024) + b"]}", compresslevel=9)


@pytest.fixture
async def bomb_server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            body=BOMB,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_get("/v3/assets", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v3"
    finally:
        await runner.cleanup()


async def test_a_gzip_bomb_is_refused_counted_logged_and_charged_for_what_was_read(
    make_config: ConfigFactory, bomb_server: str
) -> None:
    assert len(BOMB) < 200_000
    config = make_config(base_url=bomb_server)
    metrics = Metrics()
    budget = CreditBudget(config, metrics)
    async with aiohttp.ClientSession() as session:
        client = CoinCapClient(config.coincap, session, metrics, budget=budget)
        with capture_logs() as logs, pytest.raises(AnswerTooLarge) as refused:
            await client.get_assets(("bitcoin",))
    exc = refused.value
    # A transient error for the retry policy (a proxy's bad minute), never a crash.
    assert isinstance(exc, TransientError)
    assert MAX_ANSWER_BYTES < exc.nbytes <= MAX_ANSWER_BYTES + 1024 * 1024
    assert f"more than {MAX_ANSWER_BYTES:,} bytes" in str(exc)
    # Charged by what was read (before the cap, the whole 64 MB: 26,844 credits).
    used = budget.ledger.current().credits
    assert used == credits_for(exc.nbytes) <= credits_for(MAX_ANSWER_BYTES + 64 * 1024)
    assert metrics.api_requests.labels("too_large")._value.get() == 1
    events = [e for e in logs if e["event"] == "api_answer_too_large"]
    assert len(events) == 1
    assert events[0]["limit_bytes"] == MAX_ANSWER_BYTES and events[0]["source"] == "coincap"
    budget.close()
