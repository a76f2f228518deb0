"""The dashboard in headless Chromium, against the real service fed through real Kafka.

The service polls the fake CoinCap once at start (a long poll interval), so
the page shows known numbers: the seeded CSV history plus six ticks; every
later tick is one the test publishes to the Kafka topic itself.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from cryptostream.config import Config
from cryptostream.csvrow import HEADER
from cryptostream.tick import Tick
from tests.browser.conftest import Tab
from tests.conftest import ConfigFactory, free_port, wait_until
from tests.support.fake_coincap import FakeCoinCap
from tests.support.topic import csv_rows

pytestmark = pytest.mark.browser

DAY = 86400
# Three UTC days across a year boundary, to test the year / month / day pickers.
DAYS = [
    dt.datetime(2024, 12, 31, tzinfo=dt.UTC).timestamp(),
    dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp(),
    dt.datetime(2025, 1, 2, tzinfo=dt.UTC).timestamp(),
]
HISTORY_ASSETS = {"bitcoin": ("BTC", "Bitcoin", 80000.0), "ethereum": ("ETH", "Ethereum", 3000.0)}
ALL_ASSETS = ["bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana"]


def seed_history(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "crypto_data.csv").open("w") as fh:
        fh.write(HEADER)
        for d, start in enumerate(DAYS):
            for i in range(24):
                for asset, (symbol, name, base) in HISTORY_ASSETS.items():
                    first = base * (1 + d / 100)
                    price = first * (1 + math.sin(i / 4) / 50)
                    ts = start + i * 3600 + (0 if asset == "bitcoin" else 7)
                    fh.write(f"{ts!r},{asset},{symbol},{name},{price:.8f},0.5,{first:.8f},\n")


def fmt_price(text: str) -> str:
    """What the page shows for a price (en-US, as dashboard.js formats it)."""
    v = float(text)
    return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.6g}"


def fmt_pct(text: str) -> str:
    v = float(text)
    shown = f"{v:.2f}"
    return "0.00 %" if shown in ("0.00", "-0.00") else f"{'+' if v > 0 else ''}{shown} %"


def fmt_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def snapshot(tab: Tab) -> dict[str, Any]:
    result: dict[str, Any] = await tab.page.evaluate("window.cryptostreamDashboard.snapshot()")
    return result


async def publish(config: Config, bootstrap: str, *ticks: Tick) -> None:
    """Put ticks on the service's topic, as another producer would."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for t in ticks:
            await producer.send_and_wait(config.kafka.topic, t.to_json(), key=t.key())
    finally:
        await producer.stop()


def service_config(
    make_config: ConfigFactory, fake: FakeCoinCap, bootstrap: str, port: int, **kw: Any
) -> Config:
    # One poll at start, then none for an hour: the test adds every later tick itself.
    env = {"CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "3600", "CRYPTOSTREAM_WEB__PORT": str(port)}
    return make_config(base_url=fake.base_url, bootstrap=bootstrap, env=env, **kw)


async def wait_for_rows(running: Any, written: int, total: int) -> None:
    """Until this run wrote ``written`` rows and the dashboard holds ``total``."""
    metrics = running.service.metrics
    await wait_until(lambda: metrics.ticks_written._value.get() >= written, what="rows written")
    dash = running.service.dashboard
    await wait_until(lambda: dash.state == "ready" and dash.store.records >= total, what="store")


async def open_seeded_dashboard(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service: Any,
    tab: Tab,
    data_dir: Path,
) -> tuple[Any, Config]:
    """The service on three seeded days of history, its page open and connected."""
    seed_history(data_dir)
    port = free_port()
    config = service_config(make_config, fake_coincap, kafka_bootstrap, port, data_dir=data_dir)
    running = await run_service(config)
    seeded = 3 * 24 * len(HISTORY_ASSETS)
    await wait_for_rows(running, 6, seeded + 6)  # the poll at start is in too
    await tab.page.goto(f"http://127.0.0.1:{port}/")
    await tab.page.wait_for_function("() => window.cryptostreamDashboard.snapshot().connected")
    return running, config


async def test_dashboard_history_ranges_live_tick_table_and_cards(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service: Any,
    tab: Tab,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    running, config = await open_seeded_dashboard(
        make_config, fake_coincap, kafka_bootstrap, run_service, tab, data_dir
    )
    page = tab.page

    # One series per asset, with a legend entry each; "All" shows every row.
    await page.click("button[data-live=all]")
    csv_path = data_dir / "crypto_data.csv"
    _, rows = csv_rows(csv_path)
    per_asset = {a: sum(1 for r in rows if r["id"] == a) for a in ALL_ASSETS}
    await page.wait_for_function(
        "n => window.cryptostreamDashboard.snapshot().series.bitcoin.points === n",
        arg=per_asset["bitcoin"],
    )
    snap = await snapshot(tab)
    assert {a: s["points"] for a, s in snap["series"].items()} == per_asset
    legend = await page.locator("#legend .legend-item").evaluate_all(
        "els => els.map(e => e.dataset.asset)"
    )
    assert legend == ALL_ASSETS
    await tab.screenshot("all")

    # Zoom in with the mouse wheel, then ask for the full detail of that window.
    box = await page.locator("#chart").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        seen = (await snapshot(tab))["visible"]
        await page.mouse.wheel(0, -300)
        await page.wait_for_function(
            "w => { const v = window.cryptostreamDashboard.snapshot().visible;"
            " return v.to - v.from < w; }",
            arg=seen["to"] - seen["from"],
        )
    visible = (await snapshot(tab))["visible"]
    await page.click("#zoom-view")
    # The chart holds only points of the window once the answer is in.
    await page.wait_for_function(
        "() => { const s = window.cryptostreamDashboard.snapshot(), r = s.range;"
        " return r.live === null && Object.values(s.series).every("
        " x => x.points === 0 || (r.from <= x.first && x.last <= r.to)); }"
    )
    zoomed = await snapshot(tab)
    assert zoomed["range"]["from"] == math.floor(visible["from"])
    assert zoomed["range"]["to"] == math.ceil(visible["to"])

    # Cards: totals of the CSV; the source in use.
    last_ts = max(float(r["timestamp"]) for r in rows)
    cards = {
        c: await page.locator(f"#card-{c} .value").inner_text()
        for c in ("assets", "records", "days", "last", "source")
    }
    today = dt.datetime.fromtimestamp(last_ts, tz=dt.UTC).date()
    assert cards == {
        "assets": "6",
        "records": f"{len(rows):,}",
        "days": str(len({*(dt.date(2024, 12, 31) + dt.timedelta(d) for d in range(3)), today})),
        "last": fmt_time(last_ts),
        "source": "coincap",
    }
    assert await page.locator("#demo-badge").is_hidden()

    # The table: the last row of each asset, as in crypto_last_values.csv.
    _, last_rows = csv_rows(data_dir / "crypto_last_values.csv")
    for r in last_rows:
        row = page.locator(f'#last-table tr[data-asset="{r["id"]}"]')
        assert await row.locator(".price").get_attribute("data-price") == r["priceUsd"]
        assert await row.locator(".price").inner_text() == fmt_price(r["priceUsd"])
        assert await row.locator(".change").inner_text() == fmt_pct(r["changePercent24Hr"])
        assert await row.locator(".time").inner_text() == fmt_time(float(r["timestamp"]))

    # Year 2024: only 31 December's points; the chart shows that day.
    await page.select_option("#pick-year", "2024")
    await page.wait_for_function(
        "end => { const s = window.cryptostreamDashboard.snapshot().series.bitcoin;"
        " return s.points === 24 && s.last < end; }",
        arg=DAYS[1],
    )
    snap = await snapshot(tab)
    end_2024 = DAYS[1]
    for asset, s in snap["series"].items():
        expected = 24 if asset in HISTORY_ASSETS else 0
        assert s["points"] == expected, asset
        if expected:
            assert DAYS[0] <= s["first"] and s["last"] < end_2024
    assert DAYS[0] - 3600 <= snap["visible"]["from"] and snap["visible"]["to"] < end_2024 + 3600

    # 2025 → January → the 2nd: one day of the two in that month.
    await page.select_option("#pick-year", "2025")
    await page.select_option("#pick-month", "01")
    await page.select_option("#pick-day", "02")
    await page.wait_for_function(
        "d => { const s = window.cryptostreamDashboard.snapshot().series.ethereum;"
        " return s.points === 24 && s.first >= d; }",
        arg=DAYS[2],
    )
    assert "2025-01-02 00:00:00" in await page.locator("#range-label").inner_text()
    await tab.screenshot("day")

    # Live: a tick published to Kafka reaches the chart, the table and the cards.
    await page.click("button[data-live='86400']")
    await page.wait_for_function(
        "() => window.cryptostreamDashboard.snapshot().series.bitcoin.points === 1"
    )
    now = dt.datetime.now(dt.UTC).timestamp()
    live = Tick(now, "bitcoin", "BTC", "Bitcoin", "91234.5", "3.25", "90000", "90500")
    await publish(config, kafka_bootstrap, live)
    price_cell = page.locator('#last-table tr[data-asset="bitcoin"] .price')
    await page.wait_for_function(
        "() => document.querySelector('#last-table tr[data-asset=bitcoin] .price')"
        ".dataset.price === '91234.5'"
    )
    assert await price_cell.inner_text() == "91,234.50"
    change = page.locator('#last-table tr[data-asset="bitcoin"] .change')
    assert await change.inner_text() == "+3.25 %"
    snap = await snapshot(tab)
    btc = snap["series"]["bitcoin"]
    assert btc["points"] == 2 and btc["last"] == pytest.approx(now)
    # The variation is against the day's first bitcoin row in the file (the sink's
    # firstValue), not the message's 90000: the poll at start came first today.
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    first_today = next(
        float(r["priceUsd"])
        for r in rows
        if r["id"] == "bitcoin"
        and dt.datetime.fromtimestamp(float(r["timestamp"]), dt.UTC).date() == today
    )
    assert btc["lastValue"] == pytest.approx((91234.5 / first_today - 1) * 100, abs=1e-5)
    assert await page.locator("#card-records .value").inner_text() == f"{len(rows) + 1:,}"
    assert await page.locator("#card-last .value").inner_text() == fmt_time(now)

    # Absolute prices, and hiding an asset from the legend.
    await page.click("#mode-abs")
    await page.wait_for_function(
        "() => window.cryptostreamDashboard.snapshot().series.bitcoin.lastValue === 91234.5"
    )
    await page.click('#legend .legend-item[data-asset="tether"]')
    snap = await snapshot(tab)
    assert snap["series"]["tether"]["visible"] is False
    assert snap["series"]["bitcoin"]["visible"] is True
    await tab.screenshot("live-usd")

    # The picture in the README (docs/dashboard.png): the three seeded days, in %.
    await page.click("#mode-pct")
    await page.click('#legend .legend-item[data-asset="tether"]')
    await page.fill("#custom-from", "2024-12-31T00:00:00")
    await page.fill("#custom-to", "2025-01-03T00:00:00")
    await page.click("#custom button[type=submit]")
    await page.wait_for_function(
        "n => { const s = window.cryptostreamDashboard.snapshot();"
        " return s.mode === 'pct' && s.range.live === null && s.series.bitcoin.points === n; }",
        arg=3 * 24,
    )
    await tab.screenshot("readme")

    assert tab.errors == []
    assert await running.stop() == 0


async def test_the_page_says_when_it_lost_the_service_and_comes_back(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service: Any,
    tab: Tab,
    tmp_path: Path,
) -> None:
    port = free_port()
    config = service_config(
        make_config, fake_coincap, kafka_bootstrap, port, data_dir=tmp_path / "data"
    )
    first = await run_service(config)
    await wait_for_rows(first, 6, 6)
    page = tab.page
    await page.goto(f"http://127.0.0.1:{port}/")
    await page.wait_for_function("() => window.cryptostreamDashboard.snapshot().connected")
    banner = page.locator("#banner")
    assert await banner.is_hidden()

    assert await first.stop() == 0
    await page.wait_for_selector("#banner", state="visible")
    assert await page.locator("#conn").get_attribute("data-state") == "lost"
    await tab.screenshot("lost")

    again = await run_service(config)  # same port, same data folder
    await wait_for_rows(again, 6, 12)
    await page.wait_for_selector("#banner", state="hidden", timeout=30_000)
    assert await page.locator("#conn").get_attribute("data-state") == "live"
    # Ticks written while the page was away are there after the reconnect.
    await page.wait_for_function(
        "() => document.querySelector('#card-records .value').textContent === '12'"
    )
    now = dt.datetime.now(dt.UTC).timestamp()
    await publish(config, kafka_bootstrap, Tick(now, "xrp", "XRP", "XRP", "2.5", "1", "2.4", None))
    await page.wait_for_function(
        "() => document.querySelector('#last-table tr[data-asset=xrp] .price')"
        ".dataset.price === '2.5'"
    )
    # While the service was away the browser logged failed connections; nothing else.
    unexpected = [e for e in tab.errors if "ERR_CONNECTION_REFUSED" not in e]
    assert unexpected == []
    assert await again.stop() == 0


async def test_the_credits_card_shows_used_budget_and_how_long_it_lasts(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service: Any,
    tab: Tab,
    tmp_path: Path,
) -> None:
    port = free_port()
    # One poll an hour on 2,500 credits: it lasts the period. A second service of the
    # same data folder (a backfill, say) spends 2,400 more: then it does not.
    config = make_config(
        base_url=fake_coincap.base_url,
        bootstrap=kafka_bootstrap,
        env={
            "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "2500",
            "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "3600",
            "CRYPTOSTREAM_WEB__PORT": str(port),
        },
    )
    running = await run_service(config)
    await wait_for_rows(running, 6, 6)
    page = tab.page
    await page.goto(f"http://127.0.0.1:{port}/")
    card = page.locator("#card-credits")
    await page.wait_for_function(
        "() => document.querySelector('#card-credits .value').textContent === '2 / 2,500'"
    )
    reset = running.service.credits.plan().period_end.date().isoformat()
    assert await card.locator(".sub").inner_text() == f"lasts to the reset, {reset}"
    assert await page.locator("#credits-note").is_hidden()
    await tab.screenshot("credits")

    from cryptostream.credits import Ledger

    other = Ledger(config.storage.data_dir)
    other.charge("backfill", 2400)
    other.flush()
    ledger = running.service.credits.ledger
    ledger.sync()  # a re-read on the ledger's thread: wait for it before reloading
    await wait_until(lambda: ledger.current().credits >= 2402, what="the ledger re-read")
    await page.reload()
    await page.wait_for_function(
        "() => document.querySelector('#card-credits .value').textContent === '2,402 / 2,500'"
    )
    runs_out = running.service.credits.plan().runs_out
    assert runs_out is not None
    # CoinCap alone: the polls are paced so that what is left lasts.
    sub = await card.locator(".sub").inner_text()
    assert sub == f"lasts until {runs_out.date().isoformat()} (paced)"
    await tab.screenshot("credits-short")
    assert tab.errors == []
    assert await running.stop() == 0


async def test_without_a_key_the_page_says_how_to_add_one(
    make_config: ConfigFactory, kafka_bootstrap: str, run_service: Any, tab: Tab
) -> None:
    from tests.support.fake_binance import FakeBinance

    port = free_port()
    async with FakeBinance() as binance:
        config = make_config(
            bootstrap=kafka_bootstrap,
            env={
                "COINCAP_API_KEY": "",
                "CRYPTOSTREAM_SOURCE__NAME": "auto",
                "CRYPTOSTREAM_SOURCE__FALLBACKS": "binance",
                "CRYPTOSTREAM_BINANCE__BASE_URL": binance.base_url,
                "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "3600",
                "CRYPTOSTREAM_WEB__PORT": str(port),
            },
        )
        running = await run_service(config)
        await wait_for_rows(running, 5, 5)
        page = tab.page
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_selector("#credits-note", state="visible")
        note = await page.locator("#credits-note").inner_text()
        assert "No CoinCap API key" in note and "COINCAP_API_KEY=" in note and ".env" in note
        assert await page.locator("#card-credits .value").inner_text() == "no key"
        assert await page.locator("#card-source .value").inner_text() == "binance"
        await tab.screenshot("no-key")
        assert tab.errors == []
        assert await running.stop() == 0


async def custom_boxes(tab: Tab) -> tuple[float, float]:
    """The custom From/To boxes (datetime-local, read as UTC) as timestamps."""
    values: list[str] = await tab.page.evaluate(
        "() => ['#custom-from', '#custom-to'].map(s => document.querySelector(s).value)"
    )
    start, end = (dt.datetime.fromisoformat(v).replace(tzinfo=dt.UTC) for v in values)
    return start.timestamp(), end.timestamp()


async def assert_shows(tab: Tab, start: float, end: float) -> None:
    """The range label and the From/To boxes both say [start, end]."""
    assert await custom_boxes(tab) == (start, end)
    label = await tab.page.locator("#range-label").inner_text()
    assert label == f"{fmt_time(start)} → {fmt_time(end)} UTC"


async def test_the_custom_boxes_always_show_the_range_on_display(
    make_config: ConfigFactory,
    fake_coincap: FakeCoinCap,
    kafka_bootstrap: str,
    run_service: Any,
    tab: Tab,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    running, _ = await open_seeded_dashboard(
        make_config, fake_coincap, kafka_bootstrap, run_service, tab, data_dir
    )
    page = tab.page
    _, rows = csv_rows(data_dir / "crypto_data.csv")
    last_ts = max(float(r["timestamp"]) for r in rows)

    # All, zoomed in, then the full detail of that view: the boxes say the zoom range.
    await page.click("button[data-live=all]")
    assert (await custom_boxes(tab))[0] == DAYS[0]
    assert await page.locator("#range-label").inner_text() == "All data, live"
    await page.wait_for_function(
        "n => window.cryptostreamDashboard.snapshot().series.bitcoin.points === n",
        arg=sum(1 for r in rows if r["id"] == "bitcoin"),
    )
    box = await page.locator("#chart").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    seen = (await snapshot(tab))["visible"]
    await page.mouse.wheel(0, -300)
    await page.wait_for_function(
        "w => { const v = window.cryptostreamDashboard.snapshot().visible;"
        " return v.to - v.from < w; }",
        arg=seen["to"] - seen["from"],
    )
    await page.click("#zoom-view")
    zoom = (await snapshot(tab))["range"]
    await assert_shows(tab, zoom["from"], zoom["to"])

    # Then a year, a month, a day: the boxes follow each, as the label does.
    end_of_2025 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() - 1
    await page.select_option("#pick-year", "2025")
    await assert_shows(tab, DAYS[1], end_of_2025)
    await page.select_option("#pick-month", "01")
    end_of_january = dt.datetime(2025, 2, 1, tzinfo=dt.UTC).timestamp() - 1
    await assert_shows(tab, DAYS[1], end_of_january)
    await page.select_option("#pick-day", "02")
    await assert_shows(tab, DAYS[2], DAYS[2] + DAY - 1)
    await page.wait_for_function(
        "d => { const s = window.cryptostreamDashboard.snapshot().series.bitcoin;"
        " return s.points === 24 && s.first >= d; }",
        arg=DAYS[2],
    )

    # A custom range, then a day, then a custom range again.
    await page.fill("#custom-from", "2025-01-01T06:00:00")
    await page.fill("#custom-to", "2025-01-01T18:00:00")
    await page.click("#custom button[type=submit]")
    await assert_shows(tab, DAYS[1] + 6 * 3600, DAYS[1] + 18 * 3600)
    assert await page.locator("#pick-year").input_value() == ""
    await page.select_option("#pick-year", "2024")
    await assert_shows(tab, dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp(), DAYS[1] - 1)
    await page.fill("#custom-from", "2024-12-31T12:00:00")
    await page.fill("#custom-to", "2025-01-02T12:00:00")
    await page.click("#custom button[type=submit]")
    await assert_shows(tab, DAYS[0] + 12 * 3600, DAYS[2] + 12 * 3600)
    assert await page.locator("#pick-year").input_value() == ""
    await page.wait_for_function(
        "([a, b]) => { const s = window.cryptostreamDashboard.snapshot().series.bitcoin;"
        " return s.points === 49 && s.first === a && s.last === b; }",
        arg=[DAYS[0] + 12 * 3600, DAYS[2] + 12 * 3600],
    )

    # Live ranges: the boxes hold the window as of now, from "now - range" to now.
    for live, span in (("3600", 3600), ("86400", DAY), ("604800", 7 * DAY)):
        await page.click(f"button[data-live='{live}']")
        start, end = await custom_boxes(tab)
        assert span <= end - start <= span + 2  # to the second, each end
        assert end >= last_ts
    await page.click("button[data-live=all]")
    start, end = await custom_boxes(tab)
    assert start == DAYS[0] and end >= last_ts

    # A page opened afresh shows the last 24 hours, and its boxes say so.
    await page.reload()
    await page.wait_for_function("() => window.cryptostreamDashboard.snapshot().connected")
    start, end = await custom_boxes(tab)
    assert DAY <= end - start <= DAY + 2 and end >= last_ts
    assert await page.locator("#range-label").inner_text() == "Last 24 hours, live"

    assert tab.errors == []
    assert await running.stop() == 0
