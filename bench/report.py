"""The benchmark's table, in markdown (printed, saved as results.md, pasted in the docs)."""

from __future__ import annotations

from typing import Any

from bench.profile import table

SINK_NAMES = {
    "ours": "cryptostream sink: exactly-once CSV, fsync per batch",
    "ours_no_candles": "the same, storage.candles = false",
    "baseline": "cryptostream sink of the --baseline checkout",
    "kcat": "kcat -C → file, one fsync at the end",
    "naive": "naive consumer: getone, json.loads, csv.DictWriter, auto-commit",
    "quix": "Quix Streams: stock CSVSink (at-least-once, no fsync until the end)",
}
PRODUCER_NAMES = {
    "ours": "cryptostream producer (aiokafka)",
    "baseline": "cryptostream producer of the --baseline checkout",
    "kcat": "kcat -P (librdkafka)",
}

# Goals of issue 8; measured by this benchmark, never asserted by a test.
SINK_VS_KCAT = 0.5
SINK_VS_NAIVE = 2.0
SINK_VS_QUIX = 2.0
ASSET_GROWTH_PERCENT = 20.0
# End-to-end latency goals (issue 24): at 1,000 ticks/s (steady) and 10,000 (latency).
P99_MS = 10.0
MAX_MS = 50.0
FAST_P99_MS = 25.0
STALL_MS = 50.0
RSS_MB = 150.0
PRODUCER_VS_KCAT = 0.5
GROWTH_PERCENT = 5.0


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _throughput(title: str, record: dict[str, Any], names: dict[str, str], unit: str) -> list[str]:
    lines = [
        title,
        "",
        f"| contender | {unit}/s | seconds | CPU s | CPU µs per {unit[:-1]} | peak RSS MB "
        "| load 1/5/15 min |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, name in names.items():
        row = record["best"].get(key)
        if row is None:
            continue
        lines.append(
            f"| {name} | **{_n(row['rows_per_second'])}** | {row['seconds']:.2f} | "
            f"{row['cpu_seconds']:.2f} | {row['cpu_us_per_row']:.2f} | {row['max_rss_mb']:.0f} "
            f"| {row['load']} |"
        )
    return lines


def _loop_lag(sink: dict[str, Any]) -> list[str]:
    """The event loop during each sink contender's best run: stalls and /healthz."""
    rows = [
        (SINK_NAMES[key], row)
        for key in ("ours", "ours_no_candles", "baseline")
        if (row := sink["best"].get(key)) is not None and "loop_lag" in row
    ]
    if not rows:
        return []
    lines = [
        "The event loop meanwhile (a task sleeping 5 ms in a loop: how late it woke up; "
        "`/healthz` asked every 20 ms by a client in the same process):",
        "",
        "| contender | loop lag max ms | p99 ms | wake-ups > 50 ms | /healthz p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        lag, health = row["loop_lag"], row.get("healthz", {})
        lines.append(
            f"| {name} | **{lag.get('max_ms', 0):.1f}** | {lag.get('p99_ms', 0):.1f} | "
            f"{lag.get('over_50ms', 0)} | {health.get('p99_ms', 0):.1f} | "
            f"{health.get('max_ms', 0):.1f} |"
        )
    return [*lines, ""]


def _many_assets(record: dict[str, Any]) -> tuple[list[str], tuple[str, str, bool] | None]:
    """Rows/s and CPU per row at each number of assets; how CPU per row grows."""
    lines = [
        f"### 1c. Many assets: {_n(record['messages'])} ticks over "
        f"{record['partitions']} partitions, at each number of assets",
        "",
        "| assets | cryptostream rows/s | naive rows/s | Quix Streams rows/s "
        "| cryptostream / naive | cryptostream / Quix | cryptostream CPU µs per row |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cpu: list[float] = []
    for assets, best in record["counts"].items():
        ours, naive, quix = best["ours"], best["naive"], best["quix"]
        cpu.append(ours["cpu_us_per_row"])
        lines.append(
            f"| {_n(int(assets))} | **{_n(ours['rows_per_second'])}** "
            f"| {_n(naive['rows_per_second'])} | {_n(quix['rows_per_second'])} "
            f"| **{ours['rows_per_second'] / naive['rows_per_second']:.2f}** "
            f"| {ours['rows_per_second'] / quix['rows_per_second']:.2f} "
            f"| {ours['cpu_us_per_row']:.2f} |"
        )
    goal = None
    if len(cpu) >= 2:
        growth = (cpu[-1] / cpu[0] - 1) * 100
        counts = list(record["counts"])
        first, last = counts[0], counts[-1]
        lines += [
            "",
            f"CPU per row from {first} to {last} assets: **{growth:+.0f} %**.",
        ]
        goal = (
            f"CPU µs per row grows ≤ {ASSET_GROWTH_PERCENT:g} % from {first} to {last} assets",
            f"{growth:+.0f} %",
            growth <= ASSET_GROWTH_PERCENT,
        )
    return [*lines, ""], goal


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    quick = results.get("quick", False)
    out = [f"## cryptostream benchmark, {results['started']}", ""]
    if quick:
        out += ["**Quick run (smoke test of the harness): small counts, not a measurement.**", ""]
    out += [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, "
        f"{machine['kernel']}, {machine['filesystem']}; Python {machine['python']}, "
        f"{machine['kafka']}, kcat {machine['kcat']}, aiokafka {machine['aiokafka']}, "
        f"orjson {machine['orjson']}, Quix Streams {machine.get('quixstreams', '-')}.",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    goals: list[tuple[str, str, bool]] = []

    sink = results.get("sink")
    if sink:
        best = sink["best"]
        out += _throughput(
            f"### 1. Sink throughput: {_n(sink['messages'])} ticks from one partition "
            f"({sink['topic_bytes'] / 1e6:.0f} MB of messages) into a durable file",
            sink,
            SINK_NAMES,
            "rows",
        )
        ours = best["ours"]["rows_per_second"]
        vs_kcat = ours / best["kcat"]["rows_per_second"]
        vs_naive = ours / best["naive"]["rows_per_second"]
        cpu_ours = best["ours"]["cpu_us_per_row"]
        quix = best.get("quix")
        vs_quix = ours / quix["rows_per_second"] if quix else None
        out += [
            "",
            f"Ratios (rows/s): cryptostream / kcat = **{vs_kcat:.2f}**; "
            f"cryptostream / naive = **{vs_naive:.2f}**. In CPU per row, naive / cryptostream "
            f"= {best['naive']['cpu_us_per_row'] / cpu_ours:.2f} and kcat / cryptostream = "
            f"{best['kcat']['cpu_us_per_row'] / cpu_ours:.2f} (much less sensitive to the "
            "machine's load).",
            "",
        ]
        if vs_quix is not None:
            out += [f"cryptostream / Quix Streams = **{vs_quix:.2f}** (rows/s).", ""]
        out += _loop_lag(sink)
        stall = best["ours"].get("loop_lag", {}).get("max_ms")
        if stall is not None:
            goals.append((f"loop stall ≤ {STALL_MS:g} ms", f"{stall:.1f} ms", stall <= STALL_MS))
        goals.append((f"sink ≥ {SINK_VS_KCAT} x kcat", f"{vs_kcat:.2f} x", vs_kcat >= SINK_VS_KCAT))
        goals.append(
            (f"sink ≥ {SINK_VS_NAIVE:g} x naive", f"{vs_naive:.2f} x", vs_naive >= SINK_VS_NAIVE)
        )
        if vs_quix is not None:
            goals.append(
                (
                    f"sink ≥ {SINK_VS_QUIX:g} x Quix Streams",
                    f"{vs_quix:.2f} x",
                    vs_quix >= SINK_VS_QUIX,
                )
            )

    assets = results.get("assets")
    if assets:
        lines, growth_goal = _many_assets(assets)
        out += lines
        if growth_goal is not None:
            goals.append(growth_goal)

    stalls = results.get("stalls")
    if stalls:
        out += [
            f"### 1b. The event loop during the sink's longest file jobs "
            f"(day file of {_n(stalls['day_rows'])} rows; crypto_data.csv of "
            f"{_n(stalls['trim_mb'])} MB to trim; load {stalls['load']})",
            "",
            "| scenario | seconds | loop lag max ms | p99 ms | wake-ups > 50 ms "
            "| /healthz p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for sc in stalls["scenarios"]:
            lag, health = sc["loop_lag"], sc["healthz"]
            out.append(
                f"| {sc['scenario']} | {sc['seconds']:.2f} | **{lag.get('max_ms', 0):.1f}** | "
                f"{lag.get('p99_ms', 0):.1f} | {lag.get('over_50ms', 0)} | "
                f"{health.get('p99_ms', 0):.1f} | {health.get('max_ms', 0):.1f} |"
            )
            if "worker" in sc["scenario"]:
                worst = lag.get("max_ms", 0.0)
                goals.append(
                    (
                        f"loop stall ≤ {STALL_MS:g} ms: {sc['scenario']}",
                        f"{worst:.1f} ms",
                        worst <= STALL_MS,
                    )
                )
        out.append("")

    runs = [
        results[name]
        for name in ("steady", "steady_baseline", "latency", "latency_baseline")
        if name in results and "error" not in results[name]
    ]
    failed = [
        f"{_n(results[name]['rate'])} ticks/s: {results[name]['error']}"
        for name in ("steady_baseline", "latency_baseline")
        if name in results and "error" in results[name]
    ]
    if runs:
        out += [
            "### 2. End-to-end latency: tick observed → row durable in the CSV (demo source, "
            "fsync on)",
            "",
            "| rate | code | seconds | rows measured | p50 ms | p99 ms | max ms "
            "| start-up max ms | load 1/5/15 min |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for run in runs:
            lat = run["latency"]
            out.append(
                f"| {_n(run['rate'])} ticks/s | {run.get('code', 'this tree')} | "
                f"{run['seconds']:g} | {_n(lat['rows_measured'])} | "
                f"{lat['p50_ms']:.1f} | **{lat['p99_ms']:.1f}** | {lat['max_ms']:.1f} | "
                f"{lat['startup_max_ms']:.0f} | {run['load_before']} → {run['load_after']} |"
            )
        timed = [run for run in runs if run.get("transactions")]
        if timed:
            out += [
                "",
                "The sink's transactions in the same runs (each `write` the consumer waits "
                "for, timed by the probe, with the fsyncs its thread made):",
                "",
                "| rate | code | transactions | mean ms | p50 ms | p99 ms | max ms "
                "| fsyncs per transaction |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            for run in timed:
                tx = run["transactions"]
                out.append(
                    f"| {_n(run['rate'])} ticks/s | {run.get('code', 'this tree')} "
                    f"| {_n(tx['count'])} | {tx['mean_ms']:.2f} | {tx['p50_ms']:.2f} "
                    f"| {tx['p99_ms']:.2f} | {tx['max_ms']:.1f} "
                    f"| **{tx['fsyncs_per_transaction']:.2f}** |"
                )
        out += [
            "",
            "### 3. Steady state of the whole service process (fetch → Kafka → CSV)",
            "",
            "| rate | code | window s | rows/s | CPU s per 1,000 ticks | CPU % of a core "
            "| RSS start MB | RSS end MB | RSS max MB | growth | trend MB/h |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for run in runs:
            st = run["steady"]
            out.append(
                f"| {_n(run['rate'])} ticks/s | {run.get('code', 'this tree')} "
                f"| {st['seconds']:.0f} | {_n(st['rows_per_second'])} "
                f"| **{st['cpu_per_1000']:.3f}** | {st['cpu_percent']:.0f} | "
                f"{st['rss_start_mb']:.1f} | {st['rss_end_mb']:.1f} | **{st['rss_max_mb']:.1f}** "
                f"| **{st['growth_percent']:+.1f} %** | {st['slope_mb_per_hour']:+.1f} |"
            )
        out.append("")
        if "latency" in results:
            run = results["latency"]
            p99 = run["latency"]["p99_ms"]
            goals.append(
                (
                    f"p99 ≤ {FAST_P99_MS:g} ms at {_n(run['rate'])} ticks/s",
                    f"{p99:.1f} ms",
                    p99 <= FAST_P99_MS,
                )
            )
        if "steady" in results:
            run = results["steady"]
            lat, st = run["latency"], run["steady"]
            rate = _n(run["rate"])
            goals.append(
                (
                    f"p99 ≤ {P99_MS:g} ms at {rate} ticks/s",
                    f"{lat['p99_ms']:.1f} ms",
                    lat["p99_ms"] <= P99_MS,
                )
            )
            goals.append(
                (
                    f"max ≤ {MAX_MS:g} ms at {rate} ticks/s",
                    f"{lat['max_ms']:.1f} ms",
                    lat["max_ms"] <= MAX_MS,
                )
            )
            goals.append(
                (
                    f"RSS ≤ {RSS_MB:g} MB steady",
                    f"{st['rss_max_mb']:.1f} MB",
                    st["rss_max_mb"] <= RSS_MB,
                )
            )
            goals.append(
                (
                    f"RSS growth < {GROWTH_PERCENT:g} % over the run",
                    f"{st['growth_percent']:+.1f} % in {st['seconds']:.0f} s",
                    st["growth_percent"] < GROWTH_PERCENT,
                )
            )

    if failed:
        out += ["The `--baseline` service runs that failed: " + "; ".join(failed), ""]

    producer = results.get("producer")
    if producer:
        best = producer["best"]
        out += _throughput(
            f"### 4. Producer throughput: {_n(producer['messages'])} ticks, acks=all, idempotent",
            producer,
            PRODUCER_NAMES,
            "ticks",
        )
        ratio = best["ours"]["rows_per_second"] / best["kcat"]["rows_per_second"]
        out += ["", f"Ratio: cryptostream / kcat = **{ratio:.2f}**."]
        if "baseline" in best:
            before = best["baseline"]["rows_per_second"] / best["kcat"]["rows_per_second"]
            out += [f"The --baseline checkout / kcat = **{before:.2f}**."]
        out.append("")
        goals.append(
            (
                f"producer ≥ {PRODUCER_VS_KCAT:g} x kcat",
                f"{ratio:.2f} x",
                ratio >= PRODUCER_VS_KCAT,
            )
        )

    centres = results.get("cost_centres", {})
    titles = {
        "py-spy": f"the sink reading {_n(sink['messages']) if sink else 'the'} ticks",
        "service": f"the service at {_n(results['plan']['slow_rate'])} ticks/s",
    }
    rows_done = results.get("profile_rows", {})
    profiled = results.get("profile_cpu", {})
    for name, rows in centres.items():
        out += [f"### Where the time goes: {titles.get(name, name)} (py-spy samples)", ""]
        own = profiled.get(name)
        if name == "py-spy" and sink:
            # The sink's profile reads the sink phase's topic: its CPU per row without a
            # profiler is the sink phase's (start-up included, as in the profiled run).
            ours = sink["best"]["ours"]
            system = ours.get("cpu_system_us_per_row", 0.0)
            cpu = {"user": ours["cpu_us_per_row"] - system, "system": system}
            source = "the sink phase's run of the same topic, without a profiler"
            out += [table(rows, rows_done=rows_done.get(name), cpu=cpu, source=source, own=own)]
        else:
            # No run without a profiler to match (the service's window; the sink when the
            # sink phase did not run): the profiled process's own CPU over the profile.
            source = "the profiled process's own CPU over the profile, under the profiler"
            out += [table(rows, rows_done=rows_done.get(name), cpu=own, source=source)]

    if goals:
        out += ["### Goals", "", "| goal | measured | met |", "|---|---:|---|"]
        for goal, measured, met in goals:
            out.append(f"| {goal} | {measured} | {'yes' if met else '**no**'} |")
        out.append("")
        if quick:
            out += ["(Quick run: the goals are judged by the full run only.)", ""]
    return "\n".join(out)
