"""`docker compose up` end to end, on a real Docker engine, with the real compose file.

The user's files (Dockerfile, docker-compose.yml, .dockerignore, .env.example, pyproject.toml,
README.md, cryptostream/) are copied into a temp dir, so the stack's ./data and .env never
touch the working tree. Only what a user may set is changed: `.env` (made from .env.example
the way the README says, plus a fast poll and free host ports) and, through the environment,
the image names (KAFKA_IMAGE, PYTHON_IMAGE: local stand-ins on machines without Docker Hub;
see scripts/test). The fake CoinCap runs as a container on the project's own network, so no
traffic leaves this machine.

Without an engine the test skips locally and FAILS when CI is set: CI must run it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import wait_until
from tests.support.topic import csv_rows, read_topic, tick_key

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
# What a user has after `git clone` and needs for `docker compose up`.
USER_FILES = (
    "Dockerfile",
    "docker-compose.yml",
    ".dockerignore",
    ".env.example",
    "pyproject.toml",
    "README.md",
    "cryptostream",
)
# The data contract (DESIGN.md), spelled out here rather than imported from the package.
HEADER = "timestamp,id,symbol,name,priceUsd,changePercent24Hr,firstValue,vwap24Hr"
ASSETS = {"bitcoin", "ethereum", "tether", "xrp", "binance-coin", "solana"}
TOPIC = "crypto_prices"  # the compose file's default
API_KEY = "e2e-key-3f6c0b9a27d14e55"
FAKE_PORT = 8081
# Six assets per poll every 0.5 s: 30 rows are five polls.
POLL_INTERVAL = "0.5"
FAILOVER_ROWS = 30
# Variables that would change the stack under test if inherited from the caller's shell
# (the shell wins over .env in compose): the test decides them itself.
_DROPPED_PREFIXES = ("CRYPTOSTREAM_", "COINCAP_", "COMPOSE_", "FAKE_COINCAP_")
_DROPPED_NAMES = {
    "APP_IMAGE",
    "KAFKA_1_HOST_PORT",
    "KAFKA_2_HOST_PORT",
    "KAFKA_3_HOST_PORT",
    "KAFKA_CLUSTER_ID",
    "KAFKA_NODE_HEAP_OPTS",
    "KAFKA_NODE_JVM_OPTS",
    "DOCKER_DEFAULT_PLATFORM",
}
_KEPT = {"COMPOSE_BAKE"}


# ------------------------------------------------------------------------------ helpers


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def engine_problem() -> str | None:
    """Why no Docker engine + Compose v2 can be used here, or None."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    checks = (
        (["docker", "info", "--format", "{{.ServerVersion}}"], "no Docker engine answers"),
        (["docker", "compose", "version", "--short"], "Docker Compose v2 is missing"),
    )
    for args, problem in checks:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return f"{problem} (`{' '.join(args)}` timed out)"
        if done.returncode != 0:
            return f"{problem}: {done.stderr.strip()[-300:]}"
    return None


@pytest.fixture
def docker_engine() -> None:
    problem = engine_problem()
    if problem is None:
        return
    hint = "scripts/test starts one when run as root (scripts/docker_engine.sh)"
    if in_ci():
        pytest.fail(f"CI needs a Docker engine for the compose test: {problem}; {hint}")
    pytest.skip(f"{problem}; {hint}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def row_count(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def rows_stamped_after(path: Path, moment: float) -> int:
    """Rows whose tick timestamp (first column, Unix seconds) is later than ``moment``."""
    lines = path.read_bytes().split(b"\n")[1:]
    return sum(1 for line in lines if line and float(line.split(b",", 1)[0]) > moment)


@dataclass
class Result:
    args: Sequence[str]
    code: int
    out: str
    err: str


async def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    check: bool = True,
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise AssertionError(f"`{' '.join(args)}` did not finish in {timeout} s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # cancelled: leave no docker command running behind the test
        raise
    result = Result(args, proc.returncode or 0, out.decode(errors="replace"), err.decode())
    if check and result.code != 0:
        raise AssertionError(
            f"`{' '.join(args)}` exited {result.code}:\n{result.err[-4000:]}{result.out[-2000:]}"
        )
    return result


@dataclass
class Timings:
    phases: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.phases.append((name, seconds))

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.add(name, time.monotonic() - start)

    def table(self) -> str:
        lines = ["", "docker compose e2e timings:"]
        lines += [f"  {name:<48} {seconds:7.1f} s" for name, seconds in self.phases]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def from_scripts_test(timings: Timings) -> None:
    """Engine and image times, measured by scripts/test before pytest started."""
    for var, name in (
        ("DOCKER_E2E_ENGINE_SECONDS", "engine (scripts/docker_engine.sh)"),
        ("DOCKER_E2E_IMAGES_SECONDS", "stand-in images (scripts/standin_images.sh)"),
    ):
        with contextlib.suppress(KeyError, ValueError):
            timings.add(name, float(os.environ[var]))


class Stack:
    """One compose project in its own directory, driven like a user would."""

    def __init__(self, workdir: Path, project: str, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.project = project
        self.env = dict(env)
        self.fake = f"{project}-coincap"
        self.volumes: set[str] = set()

    async def compose(self, *args: str, timeout: float = 120, check: bool = True) -> Result:
        return await run(
            ["docker", "compose", "-p", self.project, *args],
            env=self.env,
            cwd=self.workdir,
            timeout=timeout,
            check=check,
        )

    async def docker(self, *args: str, timeout: float = 60, check: bool = True) -> Result:
        return await run(
            ["docker", *args], env=self.env, cwd=self.workdir, timeout=timeout, check=check
        )

    async def container(self, service: str) -> str:
        ids = (await self.compose("ps", "-a", "-q", service)).out.split()
        assert len(ids) == 1, f"expected one {service} container, got {ids}"
        return ids[0]

    async def state(self, service: str) -> tuple[str, int]:
        out = await self.docker(
            "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", await self.container(service)
        )
        status, code = out.out.split()
        return status, int(code)

    async def start_fake_coincap(self, image: str) -> None:
        """The fake API as a container on the project network, reachable as `coincap`."""
        await self.docker(
            "run",
            "-d",
            "--name",
            self.fake,
            "--network",
            f"{self.project}_default",
            "--network-alias",
            "coincap",
            "--no-healthcheck",
            "--user",
            f"{os.getuid()}:{os.getgid()}",
            "-e",
            "FAKE_COINCAP_API_KEY",  # the value comes from self.env: not on a command line
            "-v",
            f"{REPO / 'tests'}:/app/tests:ro",
            "--entrypoint",
            "python3",
            image,
            "-m",
            "tests.support.fake_coincap",
            "--host",
            "0.0.0.0",
            "--port",
            str(FAKE_PORT),
            "--quiet",
        )

        async def ready() -> bool:
            logs = await self.docker("logs", self.fake, check=False)
            return "http://" in logs.out

        deadline = time.monotonic() + 30
        while not await ready():
            if time.monotonic() > deadline:
                logs = await self.docker("logs", self.fake, check=False)
                raise AssertionError(f"fake CoinCap did not start:\n{logs.out}{logs.err}")
            await asyncio.sleep(0.2)

    async def memory(self) -> str:
        """What `docker stats` shows for each running container of the project (a note for
        the timing table, not an assertion: bench/stack.py measures it properly)."""
        ids = await self.compose("ps", "-q")
        if not ids.out.split():
            return "memory: no running container"
        stats = await self.docker(
            "stats", "--no-stream", "--format", "{{.Name}}={{.MemUsage}}", *ids.out.split()
        )
        usage = sorted(line.split(" / ")[0] for line in stats.out.splitlines() if line)
        return "memory (docker stats): " + ", ".join(usage)

    async def app_events(self) -> list[dict[str, Any]]:
        logs = await self.compose("logs", "--no-log-prefix", "--no-color", "app")
        return parse_events(logs.out + logs.err)

    async def diagnostics(self) -> str:
        parts = [(await self.compose("ps", "-a", check=False)).out]
        for service in ("app", "kafka-1", "kafka-2", "kafka-3"):
            logs = await self.compose("logs", "--no-color", "--tail", "40", service, check=False)
            parts.append(logs.out + logs.err)
        return "\n".join(parts)

    async def note_volumes(self) -> None:
        """Remember the volumes of the project's containers: a plain `down` (as a user runs
        it) orphans the anonymous ones of the images' VOLUME lines, and only their names
        let the clean-up find them."""
        listed = await self.docker(
            "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"
        )
        if listed.out.split():
            mounts = await self.docker(
                "inspect",
                "-f",
                '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}',
                *listed.out.split(),
                check=False,
            )
            self.volumes.update(mounts.out.split())

    async def down(self, *args: str) -> None:
        await self.note_volumes()
        await self.compose("down", *args, timeout=180)

    async def remove(self, app_image: str) -> None:
        """Everything the test created: containers, network, volumes, the app image."""
        with contextlib.suppress(AssertionError):
            await self.note_volumes()
        await self.docker("rm", "-f", "-v", self.fake, check=False)
        await self.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=180, check=False)
        left = await self.docker("volume", "ls", "-q", check=False)
        if orphans := sorted(self.volumes & set(left.out.split())):
            await self.docker("volume", "rm", "-f", *orphans, check=False)
        await self.docker("rmi", "-f", app_image, check=False)


def parse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def last_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the container's latest start (its log spans every restart)."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "service_starting"]
    return events[starts[-1] :] if starts else events


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


def make_workdir(workdir: Path, env_lines: Mapping[str, str]) -> None:
    for name in USER_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(src, workdir / name)
    # The README's step: `cp .env.example .env` and set the key; then the test's settings.
    example = (workdir / ".env.example").read_text(encoding="utf-8").splitlines()
    assert "COINCAP_API_KEY=" in example, ".env.example must have an empty COINCAP_API_KEY="
    lines = [f"COINCAP_API_KEY={API_KEY}" if x == "COINCAP_API_KEY=" else x for x in example]
    lines += [f"{k}={v}" for k, v in env_lines.items()]
    (workdir / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def compose_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _KEPT or not (k.startswith(_DROPPED_PREFIXES) or k in _DROPPED_NAMES)
    }
    env["FAKE_COINCAP_API_KEY"] = API_KEY
    return env


async def partition_leader(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        leaders = {p["partition"]: p["leader"] for p in described["partitions"]}
    finally:
        await admin.close()
    assert leaders, f"topic {topic} has no partitions: {described}"
    return int(leaders[min(leaders)])


def check_csv(path: Path) -> list[dict[str, str]]:
    """Header once, no torn line, no duplicated tick; returns the rows."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the CSV ends in a torn line"
    text = raw.decode("utf-8")
    assert text.startswith(HEADER + "\n"), text[:200]
    assert text.count("\ntimestamp,id,") == 0, "header written more than once"
    assert "\r" not in text
    header, rows = csv_rows(path)
    assert header == HEADER.split(",")
    for row in rows:
        assert None not in row, f"a row with too many cells: {row}"
        assert all(v is not None for v in row.values()), f"a row with too few cells: {row}"
        assert row["id"] in ASSETS and row["priceUsd"], row
    keys = collections.Counter(tick_key(r) for r in rows)
    duplicated = [k for k, n in keys.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} ticks written twice, e.g. {duplicated[:3]}"
    return rows


async def check_csv_matches_topic(path: Path, bootstrap: str) -> int:
    """Every message on the topic is in the CSV exactly once, and nothing else is."""
    rows = check_csv(path)
    messages = await read_topic(bootstrap, TOPIC, timeout=60)
    in_csv = {tick_key(r) for r in rows}
    on_topic = {tick_key(m) for m in messages}
    assert in_csv == on_topic, (
        f"{len(on_topic - in_csv)} ticks on the topic missing from the CSV, "
        f"{len(in_csv - on_topic)} rows not on the topic"
    )
    return len(rows)


def check_ownership(data: Path, uid: int, gid: int) -> None:
    """The files are the host user's: Power BI / Excel can read them, the user can delete them."""
    for path in [data, *data.rglob("*")]:
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (uid, gid), (
            f"{path} is owned by {info.st_uid}:{info.st_gid}, not {uid}:{gid}"
        )
        assert info.st_mode & stat.S_IRUSR, f"{path} is not readable by its owner"
        if path.is_dir():
            assert info.st_mode & stat.S_IWUSR and info.st_mode & stat.S_IXUSR, path


async def get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        return resp.status, await resp.text()


# --------------------------------------------------------------------------------- test


@pytest.mark.timeout(1500)
async def test_compose_up_failover_down_and_up_again_keep_every_tick_once(
    docker_engine: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timings = Timings()
    from_scripts_test(timings)
    loop = asyncio.get_running_loop()

    project = f"cs-e2e-{os.getpid()}"
    app_image = f"cryptostream-e2e:{project}"
    ports = {n: free_port() for n in ("KAFKA_1", "KAFKA_2", "KAFKA_3", "WEB")}
    settings = {
        "CRYPTOSTREAM_COINCAP__BASE_URL": f"http://coincap:{FAKE_PORT}/v3",
        # Only the fake: never a keyless public exchange, whatever the default becomes.
        "CRYPTOSTREAM_SOURCE__NAME": "coincap",
        "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": POLL_INTERVAL,
        # Polls every 0.5 s would spend a free key's budget within minutes and be
        # paced: count the credits, never cap them, in this test.
        "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "0",
        "KAFKA_1_HOST_PORT": str(ports["KAFKA_1"]),
        "KAFKA_2_HOST_PORT": str(ports["KAFKA_2"]),
        "KAFKA_3_HOST_PORT": str(ports["KAFKA_3"]),
        "CRYPTOSTREAM_PORT": str(ports["WEB"]),
        "APP_IMAGE": app_image,
    }
    # As root (CI) the compose defaults apply: the app runs as 1000:1000, and data-init
    # hands the root-owned ./data Docker creates to that user. Anyone else sets their own
    # uid, as .env.example tells them to.
    uid, gid = 1000, 1000
    if os.getuid() != 0:
        uid, gid = os.getuid(), os.getgid()
        settings |= {"CRYPTOSTREAM_UID": str(uid), "CRYPTOSTREAM_GID": str(gid)}

    workdir = tmp_path / "cryptostream"
    workdir.mkdir()
    make_workdir(workdir, settings)
    stack = Stack(workdir, project, compose_env())
    data = workdir / "data"
    csv_path = data / "crypto_data.csv"
    bootstrap = ",".join(f"127.0.0.1:{ports[f'KAFKA_{n}']}" for n in (1, 2, 3))
    images = ", ".join(
        f"{var}={stack.env.get(var, '(compose default)')}"
        for var in ("KAFKA_IMAGE", "PYTHON_IMAGE")
    )
    timings.notes.append(f"project {project}; {images}")

    follower: asyncio.subprocess.Process | None = None
    try:
        with timings.measure("build app image (docker compose build)"):
            await stack.compose("build", timeout=900)
        # `create` makes the project network, where the fake API has to be before the app.
        await stack.compose("create", timeout=180)
        await stack.start_fake_coincap(app_image)

        up_started = loop.time()
        up = asyncio.create_task(
            stack.compose("up", "-d", "--wait", "--wait-timeout", "300", timeout=360)
        )
        first_row = asyncio.create_task(
            wait_until(lambda: row_count(csv_path) >= 1, timeout=360, what="a row in ./data")
        )
        try:
            # The first row usually lands before the health checks pass; a failed `up`
            # never writes one, so its error ends the wait.
            done, _ = await asyncio.wait({up, first_row}, return_when=asyncio.FIRST_COMPLETED)
            if first_row not in done and up.exception() is not None:
                await up
            await first_row
            timings.add("first row in ./data, from `up`", loop.time() - up_started)
            await up
            timings.add("up to healthy (docker compose up -d --wait)", loop.time() - up_started)
        finally:
            for task in (up, first_row):
                task.cancel()
            await asyncio.gather(up, first_row, return_exceptions=True)

        check_csv(csv_path)
        check_ownership(data, uid, gid)
        timings.notes.append(
            f"{await stack.memory()} ({loop.time() - up_started:.0f} s after `up`)"
        )
        assert (data / "crypto_last_values.csv").read_text().startswith(HEADER + "\n")
        status, body = await get(f"http://127.0.0.1:{ports['WEB']}/readyz")
        assert status == 200, body
        status, body = await get(f"http://127.0.0.1:{ports['WEB']}/metrics")
        assert status == 200 and "cryptostream_" in body

        # -- one Kafka node dies (SIGKILL): the partition leader, the hardest case.
        leader = await partition_leader(bootstrap, TOPIC)
        victim = f"kafka-{leader}"
        before = row_count(csv_path)
        with timings.measure(f"failover: {FAILOVER_ROWS} new ticks after killing the leader"):
            await stack.compose("kill", victim)
            killed_at = time.time()
            # Ticks the API served after the node died (the fake stamps them with the
            # shared wall clock) went through the two survivors into the CSV.
            await wait_until(
                lambda: rows_stamped_after(csv_path, killed_at) >= FAILOVER_ROWS,
                timeout=120,
                what=f"ticks to keep flowing with {victim} down",
            )
        victim_status, _ = await stack.state(victim)
        assert victim_status != "running", f"{victim} came back by itself ({victim_status})"

        # -- the app alone stops: SIGTERM, drain, exit 0.
        with timings.measure("stop app (drain)"):
            await stack.compose("stop", "app", timeout=90)
        assert await stack.state("app") == ("exited", 0)
        events = last_run(await stack.app_events())
        assert [e["reason"] for e in named(events, "shutdown_requested")] == ["SIGTERM"]
        assert named(events, "consumer_stopped"), "the consumer did not drain"
        assert [e["exit_code"] for e in named(events, "service_stopped")] == [0]
        assert API_KEY not in json.dumps(events), "the API key is in the logs"
        # With one node still down, read the topic from the host's listeners.
        with timings.measure("read topic from the host, compare with CSV"):
            after_stop = await check_csv_matches_topic(csv_path, bootstrap)
        assert after_stop >= before + FAILOVER_ROWS

        # -- `docker compose up` again: the dead node rejoins, the same files continue.
        snapshot = csv_path.read_bytes()
        with timings.measure("up again to healthy"):
            await stack.compose("up", "-d", "--wait", "--wait-timeout", "300", timeout=360)
        await wait_until(
            lambda: row_count(csv_path) >= after_stop + 12, timeout=60, what="rows after restart"
        )
        assert csv_path.read_bytes().startswith(snapshot), "the restart rewrote earlier rows"
        check_csv(csv_path)
        assert (await stack.state(victim))[0] == "running"

        # -- `docker compose down`: the app drains and leaves a complete CSV.
        app_id = await stack.container("app")
        follower = await asyncio.create_subprocess_exec(  # ends when `down` removes the app
            "docker",
            "logs",
            "-f",
            app_id,
            env=stack.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        # The fake leaves first: a network with a foreign container cannot be removed.
        await stack.docker("rm", "-f", "-v", stack.fake)
        with timings.measure("down (docker compose down)"):
            await stack.down()
        out, _ = await asyncio.wait_for(follower.communicate(), 60)
        final_log = out.decode(errors="replace")
        final_events = last_run(parse_events(final_log))
        assert [e["reason"] for e in named(final_events, "shutdown_requested")] == ["SIGTERM"]
        assert named(final_events, "consumer_stopped"), final_log[-3000:]
        assert [e["exit_code"] for e in named(final_events, "service_stopped")] == [0]
        check_ownership(data, uid, gid)
        # Kafka's volumes outlive `down`: bring the brokers back to compare the whole topic.
        with timings.measure("up Kafka only, compare topic with CSV"):
            await stack.compose(
                "up",
                "-d",
                "--wait",
                "--wait-timeout",
                "300",
                "kafka-1",
                "kafka-2",
                "kafka-3",
                timeout=360,
            )
            total = await check_csv_matches_topic(csv_path, bootstrap)
        assert total > after_stop
        _, last = csv_rows(data / "crypto_last_values.csv")
        assert {r["id"] for r in last} == ASSETS
        timings.notes.append(f"{total} rows in crypto_data.csv, each tick on the topic once")
    except BaseException:
        with contextlib.suppress(Exception):
            print(await stack.diagnostics())
        raise
    finally:
        if follower is not None and follower.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                follower.kill()
            await follower.wait()
        with timings.measure("clean up (down -v, rm, rmi)"):
            await stack.remove(app_image)
        with capsys.disabled():
            print(timings.table())
