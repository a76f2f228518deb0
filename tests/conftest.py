"""Shared fixtures: a real Kafka broker for the session, a fake CoinCap per test,
and a factory that runs the real service in-process and always stops it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cryptostream.config import Config, load_config
from cryptostream.service import Service
from tests.support.fake_coincap import FakeCoinCap

API_KEY = "test-key-5ea6b1d0c9f04e8f"
REPO = Path(__file__).resolve().parent.parent

_counter = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Apache Kafka broker: $KAFKA_BOOTSTRAP_SERVERS, else one started here."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    import kafkalocal

    cluster = kafkalocal.KafkaCluster(nodes=1)
    cluster.start(timeout=300)
    try:
        yield cluster.bootstrap_servers
    finally:
        cluster.stop()


@pytest.fixture
async def fake_coincap() -> AsyncIterator[FakeCoinCap]:
    async with FakeCoinCap(api_key=API_KEY) as fake:
        yield fake


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


ConfigFactory = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """Build a validated Config the way the CLI does, from environment-style overrides."""

    def factory(
        *,
        base_url: str = "http://127.0.0.1:9/v3",
        bootstrap: str = "127.0.0.1:9",
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        topic: str | None = None,
    ) -> Config:
        environ = {
            "COINCAP_API_KEY": API_KEY,
            "CRYPTOSTREAM_COINCAP__BASE_URL": base_url,
            "CRYPTOSTREAM_COINCAP__TIMEOUT": "2",
            "CRYPTOSTREAM_COINCAP__MAX_BACKOFF": "0.2",
            "CRYPTOSTREAM_COINCAP__AUTH_RETRY_INTERVAL": "0.5",
            "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "0.2",
            # Only the fake CoinCap, never a public exchange; credits counted, not capped
            # (tests of the budget set their own).
            "CRYPTOSTREAM_SOURCE__NAME": "coincap",
            "CRYPTOSTREAM_COINCAP__MONTHLY_CREDITS": "0",
            "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "CRYPTOSTREAM_KAFKA__TOPIC": topic or unique("prices"),
            "CRYPTOSTREAM_KAFKA__GROUP_ID": unique("group"),
            "CRYPTOSTREAM_KAFKA__REQUEST_TIMEOUT": "5",
            "CRYPTOSTREAM_KAFKA__SEND_TIMEOUT": "5",
            "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir or tmp_path / "data"),
            "CRYPTOSTREAM_WEB__PORT": "0",
            **(env or {}),
        }
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        return load_config(empty, environ)

    return factory


class RunningService:
    def __init__(self, service: Service, task: asyncio.Task[int]) -> None:
        self.service = service
        self.task = task

    @property
    def data_dir(self) -> Path:
        return self.service.config.storage.data_dir

    async def stop(self, timeout: float = 20) -> int:
        self.service.request_stop("test")
        return await asyncio.wait_for(self.task, timeout)


@pytest.fixture
async def run_service() -> AsyncIterator[Callable[[Config], Any]]:
    """Start the real service in this event loop; every one started is stopped."""
    running: list[RunningService] = []

    async def start(config: Config) -> RunningService:
        service = Service(config)
        task = asyncio.create_task(service.run(install_signal_handlers=False))
        started = asyncio.create_task(service.started.wait())
        done, _ = await asyncio.wait({task, started}, timeout=30, return_when="FIRST_COMPLETED")
        if task in done:
            started.cancel()
            raise AssertionError(f"service ended at start-up with {task.result()}")
        assert started in done, "service did not start in 30 s"
        handle = RunningService(service, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            with contextlib.suppress(Exception):
                await handle.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    """Poll a cheap predicate; for outcomes that have no event to wait on (files on disk)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


def python() -> str:
    return sys.executable
