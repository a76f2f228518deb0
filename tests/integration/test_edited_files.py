"""Files a person touched, under the real service: fake CoinCap → real Kafka → the sink.

A person appends a note to crypto_data.csv and saves over today's daily file while
the service runs, then the service restarts; another puts a byte that is not UTF-8
into a price cell of today's daily file. Nothing is cut or glued, the person's
files are kept, every tick on the topic is in the daily files exactly once, and the
service keeps writing.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from cryptostream.csvrow import COLUMNS
from tests.conftest import ConfigFactory, wait_until
from tests.support.fake_coincap import FakeCoinCap
from tests.support.topic import read_topic, tick_key

pytestmark = pytest.mark.integration


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def rows_of(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        return list(csv.reader(fh))[1:]


def keys(rows: list[list[str]]) -> list[tuple[str, str, str]]:
    return [tick_key(dict(zip(COLUMNS, r, strict=True))) for r in rows]


def metric(running: object, name: str, *labels: str) -> float:
    counter = getattr(running.service.metrics, name)  # type: ignore[attr-defined]
    return float(counter.labels(*labels)._value.get())


async def test_a_note_appended_and_a_daily_file_saved_over_while_running_lose_and_glue_nothing(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    data = config.storage.data_dir
    main = data / "crypto_data.csv"
    running = await run_service(config)
    await wait_until(lambda: lines(main) > 12, what="rows in crypto_data.csv")

    # 1. A note appended by hand, without a newline (the next row used to be glued on).
    with main.open("ab") as fh:
        fh.write(b"checked by Ann")
    await wait_until(lambda: list(data.glob("crypto_data.edited-*.csv")), what="set aside")
    await wait_until(lambda: lines(main) > 6, what="rows in the fresh crypto_data.csv")

    # 2. Today's daily file saved over by an editor: a new file renamed over it.
    [daily] = sorted((data / "history/ticks").glob("*.csv"))
    tmp = daily.with_name(".save.tmp")
    while True:
        # The editor's Save holds what it read: a batch the sink appended meanwhile (the
        # read and the write take a moment) would be in neither file, so the Save is
        # made again from a fresh read until no batch came in between.
        with daily.open("rb") as old:
            read = old.read()
            theirs = read + b"my own line\n"
            tmp.write_bytes(theirs)
            if os.fstat(old.fileno()).st_size == len(read):
                tmp.replace(daily)
                break
    await wait_until(lambda: list(data.glob("history/edited/*.csv")), what="daily set aside")
    await wait_until(lambda: lines(daily) > 6, what="rows in the fresh daily file")
    assert metric(running, "files_set_aside", "crypto_data.csv", "appended") == 1
    assert metric(running, "files_set_aside", "daily", "replaced") == 1
    assert await running.stop() == 0

    # The restart that used to cut the "uncommitted tail" and glue a 12-field row.
    running = await run_service(config)
    before = lines(main)
    await wait_until(lambda: lines(main) > before + 6, what="rows after the restart")
    assert await running.stop() == 0

    [kept_main] = data.glob("crypto_data.edited-*.csv")
    assert kept_main.read_bytes().endswith(b"checked by Ann")  # 0 bytes cut
    [kept_daily] = data.glob("history/edited/*.csv")
    assert kept_daily.read_bytes() == theirs
    for path in (main, daily):
        assert all(len(r) == len(COLUMNS) for r in rows_of(path)), path
    messages = sorted(tick_key(m) for m in await read_topic(kafka_bootstrap, config.kafka.topic))
    # Every tick on the topic once: in the kept daily file (up to the Save, the person's
    # line aside) or in the fresh one, and in the kept crypto_data.csv or the fresh one.
    in_daily = keys([r for r in rows_of(kept_daily) if len(r) == 8]) + keys(rows_of(daily))
    assert sorted(in_daily) == messages
    in_main = keys([r for r in rows_of(kept_main) if len(r) == 8]) + keys(rows_of(main))
    assert sorted(in_main) == messages


async def test_a_byte_that_is_not_utf8_in_todays_daily_file_never_stops_the_service(
    make_config: ConfigFactory, fake_coincap: FakeCoinCap, kafka_bootstrap: str, run_service
) -> None:
    config = make_config(base_url=fake_coincap.base_url, bootstrap=kafka_bootstrap)
    data = config.storage.data_dir
    main = data / "crypto_data.csv"
    running = await run_service(config)
    await wait_until(lambda: lines(main) > 12, what="rows in crypto_data.csv")
    assert await running.stop() == 0
    [daily] = sorted((data / "history/ticks").glob("*.csv"))
    # An edit in place (same file, same length): the first row's price gets a 0xff byte.
    content = daily.read_bytes()
    first_row = content.index(b"\n") + 1
    price_at = first_row + len(b",".join(content[first_row:].split(b",")[:4])) + 1
    with daily.open("r+b") as fh:
        fh.seek(price_at)
        fh.write(b"\xff")

    running = await run_service(config)  # every batch used to fail: nothing written again
    before = lines(main)
    await wait_until(lambda: lines(main) > before + 12, what="rows after the edit")
    assert not running.task.done()
    assert metric(running, "rows_unreadable", "first_value", "not_utf8") == 1
    assert metric(running, "task_failures", "consumer") == 0
    assert await running.stop() == 0
    assert b"\xff" in daily.read_bytes()  # the bytes are kept
    messages = sorted(tick_key(m) for m in await read_topic(kafka_bootstrap, config.kafka.topic))
    assert sorted(keys(rows_of(main))) == messages
