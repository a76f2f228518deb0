"""The benchmark harness's arithmetic (bench/): percentiles, warm-up cuts, steady state,
profile buckets. The figures it prints are only as honest as these."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from bench.proc import Sample
from bench.profile import IMPORTS, OTHER, STATE, centre_of, summarize
from bench.stats import latency, percentile, read_latencies, steady


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_leaves_out_the_warm_up_but_reports_it(tmp_path: Path) -> None:
    # Ticks observed at t=0..9 s; the first second's ticks waited for Kafka (2 s).
    records = [(t / 10, 2.0 if t < 10 else 0.010 + (t % 10) / 1000) for t in range(100)]
    path = tmp_path / "lat.f64"
    path.write_bytes(array("d", [x for pair in records for x in pair]).tobytes())
    assert read_latencies(path) == records
    lat = latency(records, warmup=1.0)
    assert lat.rows == 100
    assert lat.rows_measured == 90
    assert lat.startup_max_ms == 2000.0
    assert lat.max_ms == pytest.approx(19.0)
    assert lat.p50_ms == pytest.approx(14.0)


def test_steady_counts_cpu_and_rows_over_the_same_window() -> None:
    # 1 s apart; 0.2 CPU s per second; RSS 100 MB growing 1 MB/s after the warm-up.
    samples = [Sample(1000.0 + i, 100.0 + max(0, i - 2), 0.2 * i) for i in range(13)]
    # 1,000 rows per second, each durable 10 ms after it was observed (half-way between
    # two milliseconds, so no row sits on a window's edge).
    records = [(1000.0 + (k + 0.5) / 1000 - 0.010, 0.010) for k in range(12_000)]
    st = steady(samples, records, warmup=2.0)
    assert st.seconds == 10.0
    assert st.rows == 10_000
    assert st.cpu_seconds == pytest.approx(2.0)
    assert st.cpu_per_1000 == pytest.approx(0.2)
    assert (st.rss_start_mb, st.rss_end_mb, st.rss_max_mb) == (100.0, 110.0, 110.0)
    assert st.growth_percent == pytest.approx(10.0)
    assert st.slope_mb_per_hour == pytest.approx(3600.0)


def test_profile_samples_go_to_the_innermost_cost_centre(tmp_path: Path) -> None:
    run = "run (asyncio/runners.py:190);Consumer.run (cryptostream/consumer.py:74)"
    write = f"{run};CsvSink.write (cryptostream/sink/csvsink.py:330)"
    lines = [
        f"{write};tick_from_json (cryptostream/tick.py:160);0x7f (orjson/orjson.so) 6",
        f"{write};tick_from_json (cryptostream/tick.py:195) 3",
        f"{write};atomic_write (cryptostream/files.py:29);fsync (libc.so.6) 2",
        f"{write};csv_line (cryptostream/csvrow.py:70);gc_collect_main (libpython) 1",
        f"{run};getmany (aiokafka/consumer/consumer.py:1147) 4",
        "<module> (x.py:1);_find_and_load (<frozen importlib._bootstrap>:1) 2",
        f"{write};_State.to_json (cryptostream/sink/csvsink.py:107);0x7f (orjson/orjson.so) 5",
        "main (x.py:1) 2",
    ]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(lines) + "\n")
    shares = {centre: n for centre, n, _ in summarize(path)}
    assert shares == {
        "JSON decoding of messages (msgspec; orjson)": 6,
        "aiokafka: fetch, decode records, ConsumerRecord": 4,
        "tick validation + Tick objects": 3,
        "fsync": 2,
        "garbage collector": 1,
        IMPORTS: 2,
        STATE: 5,
        OTHER: 2,
    }
    assert centre_of(["main (x.py:1)"]) == OTHER


def test_bench_help_answers_without_setting_anything_up(tmp_path: Path) -> None:
    # A copy of the repository without .venv/: --help must print the options and
    # create nothing (before, it created .venv/ and installed the bench extra first).
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy2(repo / "scripts" / "bench", copy / "scripts" / "bench")
    shutil.copytree(repo / "bench", copy / "bench")
    done = subprocess.run(
        [str(copy / "scripts" / "bench"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ./scripts/bench")
    assert "--baseline" in done.stdout
    assert "==>" not in done.stderr  # no set-up step ran
    assert not (copy / ".venv").exists()


def test_many_assets_table_reports_the_growth_of_cpu_per_row() -> None:
    from bench.report import _many_assets

    def row(rate: float, cpu: float) -> dict[str, float]:
        return {"rows_per_second": rate, "cpu_us_per_row": cpu}

    record = {
        "messages": 1000,
        "partitions": 3,
        "counts": {
            "6": {"ours": row(200.0, 10.0), "naive": row(100.0, 9.0), "quix": row(50.0, 30.0)},
            "2000": {"ours": row(150.0, 13.0), "naive": row(100.0, 9.0), "quix": row(50.0, 30.0)},
        },
    }
    lines, goal = _many_assets(record)
    text = "\n".join(lines)
    assert "| 6 | **200** | 100 | 50 | **2.00** | 4.00 | 10.00 |" in text
    assert "| 2,000 | **150** | 100 | 50 | **1.50** | 3.00 | 13.00 |" in text
    assert goal is not None
    name, measured, met = goal
    assert "2000 assets" in name
    assert measured == "+30 %"
    assert not met  # 30 % is more than the 20 % allowed


def test_profile_charges_the_benchmarks_probes_to_themselves_and_adds_up(tmp_path: Path) -> None:
    from bench.profile import NOT_CPU, PROBE, table

    loop = "run (asyncio/runners.py:190);_run_once (asyncio/base_events.py:1922)"
    lines = [
        # The /healthz client and the lag probe: frames of aiohttp and asyncio under the
        # bench's own code are the bench's, not the event loop's or the web server's.
        f"{loop};poll_healthz (bench/lag.py:70);_request (aiohttp/client.py:600) 7",
        f"{loop};_probe (bench/lag.py:40);sleep (asyncio/tasks.py:640) 3",
        f"{loop};handle (aiohttp/web_protocol.py:500);healthz (cryptostream/web.py:60) 2",
        f"{loop};select (selectors.py:468);epoll_wait (libc.so.6) 40",
        f"{loop};CsvSink.write (cryptostream/sink/csvsink.py:330) 8",
    ]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(lines) + "\n")
    rows = summarize(path)
    shares = {centre: n for centre, n, _ in rows}
    assert shares[PROBE] == 10
    assert shares["web server (aiohttp: /healthz, metrics)"] == 2
    assert "event loop, sockets" not in shares
    assert shares[NOT_CPU[0]] == 40
    # 20 CPU samples share out 40 user µs per row (idle is no CPU): the probes' 10 are
    # half of them; the 10 system µs are the kernel's row.
    text = table(rows, rows_done=1000, cpu={"user": 40.0, "system": 10.0})
    assert f"| {PROBE} | 10 | 50.0 % | 20.00 |" in text
    assert "| idle: event loop waiting (epoll) | 40 | (a wait) | (no CPU) |" in text
    assert "| **all** | | | **50.00** |" in text


def test_profile_scales_the_cpu_centres_to_the_measured_cpu_and_checks_its_own(
    tmp_path: Path,
) -> None:
    from bench.profile import KERNEL, table

    loop = "run (asyncio/runners.py:190);_run_once (asyncio/base_events.py:1922)"
    lines = [
        f"{loop};CsvSink.write (cryptostream/sink/csvsink.py:330) 30",
        f"{loop};csv_line (cryptostream/csvrow.py:66) 10",
        f"{loop};select (selectors.py:468);epoll_wait (libc.so.6) 50",
    ]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(lines) + "\n")
    # 40 CPU samples (200 µs of wall time per row at 200/s over 1,000 rows), shared
    # out of 100 CPU µs per row measured without a profiler: 80 user, 20 system.
    cpu = {"user": 80.0, "system": 20.0}
    own = {"user": 120.0, "system": 30.0}
    text = table(summarize(path), rows_done=1000, rate=200.0, cpu=cpu, source="measured", own=own)
    assert "| sink loop: offsets, dedup, days, last values | 30 | 75.0 % | 60.00 |" in text
    assert "| CSV formatting (csv_line) | 10 | 25.0 % | 20.00 |" in text
    # The wait has no CPU; the kernel's part is its own row; the column adds up.
    assert "| (a wait) | (no CPU) |" in text
    assert f"| {KERNEL} | | | 20.00 |" in text
    assert "| **all** | | | **100.00** |" in text
    assert "measured, 100.00 µs per row (80.00 in user space, 20.00 in the kernel)" in text
    assert "the process used 150.00 CPU µs per row (120.00 user, 30.00 system)" in text
    assert "add up to 200.00 µs of wall time per row" in text


def test_a_contenders_main_is_not_a_probe(tmp_path: Path) -> None:
    # Every stack of the contender's event-loop thread starts in its main(): the work
    # under it is the product's, unless it runs in a probe's own frame.
    from bench.profile import PROBE

    root = "main (bench/service_probe.py:60);run (asyncio/runners.py:190)"
    lines = [
        f"{root};getmany (aiokafka/consumer/consumer.py:1147) 4",
        f"{root};record (bench/service_probe.py:47);tofile (array) 1",
        "main (bench/sink_ours.py:106);consume (bench/sink_ours.py:80);sleep (asyncio/x.py:1) 2",
    ]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(lines) + "\n")
    shares = {centre: n for centre, n, _ in summarize(path)}
    assert shares == {"aiokafka: fetch, decode records, ConsumerRecord": 4, PROBE: 3}


def test_transactions_summarise_the_probes_pairs_without_idle_calls(tmp_path: Path) -> None:
    from array import array

    from bench.stats import transactions

    path = tmp_path / "tx.f64"
    # (seconds, fsyncs): three transactions of 4 or 5 fsyncs, and an empty batch.
    with path.open("wb") as fh:
        array("d", [0.004, 4, 0.006, 4, 0.0001, 0, 0.020, 5]).tofile(fh)
    tx = transactions(path)
    assert tx.count == 3
    assert tx.max_ms == pytest.approx(20.0)
    assert tx.mean_ms == pytest.approx(10.0)
    assert tx.fsyncs_per_transaction == pytest.approx(13 / 3)


def test_a_result_is_found_among_a_profilers_lines(tmp_path: Path) -> None:
    from bench.proc import last_json

    out = tmp_path / "profile.out"
    out.write_text(
        "py-spy> Sampling process 200 times a second.\n"
        '{"rows": 10, "cpu_user_seconds": 1.5}\n'
        "py-spy> Stopped sampling because process exited\n"
    )
    assert last_json(out) == {"rows": 10, "cpu_user_seconds": 1.5}
    assert last_json(tmp_path / "missing.out") == {}


def test_a_running_processs_cpu_is_read_from_proc() -> None:
    import os
    import time

    from bench.proc import cpu_times

    user_before, system_before = cpu_times(os.getpid())
    times_before = os.times()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:
        sum(range(1000))
    user, system = cpu_times(os.getpid())
    times = os.times()
    # The same CPU as the kernel reports to the process itself, to a few clock ticks
    # (1/100 s here), most of it in user space (the loop makes no system calls).
    spent_user, spent_system = user - user_before, system - system_before
    assert abs(spent_user - (times.user - times_before.user)) <= 0.03
    assert abs(spent_system - (times.system - times_before.system)) <= 0.03
    assert spent_user > spent_system
