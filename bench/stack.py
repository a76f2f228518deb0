"""The whole stack as a user runs it: ``docker compose up -d`` → the first CSV row, and memory.

What a new user does, from built images: ``cp .env.example .env`` (here with the demo
source, which needs no API key and no network), ``docker compose up -d``, wait for
``./data/crypto_data.csv``. Measured, per run:

* seconds from the ``up -d`` command to the first row in ``./data/crypto_data.csv``
  (the file polled every 20 ms), with the steps on the way from ``docker events``:
  each Kafka node started and healthy, the app started;
* ``settle`` seconds (default 60) after the command, the memory of every container:
  ``docker stats``' figure (what a user sees: the cgroup's usage without the page
  cache) and the resident set (``VmRSS``) of its main process.

Every run gets its own copy of the user's files (a temp dir), its own compose project
name and free host ports, so it never meets another stack (the test suite's included),
and ends with ``docker compose down -v``. The app image is built once, before the first
run (not timed: "images built"), and kept under its own tag.

    ./scripts/stack_bench.sh [--repeat N] [--settle SECONDS]

Images: the compose file's own (Docker Hub) unless ``KAFKA_IMAGE`` / ``PYTHON_IMAGE``
name others (``scripts/stack_bench.sh`` uses the local stand-ins when run as root,
as ``scripts/test`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine
from bench.common import REPO

#: What a user has after ``git clone`` and needs for ``docker compose up``.
USER_FILES = (
    "Dockerfile",
    "docker-compose.yml",
    ".dockerignore",
    ".env.example",
    "pyproject.toml",
    "README.md",
    "cryptostream",
)
APP_IMAGE = "cryptostream-stack-bench:local"
SERVICES = ("kafka-1", "kafka-2", "kafka-3", "app")
#: Variables of the caller's shell that would change the stack under test (the shell
#: wins over .env in compose): this script decides them itself.
_DROPPED_PREFIXES = ("CRYPTOSTREAM_", "COINCAP_", "COMPOSE_")
_DROPPED_NAMES = {
    "APP_IMAGE",
    "KAFKA_1_HOST_PORT",
    "KAFKA_2_HOST_PORT",
    "KAFKA_3_HOST_PORT",
    "KAFKA_CLUSTER_ID",
    "KAFKA_NODE_HEAP_OPTS",
    "KAFKA_NODE_JVM_OPTS",
}
_KEPT = {"COMPOSE_BAKE"}
_UNITS = {"B": 1, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2}


def log(message: str) -> None:
    sys.stderr.write(f"stack: {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _KEPT or not (k.startswith(_DROPPED_PREFIXES) or k in _DROPPED_NAMES)
    }
    env.setdefault("COMPOSE_BAKE", "false")  # compose's own builder: no buildx needed
    return env


def make_workdir(workdir: Path, settings: Mapping[str, str], source: Path = REPO) -> None:
    """The user's files, and `.env` made from `.env.example` the way the README says."""
    for name in USER_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(
                src, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(src, workdir / name)
    example = (workdir / ".env.example").read_text(encoding="utf-8")
    lines = [example.rstrip("\n"), *(f"{k}={v}" for k, v in settings.items())]
    (workdir / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def data_rows(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def parse_size(text: str) -> float:
    """``docker stats``' ``123.4MiB`` → bytes."""
    found = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]+)\s*", text)
    if not found:
        return 0.0
    return float(found.group(1)) * _UNITS.get(found.group(2).upper(), 0)


def vm_rss(pid: int) -> float:
    """Resident set of one process, bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Events:
    """``docker events`` of one compose project, read in a thread: (seconds, service, what)."""

    project: str
    env: Mapping[str, str]
    start: float = 0.0
    seen: list[tuple[float, str, str]] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> Events:
        self._proc = subprocess.Popen(
            [
                "docker",
                "events",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                "type=container",
                "--format",
                "{{json .}}",
            ],
            env=dict(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(line)
                service = event["Actor"]["Attributes"].get("com.docker.compose.service", "?")
                self.seen.append((event["timeNano"] / 1e9, service, event["status"]))

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def first(self, service: str, status: str) -> float | None:
        """Seconds from ``start`` to the first such event, or None."""
        times = [t for t, s, what in self.seen if s == service and what == status]
        return round(min(times) - self.start, 2) if times else None


class Stack:
    def __init__(self, project: str, workdir: Path, env: Mapping[str, str]) -> None:
        self.project = project
        self.workdir = workdir
        self.env = dict(env)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker", "compose", "-p", self.project, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"docker compose {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}"
            )
        return done

    def containers(self) -> dict[str, str]:
        """service → container id."""
        out = subprocess.run(
            [
                "docker",
                "ps",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--format",
                '{{.ID}} {{.Label "com.docker.compose.service"}}',
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {svc: cid for cid, svc in (line.split() for line in out.splitlines() if line)}

    def memory(self) -> dict[str, dict[str, float]]:
        """Per service: docker stats' usage and the main process's VmRSS, MB."""
        ids = self.containers()
        if not ids:
            return {}
        stats = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", *ids.values()],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        usage = {}
        for line in stats.splitlines():
            cid, rest = line.split(" ", 1)
            usage[cid[:12]] = parse_size(rest.split("/")[0])
        result: dict[str, dict[str, float]] = {}
        for service, cid in sorted(ids.items()):
            pid = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Pid}}", cid],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            result[service] = {
                "docker_stats_mb": round(usage.get(cid[:12], 0.0) / 1e6, 1),
                "vm_rss_mb": round(vm_rss(int(pid or 0)) / 1e6, 1),
            }
        return result


@contextlib.contextmanager
def workdir_for(settings: Mapping[str, str], source: Path = REPO) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cryptostream-stack-") as tmp:
        workdir = Path(tmp) / "cryptostream"
        workdir.mkdir()
        make_workdir(workdir, settings, source)
        yield workdir


def settings_for_run() -> dict[str, str]:
    settings = {
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "KAFKA_1_HOST_PORT": str(free_port()),
        "KAFKA_2_HOST_PORT": str(free_port()),
        "KAFKA_3_HOST_PORT": str(free_port()),
        "CRYPTOSTREAM_PORT": str(free_port()),
        "APP_IMAGE": APP_IMAGE,
    }
    if os.getuid() != 0:  # as .env.example says: the files in ./data are yours
        settings |= {"CRYPTOSTREAM_UID": str(os.getuid()), "CRYPTOSTREAM_GID": str(os.getgid())}
    return settings


def build(env: Mapping[str, str]) -> None:
    project = f"cs-stack-build-{os.getpid()}"
    with workdir_for(settings_for_run()) as workdir:
        log(f"building {APP_IMAGE} (not timed)")
        Stack(project, workdir, env).compose("build", timeout=1800)


def one_run(
    env: Mapping[str, str], settle: float, out: Path, n: int, source: Path = REPO
) -> dict[str, Any]:
    project = f"cs-stack-{os.getpid()}-{n}"
    with workdir_for(settings_for_run(), source) as workdir:
        stack = Stack(project, workdir, env)
        csv_path = workdir / "data" / "crypto_data.csv"
        record: dict[str, Any] = {
            "project": project,
            "files": "baseline" if source != REPO else "this checkout",
            "load_before": machine.load(),
        }
        try:
            with Events(project, env) as events:
                time.sleep(0.5)  # `docker events` is listening before the clock starts
                start = events.start = time.time()
                up = subprocess.Popen(
                    ["docker", "compose", "-p", project, "up", "-d"],
                    cwd=workdir,
                    env=stack.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                up_returned = first_row = None
                deadline = start + max(settle, 180)
                while first_row is None or up_returned is None:
                    now = time.time()
                    if up_returned is None and up.poll() is not None:
                        up_returned = now - start
                        if up.returncode != 0:
                            stderr = up.stderr.read() if up.stderr else ""
                            raise RuntimeError(f"docker compose up -d failed: {stderr[-2000:]}")
                    if first_row is None and data_rows(csv_path) >= 1:
                        first_row = now - start
                    if now > deadline:
                        waited = f"{now - start:.0f} s"
                        raise RuntimeError(f"no row in ./data/crypto_data.csv after {waited}")
                    time.sleep(0.02)
                record["first_row_s"] = round(first_row, 2)
                record["up_returned_s"] = round(up_returned, 2)
                record["load_first_row"] = machine.load()
                time.sleep(max(0.0, start + settle - time.time()))
                record["memory"] = stack.memory()
                record["memory_at_s"] = round(time.time() - start, 1)
                record["rows_at_memory"] = data_rows(csv_path)
            record["steps"] = {
                service: {
                    "started": events.first(service, "start"),
                    "healthy": events.first(service, "health_status: healthy"),
                }
                for service in SERVICES
            }
            record["load_after"] = machine.load()
            logs = stack.compose("logs", "--no-color", "--timestamps", timeout=120)
            (out / f"{project}.log").write_text(logs.stdout + logs.stderr)
        finally:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                stack.compose("down", "-v", "--remove-orphans", "-t", "20", timeout=300)
    totals = {
        key: round(sum(m[key] for m in record["memory"].values()), 1)
        for key in ("docker_stats_mb", "vm_rss_mb")
    }
    record["memory_total"] = totals
    return record


def render(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = [
        f"# docker compose up -d, demo source: {len(runs)} run(s)",
        "",
        f"Images: {results['images']}; Docker Engine {results['engine']}, "
        f"Compose {results['compose']}.",
        "",
        "| run | files | `up -d` returned s | Kafka nodes healthy s | app started s | "
        "**first row s** | rows at memory | memory at s | stack MB (docker stats) | "
        "stack MB (VmRSS) | load 1/5/15 min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, run in enumerate(runs, 1):
        steps = run["steps"]
        healthy = [steps[s]["healthy"] for s in ("kafka-1", "kafka-2", "kafka-3")]
        healthy_text = " / ".join("—" if h is None else f"{h:.1f}" for h in healthy)
        started = steps["app"]["started"]
        lines.append(
            f"| {i} | {run['files']} | {run['up_returned_s']:.1f} | {healthy_text} | "
            f"{'—' if started is None else f'{started:.1f}'} | **{run['first_row_s']:.1f}** | "
            f"{run['rows_at_memory']} | {run['memory_at_s']:.0f} | "
            f"{run['memory_total']['docker_stats_mb']:.0f} | "
            f"{run['memory_total']['vm_rss_mb']:.0f} | "
            f"{run['load_before']} → {run['load_after']} |"
        )
    lines.append("")
    for files in sorted({r["files"] for r in runs}):
        firsts = [r["first_row_s"] for r in runs if r["files"] == files]
        mem = [r["memory_total"]["docker_stats_mb"] for r in runs if r["files"] == files]
        lines.append(
            f"{files}: first row median {statistics.median(firsts):.1f} s, "
            f"best {min(firsts):.1f} s; stack memory median {statistics.median(mem):.0f} MB."
        )
    lines += [
        "",
        f"Memory per service, last run ({runs[-1]['files']}):",
        "",
        "| service | docker stats MB | VmRSS MB (main process) |",
        "|---|---:|---:|",
    ]
    last = runs[-1]["memory"]
    for service, m in last.items():
        lines.append(f"| {service} | {m['docker_stats_mb']:.0f} | {m['vm_rss_mb']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def docker_version(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/stack_bench.sh", description=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="runs, one after another")
    parser.add_argument(
        "--settle", type=float, default=60, help="seconds after `up -d` to read the memory"
    )
    parser.add_argument("--no-build", action="store_true", help=f"use {APP_IMAGE} as it is")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the user's files of another checkout, alternating with this one "
        "(before/after figures under the same load)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out or REPO / "build" / "bench" / time.strftime(
        "stack-%Y%m%dT%H%M%SZ", time.gmtime()
    )
    out.mkdir(parents=True, exist_ok=True)
    env = compose_env()
    images = ", ".join(
        f"{var}={env.get(var, '(compose default)')}" for var in ("KAFKA_IMAGE", "PYTHON_IMAGE")
    )
    if not args.no_build:
        build(env)
    results: dict[str, Any] = {
        "images": images,
        "engine": docker_version("version", "--format", "{{.Server.Version}}"),
        "compose": docker_version("compose", "version", "--short"),
        "settle": args.settle,
        "runs": [],
    }
    sources = [REPO] if args.baseline is None else [args.baseline.resolve(), REPO]
    n = 0
    for round_no in range(args.repeat):
        # Alternate the order: a load that rises or falls during a round hits both.
        for source in sources if round_no % 2 == 0 else sources[::-1]:
            n += 1
            log(f"run {n} ({source}, load {machine.load()})")
            run = one_run(env, args.settle, out, n, source)
            log(
                f"first row {run['first_row_s']} s; memory {run['memory_total']} MB "
                f"at {run['memory_at_s']} s"
            )
            results["runs"].append(run)
    table = render(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table)
    sys.stdout.write(table)
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
