"""The dashboard hub with a real CSV sink: start-up without loss or doubles, live events."""

from __future__ import annotations

import asyncio
import collections
import math
from pathlib import Path

import orjson
import pytest

from cryptostream.config import Config, SourceConfig, StorageConfig
from cryptostream.dashboard import Dashboard
from cryptostream.metrics import Metrics
from cryptostream.sink.csvsink import CsvSink, Record
from cryptostream.tick import Tick

T0 = 1_741_305_600.0  # 2025-03-07 00:00:00 UTC
TOPIC = "prices"


def tick(asset: str, ts: float, price: str, first: str = "100") -> Tick:
    return Tick(ts, asset, asset[:3].upper(), asset.title(), price, "2.5", first, None, "demo")


class Feed:
    """A real sink with the dashboard subscribed, as the service wires them."""

    def __init__(self, data_dir: Path, metrics: Metrics) -> None:
        self.sink = CsvSink(data_dir, TOPIC, metrics, candles=False)
        self.sink.open()
        self.offset = 0

    def write(self, *ticks: Tick) -> None:
        records = []
        for t in ticks:
            records.append(Record(0, self.offset, t.to_json()))
            self.offset += 1
        self.sink.write(records)


def make(tmp_path: Path) -> tuple[Dashboard, Feed, Metrics]:
    config = Config(
        source=SourceConfig(name="demo", assets=("ethereum", "bitcoin")),
        storage=StorageConfig(data_dir=tmp_path),
    )
    metrics = Metrics()
    dash = Dashboard(config, metrics)
    feed = Feed(tmp_path, metrics)
    feed.sink.subscribe(dash.on_batch)
    return dash, feed, metrics


async def test_every_tick_is_in_the_store_once_whenever_it_was_written(tmp_path: Path) -> None:
    dash, feed, _ = make(tmp_path)
    try:
        # Written before the dashboard looks: only in the file.
        feed.write(tick("bitcoin", T0 + 1, "101"), tick("ethereum", T0 + 1, "11"))
        load = asyncio.create_task(dash.load())
        await asyncio.sleep(0)  # the load has noted the file's length and is reading it
        assert dash.state == "loading"
        # Written while the worker thread reads: after that length, so buffered.
        feed.write(tick("bitcoin", T0 + 2, "102"))
        await load
        assert dash.state == "ready"
        # Written after the load: straight in.
        feed.write(tick("bitcoin", T0 + 3, "103"), tick("ethereum", T0 + 3, "13"))
        btc = dash.store.series["bitcoin"]
        assert list(btc.price) == [101.0, 102.0, 103.0]
        assert list(dash.store.series["ethereum"].price) == [11.0, 13.0]
        assert dash.store.records == 5
        summary = dash.summary()
        assert summary["totals"]["records"] == 5
        assert summary["totals"]["last"] == T0 + 3
        assert [a["id"] for a in summary["assets"]] == ["ethereum", "bitcoin"]  # config order
        assert summary["assets"][1]["last"]["priceUsd"] == "103"
        # The sink's firstValue: the day's first bitcoin row (101), not the message's 100.
        assert summary["assets"][1]["variation"] == pytest.approx(200 / 101)
        assert summary["days"] == ["2025-03-07"]
        assert summary["source"] == "demo"
    finally:
        dash.close()
        feed.sink.close()


async def test_live_ticks_go_to_open_pages_in_coalesced_events(tmp_path: Path) -> None:
    dash, feed, metrics = make(tmp_path)
    try:
        await dash.load()
        async with dash.live.subscribe() as queue:
            assert metrics.dashboard_clients._value.get() == 1
            feed.write(*(tick("bitcoin", T0 + i, f"{100 + i}") for i in range(1, 4)))
            feed.write(tick("ethereum", T0 + 5, "50", "40"))
            message = await asyncio.wait_for(queue.get(), 5)
            assert message is not None
            event, data = message.decode().rstrip("\n").split("\n")
            assert event == "event: ticks"
            payload = orjson.loads(data.removeprefix("data: "))
            # Both batches came in one event: [time, price, % against firstValue], which
            # the sink sets to the day's first row of the asset (101 and 50).
            assert payload["ticks"]["bitcoin"] == [
                [T0 + 1, 101.0, pytest.approx(0.0)],
                [T0 + 2, 102.0, pytest.approx(100 / 101)],
                [T0 + 3, 103.0, pytest.approx(200 / 101)],
            ]
            assert payload["ticks"]["ethereum"] == [[T0 + 5, 50.0, pytest.approx(0.0)]]
            assert payload["totals"]["records"] == 4
            assert {a["id"] for a in payload["assets"]} == {"bitcoin", "ethereum"}
        assert metrics.dashboard_clients._value.get() == 0
    finally:
        dash.close()
        feed.sink.close()


async def test_a_burst_is_thinned_per_asset_but_keeps_the_newest_tick(tmp_path: Path) -> None:
    dash, feed, _ = make(tmp_path)
    try:
        await dash.load()
        async with dash.live.subscribe() as queue:
            feed.write(*(tick("bitcoin", T0 + i * 0.01, f"{100 + i % 7}") for i in range(1000)))
            message = await asyncio.wait_for(queue.get(), 5)
            assert message is not None
            payload = orjson.loads(message.split(b"data: ", 1)[1])
            points = payload["ticks"]["bitcoin"]
            assert len(points) <= 42
            assert points[-1][0] == pytest.approx(T0 + 9.99)
        assert dash.store.records == 1000  # the store keeps every tick
    finally:
        dash.close()
        feed.sink.close()


async def test_unreadable_rows_are_logged_counted_and_the_rest_is_shown(tmp_path: Path) -> None:
    (tmp_path / "crypto_data.csv").write_text(
        "timestamp,id,symbol,name,priceUsd,changePercent24Hr,firstValue,vwap24Hr\n"
        f"{T0},bitcoin,BTC,Bitcoin,10,,10,\n"
        f"{T0 + 1},bitcoin,BTC,Bitcoin,ten,,10,\n"
        f"{T0 + 2},bitcoin,BTC,Bitcoin,12,,10,\n"
    )
    dash, feed, metrics = make(tmp_path)
    try:
        await dash.load()
        assert list(dash.store.series["bitcoin"].price) == [10.0, 12.0]
        skipped = metrics.registry.get_sample_value(
            "cryptostream_dashboard_rows_skipped_total", {"reason": "not_a_number"}
        )
        assert skipped == 1
        assert metrics.registry.get_sample_value("cryptostream_dashboard_points") == 2
    finally:
        dash.close()
        feed.sink.close()


async def test_series_json_in_percent_and_in_usd(tmp_path: Path) -> None:
    dash, feed, _ = make(tmp_path)
    try:
        await dash.load()
        feed.write(*(tick("bitcoin", T0 + i, f"{100 + i}") for i in range(10)))
        series = dash.views()
        pct = Dashboard.series_json(series, T0 + 2, T0 + 4, 100, "pct")
        usd = Dashboard.series_json(series, T0 + 2, T0 + 4, 100, "abs")
        assert [s["id"] for s in pct["series"]] == ["bitcoin"]
        assert pct["series"][0]["points"] == [
            [T0 + 2, pytest.approx(2.0)],
            [T0 + 3, pytest.approx(3.0)],
            [T0 + 4, pytest.approx(4.0)],
        ]
        assert usd["series"][0]["points"] == [[T0 + 2, 102.0], [T0 + 3, 103.0], [T0 + 4, 104.0]]
        assert usd["series"][0]["total"] == 3
    finally:
        dash.close()
        feed.sink.close()


async def test_close_ends_every_stream(tmp_path: Path) -> None:
    dash, feed, _ = make(tmp_path)
    try:
        ended = collections.Counter[str]()

        async def page() -> None:
            async with dash.live.subscribe() as queue:
                while (await queue.get()) is not None:
                    pass
                ended["page"] += 1

        pages = [asyncio.create_task(page()) for _ in range(3)]
        await asyncio.sleep(0)
        dash.close()
        await asyncio.wait_for(asyncio.gather(*pages), 5)
        assert ended["page"] == 3
    finally:
        feed.sink.close()


async def test_a_pause_in_the_data_becomes_empty_points_on_a_shared_grid(tmp_path: Path) -> None:
    dash, feed, _ = make(tmp_path)
    try:
        await dash.load()
        hours = [*range(0, 10), *range(100, 110)]  # ten hourly ticks, 90 h pause, ten more
        feed.write(*(tick("bitcoin", T0 + h * 3600, "100") for h in hours))
        feed.write(*(tick("ethereum", T0 + h * 3600 + 5, "10") for h in hours))
        body = Dashboard.series_json(dash.views(), 0, math.inf, 100, "abs")
        by_id = {s["id"]: s["points"] for s in body["series"]}
        for points in by_id.values():
            assert sum(1 for p in points if p[1] is not None) == 20
            empty = [p[0] for p in points if p[1] is None]
            # Only inside the pause, at least one step clear of the ticks around it.
            assert empty and all(T0 + 10 * 3600 <= t <= T0 + 99 * 3600 for t in empty)
        # Both series put their empty points on the same instants (one time axis).
        empties = [[p[0] for p in pts if p[1] is None] for pts in by_id.values()]
        assert empties[0] == empties[1]
        # Regular ticks, however sparse, have no empty points between them.
        day = Dashboard.series_json(dash.views(), T0, T0 + 9 * 3600 + 5, 1000, "abs")
        assert all(p[1] is not None for s in day["series"] for p in s["points"])
    finally:
        dash.close()
        feed.sink.close()


def test_source_card_follows_the_ticks_after_a_failover(tmp_path: Path) -> None:
    dash, _, _ = make(tmp_path)
    assert dash.summary()["source"] == "demo"  # configured, before any tick
    t = Tick(T0, "bitcoin", "BTC", "Bitcoin", "1", None, "1", None, "kraken")
    dash.on_batch([t])
    assert dash.summary()["source"] == "kraken"
