"""The benchmark harness behind ``./scripts/bench`` (see docs/performance.md).

One run, one local Apache Kafka broker, every contender in its own process:

1. sink throughput: a topic preloaded with real tick messages, read to the end
   by kcat (into a file), by a naive consumer (``bench.naive_consumer``) and by
   the service's own exactly-once CSV sink (``bench.sink_ours``);
2. producer throughput: the same messages published with ``acks=all`` and
   idempotence by kcat and by the service's producer (``bench.producer_ours``);
3. end-to-end latency and steady state: the real service (``bench.service_probe``)
   with the demo source at 10,000 and at 1,000 ticks/s, its RSS and CPU time
   sampled from /proc.

Prints a markdown table (machine, figures, goals) and writes it, with the raw
results, to the output directory. It fails (exit 1) when a contender breaks or
its output is wrong (a row missing or duplicated); it never fails on a figure.

    python -m bench.run            # the full benchmark (~10 minutes)
    python -m bench.run --quick    # small counts, a few seconds per phase (CI smoke)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kafkalocal
from bench import cli, machine, proc, stats
from bench.common import REPO, fsync_file
from bench.payloads import write_payloads
from bench.profile import summarize
from bench.report import render

#: Broker JVM options for the benchmark: the test suite's low-memory defaults, but with
#: the optimising JIT on (``TieredStopAtLevel=1`` there favours start-up over throughput).
BROKER_JVM = ("-Xmx1g", "-Xms512m", "-XX:+UseParallelGC", "-Djava.awt.headless=true")


@dataclasses.dataclass(frozen=True)
class Plan:
    sink_ticks: int = 1_000_000
    producer_ticks: int = 200_000
    fast_rate: float = 10_000
    fast_seconds: float = 60
    slow_rate: float = 1_000
    steady_seconds: float = 300
    latency_warmup: float = 10
    steady_warmup: float = 30
    sample_every: float = 2.0
    repeat: int = 1
    stall_day_rows: int = 1_000_000
    stall_trim_mb: int = 1024
    #: The many-assets phase: the sink against the naive consumer and Quix Streams at
    #: each number of assets, over ``asset_partitions`` partitions.
    asset_counts: tuple[int, ...] = (6, 100, 500, 2000)
    asset_ticks: int = 1_000_000
    asset_partitions: int = 3


QUICK = Plan(
    sink_ticks=20_000,
    producer_ticks=10_000,
    fast_seconds=4,
    steady_seconds=8,
    latency_warmup=1,
    steady_warmup=2,
    sample_every=0.5,
    stall_day_rows=20_000,
    stall_trim_mb=8,
    asset_counts=(6, 500),
    asset_ticks=20_000,
)
PHASES = cli.PHASES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _count_lines(path: Path) -> int:
    lines = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
    return lines


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.out: Path = args.out.resolve()
        self.python = sys.executable
        found = shutil.which("kcat")
        if found is None:
            raise proc.BenchError("kcat is not on PATH (./scripts/bench installs it with apt)")
        self.kcat = found
        self.bootstrap = ""
        self.empty_config = self.out / "empty.toml"
        self.results: dict[str, Any] = {"plan": dataclasses.asdict(plan), "quick": args.quick}
        self._topic_no = 0

    # -- helpers ---------------------------------------------------------------------

    def log(self, message: str) -> None:
        sys.stderr.write(f"bench: {message}\n")
        sys.stderr.flush()

    def env(self, **settings: str) -> dict[str, str]:
        """The contenders' environment: ``CRYPTOSTREAM_<SECTION>__<KEY>`` over an empty file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSTREAM_")}
        env["CRYPTOSTREAM_CONFIG"] = str(self.empty_config)
        env["CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS"] = self.bootstrap
        env["CRYPTOSTREAM_SOURCE__NAME"] = "demo"
        for key, value in settings.items():
            env[f"CRYPTOSTREAM_{key.upper()}"] = value
        return env

    def topic(self, prefix: str) -> str:
        self._topic_no += 1
        return f"bench-{prefix}-{os.getpid()}-{self._topic_no}"

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from cryptostream.config import KafkaConfig
        from cryptostream.topic import Topic

        kafka = KafkaConfig(bootstrap_servers=self.bootstrap, topic=name, partitions=partitions)
        asyncio.run(Topic(kafka).ensure())

    def end_offset(self, topic: str, partitions: int = 1) -> int:
        """The messages the topic holds: its partitions' end offsets (they start at 0)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async def query() -> int:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
            await consumer.start()
            try:
                tps = [TopicPartition(topic, p) for p in range(partitions)]
                return sum(int(v) for v in (await consumer.end_offsets(tps)).values())
            finally:
                await consumer.stop()

        return asyncio.run(query())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"load_before": machine.load()}
        self.log(f"{name} (load {record['load_before']})")
        start = time.perf_counter()
        yield record
        record["load_after"] = machine.load()
        record["phase_seconds"] = round(time.perf_counter() - start, 1)
        self.results[name] = record

    # -- the run -----------------------------------------------------------------------

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.empty_config.write_text("# every setting comes from the environment\n")
        self.results["machine"] = machine.describe(self.out, kafkalocal.KAFKA_VERSION, self.kcat)
        self.results["command"] = " ".join(["./scripts/bench", *sys.argv[1:]])
        self.results["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        cluster = None
        if self.args.bootstrap:
            self.bootstrap = self.args.bootstrap
        else:
            cluster = kafkalocal.KafkaCluster(nodes=1, base_port=self.args.port)
            cluster.jvm_options = list(BROKER_JVM)
            self.log("starting a Kafka broker")
            cluster.start(timeout=300)
            self.bootstrap = cluster.bootstrap_servers
        try:
            phases = self.args.only or PHASES
            if "sink" in phases:
                self.sink_throughput()
            if "assets" in phases:
                self.many_assets()
            if "stalls" in phases:
                self.stalls()
            if "producer" in phases:
                self.producer_throughput()
            # With --baseline, each service run is followed by the same run of the other
            # checkout, so a latency figure tells the code from the machine.
            for name, rate, seconds in (
                ("latency", self.plan.fast_rate, self.plan.fast_seconds),
                ("steady", self.plan.slow_rate, self.plan.steady_seconds),
            ):
                if name in phases:
                    self.service_run(name, rate, seconds)
                    if self.args.baseline:
                        self.service_baseline(name, rate, seconds)
            if self.args.profile or "profile" in phases:
                self.profile()
        finally:
            if cluster is not None:
                cluster.stop()
            # The messages are made again by every run (~250 MB for a full one).
            for payloads in self.out.glob("payloads-*.tsv"):
                payloads.unlink()
        table = render(self.results)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (self.out / "results.md").write_text(table)
        sys.stdout.write(table)
        self.log(f"results in {self.out}")
        return 0

    # -- 1. sink throughput ------------------------------------------------------------

    def payloads(self, count: int) -> Path:
        path = self.out / f"payloads-{count}.tsv"
        if not path.exists():
            self.log(f"writing {count:,} tick messages")
            write_payloads(path, count)
        return path

    def kcat_produce(self, topic: str, payloads: Path, *extra: str) -> proc.Finished:
        cmd = [self.kcat, "-P", "-b", self.bootstrap, "-t", topic, "-K", "\t", *extra]
        cmd += ["-l", str(payloads)]
        return proc.run(
            "kcat -P", cmd, stdout=self.out / "kcat-P.out", log=self.out / "kcat-P.log", timeout=600
        )

    def sink_throughput(self) -> None:
        n = self.plan.sink_ticks
        payloads = self.payloads(n)
        topic = self.topic("sink")
        self.create_topic(topic)
        self.log(f"preloading {topic} with {n:,} messages (kcat -P)")
        self.kcat_produce(topic, payloads)
        if (end := self.end_offset(topic)) != n:
            raise proc.BenchError(f"preloaded topic holds {end} messages, expected {n}")
        with self.phase("sink") as record:
            record["messages"] = n
            record["topic_bytes"] = payloads.stat().st_size
            runs: dict[str, list[dict[str, Any]]] = {
                "ours": [],
                "ours_no_candles": [],
                "kcat": [],
                "naive": [],
                "quix": [],
            }
            for i in range(self.plan.repeat):
                runs["kcat"].append(self.sink_kcat(topic, n, i))
                runs["naive"].append(self.sink_naive(topic, n, i))
                runs["quix"].append(self.sink_quix(topic, n, i))
                runs["ours"].append(self.sink_ours(topic, n, i))
                runs["ours_no_candles"].append(self.sink_ours(topic, n, i, candles=False))
                if self.args.baseline:
                    runs.setdefault("baseline", []).append(
                        self.sink_ours(topic, n, i, code=self.args.baseline)
                    )
            record["runs"] = runs
            record["best"] = {
                k: max(v, key=lambda r: r["rows_per_second"]) for k, v in runs.items()
            }

    def many_assets(self) -> None:
        """The sink, the naive consumer and Quix Streams at each number of assets."""
        n, parts = self.plan.asset_ticks, self.plan.asset_partitions
        with self.phase("assets") as record:
            record.update(messages=n, partitions=parts, counts={})
            for assets in self.plan.asset_counts:
                payloads = self.out / f"payloads-{n}-{assets}-assets.tsv"
                self.log(f"writing {n:,} tick messages over {assets:,} assets")
                write_payloads(payloads, n, assets=assets)
                topic = self.topic(f"assets-{assets}")
                self.create_topic(topic, partitions=parts)
                self.kcat_produce(topic, payloads)
                if (end := self.end_offset(topic, parts)) != n:
                    raise proc.BenchError(f"preloaded topic holds {end} messages, expected {n}")
                payloads.unlink()
                runs: dict[str, list[dict[str, Any]]] = {"ours": [], "naive": [], "quix": []}
                for i in range(self.plan.repeat):
                    runs["naive"].append(self.sink_naive(topic, n, i))
                    runs["quix"].append(self.sink_quix(topic, n, i))
                    runs["ours"].append(self.sink_ours(topic, n, i))
                record["counts"][str(assets)] = {
                    k: max(v, key=lambda r: r["rows_per_second"]) for k, v in runs.items()
                }

    def sink_kcat(self, topic: str, n: int, i: int) -> dict[str, Any]:
        target = self.out / f"kcat-{i}.jsonl"
        # fetch.wait.max.ms: kcat learns it reached the end (-e) from a fetch that comes back
        # empty, which the broker holds that long (500 ms by default); the others stop at
        # the known end offset, so kcat should not pay half a second more than they do.
        cmd = [self.kcat, "-C", "-b", self.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q"]
        cmd += ["-X", "fetch.wait.max.ms=10"]
        start = time.perf_counter()
        done = proc.run(
            "kcat -C", cmd, stdout=target, log=self.out / f"kcat-C-{i}.log", timeout=600
        )
        fsync_file(target)
        seconds = time.perf_counter() - start
        rows = _count_lines(target)
        if rows != n:
            raise proc.BenchError(f"kcat wrote {rows} lines, expected {n}")
        target.unlink()
        return self._row("kcat", rows, seconds, done)

    def sink_naive(self, topic: str, n: int, i: int) -> dict[str, Any]:
        target = self.out / f"naive-{i}.csv"
        cmd = [self.python, "-m", "bench.naive_consumer", "--bootstrap", self.bootstrap]
        cmd += ["--topic", topic, "--out", str(target), "--end", str(n)]
        done = proc.run("naive consumer", cmd, log=self.out / f"naive-{i}.log", timeout=1800)
        rows = _count_lines(target) - 1
        if rows != n or done.result["rows"] != n:
            raise proc.BenchError(f"the naive consumer wrote {rows} rows, expected {n}")
        target.unlink()
        return self._row("naive", rows, done.result["seconds"], done)

    def sink_quix(self, topic: str, n: int, i: int) -> dict[str, Any]:
        target = self.out / f"quix-{i}.csv"
        cmd = [self.python, "-m", "bench.quix_consumer", "--bootstrap", self.bootstrap]
        cmd += ["--topic", topic, "--out", str(target), "--end", str(n)]
        done = proc.run("Quix Streams", cmd, log=self.out / f"quix-{i}.log", timeout=1800)
        rows = _count_lines(target) - 1
        if rows != n or done.result["rows"] != n:
            raise proc.BenchError(f"Quix Streams wrote {rows} rows, expected {n}")
        target.unlink()
        return self._row("quix", rows, done.result["seconds"], done)

    def sink_ours(
        self, topic: str, n: int, i: int, *, candles: bool = True, code: Path | None = None
    ) -> dict[str, Any]:
        name = f"sink-{i}" if candles else f"sink-no-candles-{i}"
        if code is not None:
            name = f"sink-baseline-{i}"
        data = self.out / name
        shutil.rmtree(data, ignore_errors=True)
        env = self.env(
            kafka__topic=topic, kafka__group_id=f"bench-{name}", storage__data_dir=str(data)
        )
        if not candles:
            env["CRYPTOSTREAM_STORAGE__CANDLES"] = "false"
        if code is not None:
            # Run from the other checkout: its ``cryptostream`` comes first on sys.path.
            env["PYTHONPATH"] = str(REPO)
        cmd = [self.python, "-m", "bench.sink_ours", "--config", str(self.empty_config)]
        cmd += ["--end", str(n)]
        done = proc.run(
            "cryptostream sink",
            cmd,
            env=env,
            log=self.out / f"{name}.log",
            timeout=1800,
            cwd=code.resolve() if code is not None else REPO,
        )
        self.check_csv(data, n)
        shutil.rmtree(data)
        row = self._row("ours", done.result["rows"], done.result["seconds"], done)
        # The event loop's stalls and /healthz meanwhile (absent from an old checkout's).
        for key in ("loop_lag", "healthz"):
            if key in done.result:
                row[key] = done.result[key]
        return row

    def check_csv(self, data: Path, expected: int | None) -> int:
        """Every row once: the row count, no repeated row, the daily files agree."""
        seen: set[int] = set()
        rows = 0
        with (data / "crypto_data.csv").open("rb") as fh:
            fh.readline()
            for line in fh:
                rows += 1
                seen.add(hash(line))
        if expected is not None and rows != expected:
            raise proc.BenchError(f"{data}/crypto_data.csv has {rows} rows, expected {expected}")
        if len(seen) != rows:
            raise proc.BenchError(f"{data}/crypto_data.csv repeats {rows - len(seen)} rows")
        daily = sum(_count_lines(p) - 1 for p in (data / "history" / "ticks").glob("*.csv"))
        if daily != rows:
            raise proc.BenchError(f"{data}: daily files hold {daily} rows, crypto_data.csv {rows}")
        return rows

    @staticmethod
    def _row(name: str, rows: int, seconds: float, done: proc.Finished) -> dict[str, Any]:
        return {
            "contender": name,
            "rows": rows,
            "seconds": round(seconds, 3),
            "rows_per_second": rows / seconds,
            "process_seconds": round(done.wall, 3),
            "cpu_seconds": round(done.cpu, 3),
            # CPU time of the whole process (start-up included) per row: what the work
            # costs, whatever else the machine runs; wall-clock rates depend on that load.
            "cpu_us_per_row": round(done.cpu / rows * 1e6, 2),
            "cpu_system_us_per_row": round(done.system / rows * 1e6, 2),
            "max_rss_mb": round(done.max_rss_mb, 1),
            "load": machine.load(),
        }

    # -- 1b. the event loop during the sink's longest file jobs ---------------------------

    def stalls(self) -> None:
        """A restart late in a UTC day and a retention trim, on the loop and on the worker."""
        scratch = self.out / "stalls"
        with self.phase("stalls") as record:
            cmd = [self.python, "-m", "bench.stalls", "--dir", str(scratch)]
            cmd += ["--day-rows", str(self.plan.stall_day_rows)]
            cmd += ["--trim-mb", str(self.plan.stall_trim_mb)]
            done = proc.run("stalls", cmd, log=self.out / "stalls.log", timeout=1800, cwd=REPO)
            record["day_rows"] = self.plan.stall_day_rows
            record["trim_mb"] = self.plan.stall_trim_mb
            record["scenarios"] = done.result["scenarios"]
            record["load"] = machine.load()
        shutil.rmtree(scratch, ignore_errors=True)

    # -- 2. producer throughput --------------------------------------------------------

    def producer_throughput(self) -> None:
        n = self.plan.producer_ticks
        source = self.payloads(self.plan.sink_ticks)
        payloads = self.out / f"payloads-producer-{n}.tsv"
        with source.open("rb") as src, payloads.open("wb") as dst:
            for _ in range(n):
                dst.write(src.readline())
        with self.phase("producer") as record:
            record["messages"] = n
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "kcat": []}
            for i in range(self.plan.repeat):
                runs["kcat"].append(self.produce_kcat(payloads, n))
                runs["ours"].append(self.produce_ours(payloads, n, i))
                if self.args.baseline:
                    runs.setdefault("baseline", []).append(
                        self.produce_ours(payloads, n, i, code=self.args.baseline)
                    )
            record["runs"] = runs
            record["best"] = {
                k: max(v, key=lambda r: r["rows_per_second"]) for k, v in runs.items()
            }

    def produce_kcat(self, payloads: Path, n: int) -> dict[str, Any]:
        topic = self.topic("produce-kcat")
        self.create_topic(topic)
        done = self.kcat_produce(topic, payloads, "-X", "acks=all", "-X", "enable.idempotence=true")
        if (end := self.end_offset(topic)) != n:
            raise proc.BenchError(f"kcat published {end} messages, expected {n}")
        return self._row("kcat", n, done.wall, done)

    def produce_ours(
        self, payloads: Path, n: int, i: int, *, code: Path | None = None
    ) -> dict[str, Any]:
        name = f"producer-{i}" if code is None else f"producer-baseline-{i}"
        topic = self.topic("produce-ours")
        data = self.out / name
        data.mkdir(exist_ok=True)
        env = self.env(kafka__topic=topic, storage__data_dir=str(data))
        if code is not None:
            # Run from the other checkout: its ``cryptostream`` comes first on sys.path.
            env["PYTHONPATH"] = str(REPO)
        cmd = [self.python, "-m", "bench.producer_ours", "--config", str(self.empty_config)]
        cmd += ["--payloads", str(payloads)]
        done = proc.run(
            "cryptostream producer",
            cmd,
            env=env,
            log=self.out / f"{name}.log",
            timeout=1800,
            cwd=code.resolve() if code is not None else REPO,
        )
        if (end := self.end_offset(topic)) != n or done.result["ticks"] != n:
            raise proc.BenchError(f"the producer published {end} messages, expected {n}")
        shutil.rmtree(data)
        return self._row("ours", n, done.result["seconds"], done)

    # -- 3. the real service: latency and steady state ---------------------------------

    def service_env(self, tag: str, rate: float, data: Path, port: int) -> dict[str, str]:
        """The service as users run it, with the demo source at ``rate`` ticks/s."""
        return self.env(
            demo__rate=str(rate),
            kafka__topic=self.topic(tag),
            kafka__group_id=f"bench-{tag}",
            storage__data_dir=str(data),
            web__port=str(port),
            web__dashboard="true" if self.args.dashboard else "false",
            log__format="json",
        )

    def service_baseline(self, name: str, rate: float, seconds: float) -> None:
        """The same service run with the ``--baseline`` checkout's package; a failure (an
        old tree without the probe's hooks) is recorded and the run goes on."""
        try:
            self.service_run(f"{name}_baseline", rate, seconds, code=self.args.baseline)
        except proc.BenchError as exc:
            self.log(f"the --baseline service run failed: {exc}")
            self.results[f"{name}_baseline"] = {"error": str(exc), "rate": rate}

    def service_run(
        self, name: str, rate: float, seconds: float, *, code: Path | None = None
    ) -> None:
        tag = f"{int(rate)}" if code is None else f"{int(rate)}-baseline"
        data = self.out / f"service-{tag}"
        shutil.rmtree(data, ignore_errors=True)
        latencies = self.out / f"latencies-{tag}.f64"
        port = _free_port()
        env = self.service_env(f"e2e-{tag}", rate, data, port)
        cwd = REPO
        probe = ["-m", "bench.service_probe"]
        if code is not None:
            # This tree's probe (run as a script: it imports only ``cryptostream``) with
            # the other checkout's ``cryptostream`` first on sys.path, so both trees are
            # timed and counted by the same probe.
            env["PYTHONPATH"] = str(code.resolve())
            probe = [str(REPO / "bench" / "service_probe.py")]
            cwd = code.resolve()  # and its config.toml
        topic = env["CRYPTOSTREAM_KAFKA__TOPIC"]
        transactions = self.out / f"transactions-{tag}.f64"
        cmd = [
            self.python,
            *probe,
            "--latencies",
            str(latencies),
            "--transactions",
            str(transactions),
        ]
        plan = self.plan
        with self.phase(name) as record:
            record.update(rate=rate, seconds=seconds, dashboard=self.args.dashboard)
            record["code"] = "baseline" if code is not None else "this tree"
            samples: list[proc.Sample] = []
            log_path = self.out / f"service-{tag}.log"
            with log_path.open("wb") as log:
                child = subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
                )
                try:
                    self._wait_ready(child, port, log_path)
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        if child.poll() is not None:
                            raise proc.BenchError(f"the service exited early; see {log_path}")
                        if (s := proc.sample(child.pid)) is not None:
                            samples.append(s)
                        time.sleep(plan.sample_every)
                    if (s := proc.sample(child.pid)) is not None:
                        samples.append(s)
                    child.send_signal(signal.SIGTERM)
                    status = child.wait(timeout=120)
                finally:
                    if child.poll() is None:
                        child.kill()
                        child.wait()
            if status != 0:
                raise proc.BenchError(f"the service exited with {status}; see {log_path}")
            records = stats.read_latencies(latencies)
            rows = self.check_csv(data, len(records))
            published = self.end_offset(topic)
            if published != rows:
                raise proc.BenchError(f"{published} ticks on the topic, {rows} rows in the CSV")
            record["rows"] = rows
            record["latency"] = dataclasses.asdict(stats.latency(records, plan.latency_warmup))
            record["steady"] = dataclasses.asdict(
                stats.steady(samples, records, plan.steady_warmup)
            )
            record["samples"] = [dataclasses.astuple(s) for s in samples]
            record["transactions"] = dataclasses.asdict(stats.transactions(transactions))
        latencies.unlink()
        transactions.unlink()
        shutil.rmtree(data)

    @staticmethod
    def _wait_ready(child: subprocess.Popen[bytes], port: int, log: Path) -> None:
        """Until /readyz answers 200: Kafka reachable and the sink writing."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise proc.BenchError(f"the service exited at start-up; see {log}")
            url = f"http://127.0.0.1:{port}/readyz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise proc.BenchError(f"the service was not ready within 60 s; see {log}")

    # -- profiles ----------------------------------------------------------------------

    def profile(self) -> None:
        """Profile the sink contender (a separate run: profilers slow what they watch)."""
        n = self.plan.sink_ticks
        payloads = self.payloads(n)
        topic = self.topic("profile")
        self.create_topic(topic)
        self.kcat_produce(topic, payloads)
        profiles: dict[str, str] = {}
        self.results["profile_rows"] = {"py-spy": n}
        self.results["profile_cpu"] = {}
        for tool in ("pyinstrument", "py-spy"):
            data = self.out / f"profile-{tool}"
            shutil.rmtree(data, ignore_errors=True)
            env = self.env(
                kafka__topic=topic,
                kafka__group_id=f"bench-profile-{tool}",
                storage__data_dir=str(data),
            )
            target = ["-m", "bench.sink_ours", "--config", str(self.empty_config), "--end", str(n)]
            if tool == "pyinstrument":
                out = self.out / "profile-sink-pyinstrument.txt"
                cmd = [
                    self.python,
                    "-m",
                    "pyinstrument",
                    "-r",
                    "text",
                    "--show-all",
                    "-o",
                    str(out),
                    *target,
                ]
            else:
                spy = shutil.which("py-spy") or str(Path(self.python).parent / "py-spy")
                if not Path(spy).exists():
                    self.log("py-spy not installed; skipping its profile")
                    continue
                out = self.out / "profile-sink-py-spy.txt"
                cmd = [
                    spy,
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--native",
                    "--gil",
                    "-o",
                    str(out),
                    "--",
                    self.python,
                    *target,
                ]
            self.log(f"profiling the sink with {tool}")
            try:
                proc.run(
                    tool,
                    cmd,
                    env=env,
                    stdout=self.out / f"profile-{tool}.out",
                    log=self.out / f"profile-{tool}.log",
                    timeout=3600,
                )
            except proc.BenchError as exc:
                self.log(f"{tool} failed: {exc}")
                continue
            profiles[tool] = str(out)
            shutil.rmtree(data, ignore_errors=True)
            if tool == "py-spy":
                # The profiled process's own CPU (the profile's table holds it up to the
                # samples; it is what the table shares out without a sink phase).
                own = proc.last_json(self.out / f"profile-{tool}.out")
                if "cpu_user_seconds" in own:
                    self.results["profile_cpu"]["py-spy"] = _per_row(
                        own["cpu_user_seconds"], own["cpu_system_seconds"], n
                    )
        self.profile_service(profiles)
        self.results["profiles"] = profiles
        # Cost centres of the py-spy profiles (pyinstrument's text is for reading).
        self.results["cost_centres"] = {
            name: summarize(Path(path))
            for name, path in profiles.items()
            if name != "pyinstrument" and Path(path).exists()
        }

    def profile_service(self, profiles: dict[str, str]) -> None:
        """py-spy on the running service at the steady rate: where a small batch's time goes."""
        spy = shutil.which("py-spy") or str(Path(self.python).parent / "py-spy")
        if not Path(spy).exists():
            return
        rate = self.plan.slow_rate
        data = self.out / "profile-service"
        shutil.rmtree(data, ignore_errors=True)
        port = _free_port()
        env = self.service_env("profile-service", rate, data, port)
        out = self.out / f"profile-service-{int(rate)}-py-spy.txt"
        seconds = max(3, int(self.plan.fast_seconds / 2))
        self.log(f"profiling the service at {rate:g} ticks/s with py-spy for {seconds} s")
        log_path = self.out / "profile-service.log"
        with log_path.open("wb") as log:
            cmd = [self.python, "-m", "bench.service_probe", "--latencies", os.devnull]
            child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready(child, port, log_path)
                time.sleep(self.plan.latency_warmup)
                record = [spy, "record", "--pid", str(child.pid), "--duration", str(seconds)]
                record += ["--format", "raw", "--rate", "200", "--native", "--gil"]
                record += ["-o", str(out)]
                cpu_before = proc.cpu_times(child.pid)
                try:
                    proc.run(
                        "py-spy",
                        record,
                        log=self.out / "profile-service-py-spy.log",
                        stdout=self.out / "profile-service-py-spy.out",
                        timeout=seconds + 60,
                    )
                except proc.BenchError as exc:
                    self.log(f"py-spy failed: {exc}")
                    return
                # The service's own CPU over the profiled window, per tick it was fed.
                after = proc.cpu_times(child.pid)
                user, system = after[0] - cpu_before[0], after[1] - cpu_before[1]
                ticks = int(rate * seconds)
                self.results["profile_rows"]["service"] = ticks
                self.results["profile_cpu"]["service"] = _per_row(user, system, ticks)
                profiles["service"] = str(out)
            finally:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        shutil.rmtree(data, ignore_errors=True)


def _per_row(user: float, system: float, rows: int) -> dict[str, float]:
    """A process's user and system CPU as µs per row."""
    return {"user": round(user / rows * 1e6, 2), "system": round(system / rows * 1e6, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser()
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    overrides = {
        "repeat": args.repeat,
        "sink_ticks": args.ticks,
        "steady_seconds": args.steady_seconds,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if args.out is None:
        args.out = REPO / "build" / "bench" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    from cryptostream import logs

    # The harness's own Kafka clients log warnings only, to stderr: stdout is the table.
    logs.configure("warning", "console", stream=sys.stderr)
    try:
        return Bench(args, plan).run()
    except proc.BenchError as exc:
        sys.stderr.write(f"bench: FAILED: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
