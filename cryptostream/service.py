"""The supervisor: owns every task of the pipeline and shuts them down in order.

    fetcher ──▶ TickQueue ──▶ producer ──▶ Kafka ──▶ consumer ──▶ CsvSink
                                                        web (health, metrics)

Life of a run (:meth:`Service.run`):

0. lock the data directory (one writer per directory; a second process is
   refused with :class:`~cryptostream.datadir.DataDirError`);
1. start-up: open the sink (recover the CSV files);
2. main: one :class:`asyncio.TaskGroup` runs fetcher, producer, consumer and
   web. A task that fails is logged with its cause and triggers shutdown; the
   run then exits 1 (the container or systemd restarts it);
3. shutdown, on SIGINT/SIGTERM or a failed task, each step under a deadline:
   stop intake (cancel the fetcher) → producer publishes the queue and
   flushes (leftovers are spooled to disk) → consumer reads to the topic's
   end, writes + fsyncs + commits → web stops. A second signal skips the
   waiting: every task is cancelled at once (the sink is crash-safe anyway).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from cryptostream import __version__
from cryptostream.clocks import ClockSkew
from cryptostream.config import Config
from cryptostream.consumer import Consumer
from cryptostream.credits import CreditBudget
from cryptostream.credits.ledger import LedgerUnreadable
from cryptostream.dashboard import Dashboard
from cryptostream.datadir import DataDirLock
from cryptostream.fetcher import Fetcher
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.producer import Producer
from cryptostream.queue import TickQueue
from cryptostream.sink.csvsink import CsvSink, SinkError
from cryptostream.sink.worker import SinkWorker, tune_interpreter
from cryptostream.source import make_source
from cryptostream.topic import Topic
from cryptostream.web import WebServer

log = get_logger(__name__)


class Service:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.failed: str | None = None
        self.forced = False
        self._signals = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: The loop time by which the orderly stop ends (set when it begins).
        self._deadline: float | None = None
        data_dir = config.storage.data_dir
        # The sink's file work runs on a thread of its own, off the event loop.
        self.sink = SinkWorker(
            CsvSink(
                data_dir,
                config.kafka.topic,
                self.metrics,
                fsync=config.storage.fsync,
                retention_days=config.storage.retention_days,
                candles=config.storage.candles,
            )
        )
        self.queue = TickQueue(config.source.queue_size, self.metrics)
        topic = Topic(config.kafka)
        self.producer = Producer(
            config.kafka, topic, self.queue, self.metrics, data_dir, fsync=config.storage.fsync
        )
        self.consumer = Consumer(config.kafka, topic, self.sink, self.metrics)
        self.dashboard = (
            Dashboard(config, self.metrics) if config.web.enabled and config.web.dashboard else None
        )
        # CoinCap's credits: the ledger in the data directory, the plan, the pacing.
        self.credits = CreditBudget(config, self.metrics)
        # How far the sources' clocks are from this machine's (said once, on the page).
        self.clock_skew = ClockSkew(self.metrics)
        if self.dashboard is not None:
            # The dashboard sees each batch once it is durable, never re-reading the CSV.
            self.sink.subscribe(self.dashboard.on_batch)
            self.dashboard.credits = self.credits.status
            self.dashboard.clock = self.clock_skew.status
        self.web = WebServer(config.web, self.metrics, self.readiness, self.dashboard)

    # -- control -------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Begin an orderly shutdown (idempotent). Safe to call from a signal handler."""
        if not self.stop_event.is_set():
            log.info("shutdown_requested", reason=reason)
            self.stop_event.set()

    def handle_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            self.request_stop(name)
        else:
            log.warning("forced_exit", signal=name)
            self.forced = True
            for task in self._tasks.values():
                task.cancel()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        # The producer's flag is current (it drops at the first failed publish); the
        # consumer's only says it has polled once: alone it would hide an outage.
        kafka_ok = self.producer.connected and self.consumer.connected
        sink_ok = self.sink.opened and self.consumer.sink_failing is None
        details = {
            "kafka": "ok" if kafka_ok else "unreachable",
            "sink": "ok" if sink_ok else (self.consumer.sink_failing or "closed"),
            "queued": len(self.queue),
        }
        return kafka_ok and sink_ok and not self.stop_event.is_set(), details

    # -- run -----------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        """Run until stopped; returns the process exit code (0 clean, 1 failure).

        Raises :class:`~cryptostream.datadir.DataDirError` before anything starts
        when another process holds the data directory.
        """
        # Held for the whole run, released by the kernel however the process ends.
        with DataDirLock.acquire(self.config.storage.data_dir):
            loop = asyncio.get_running_loop()
            signals = (signal.SIGINT, signal.SIGTERM) if install_signal_handlers else ()
            for sig in signals:
                loop.add_signal_handler(sig, self.handle_signal, sig)
            try:
                return await self._run()
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        cfg = self.config
        log.info(
            "service_starting",
            version=__version__,
            source=cfg.source.name,
            assets=list(cfg.source.assets),
            kafka=cfg.kafka.bootstrap_servers,
            topic=cfg.kafka.topic,
            data_dir=str(cfg.storage.data_dir),
        )
        try:
            await self.sink.open()
        except SinkError as exc:
            log.error("sink_unavailable", error=str(exc))
            return 1
        tune_interpreter()
        # The credit ledger's file I/O runs on a thread from here on: a backfill holding
        # its lock (even a suspended one) or a slow disk must not stall the loop.
        try:
            await self.credits.start()
        except OSError as exc:
            self.sink.close()
            why, todo = exc.strerror or str(exc), "fix the file or its folder"
            if isinstance(exc, LedgerUnreadable):
                why, todo = exc.why, exc.todo
            log.error(
                "credit_ledger_unreadable",
                path=str(self.credits.ledger.path),
                error=why,
                hint=f"the CoinCap budget needs the count so far: {todo}",
            )
            return 1
        # Room for a failover chain running at once: a price stream holds one
        # connection for good, its REST refresh and each probing source need one more.
        connector = aiohttp.TCPConnector(limit=8, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector) as session:
            source = make_source(cfg, session, self.metrics, self.credits, self.clock_skew)
            fetcher = Fetcher(source, self.queue, self.metrics)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._spawn(tg, "consumer", self.consumer.run())
                    self._spawn(tg, "producer", self.producer.run())
                    self._spawn(tg, "fetcher", fetcher.run())
                    if cfg.web.enabled:
                        self._spawn(tg, "web", self.web.run())
                    self.started.set()
                    log.info("service_started")
                    await self.stop_event.wait()
                    await self._shutdown()
            finally:
                try:
                    self.sink.close()
                finally:
                    # By the stop's deadline, but a second at least (a flush takes
                    # milliseconds): a drain that used the whole budget must not cost
                    # the count.
                    soon = asyncio.get_running_loop().time() + 1.0
                    await self.credits.aclose(max(self._deadline or soon, soon))
        code = 1 if self.failed or self.forced else 0
        log.info("service_stopped", exit_code=code, failed_task=self.failed)
        return code

    def _spawn(self, tg: asyncio.TaskGroup, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = tg.create_task(self._supervised(name, coro), name=name)

    async def _supervised(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run one stage; a failure is logged once with its cause and stops the service."""
        try:
            await coro
        except Exception as exc:
            self.metrics.task_failures.labels(name).inc()
            self.failed = self.failed or name
            log.exception("task_failed", task=name, error=str(exc) or type(exc).__name__)
            self.request_stop(f"{name} failed")
        else:
            if not self.stop_event.is_set():
                log.error("task_exited_early", task=name)
                self.failed = self.failed or name
                self.request_stop(f"{name} exited")

    async def _shutdown(self) -> None:
        budget = self.config.shutdown.timeout
        loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + budget

        def remaining(share: float) -> float:
            return max(0.1, min(deadline - loop.time(), budget * share))

        # 1. Stop intake: no new polls; a poll in flight is abandoned whole.
        await self._finish("fetcher", None, 1.0)
        # 2. Publish what is queued and flush; leftovers are spooled to disk.
        await self._finish("producer", self.producer.close, remaining(0.45))
        # 3. Read to the topic's end, write + fsync + commit, close the consumer.
        await self._finish("consumer", self.consumer.close, remaining(0.9))
        # 4. Last: the web server, so health checks answer during the drain.
        if "web" in self._tasks:
            await self.web.stop()
            await self._finish("web", None, remaining(1.0))

    async def _finish(self, name: str, close: Callable[[], None] | None, budget: float) -> None:
        task = self._tasks.get(name)
        if task is None or task.done():
            return
        if close is None:
            task.cancel()
        else:
            close()
        done, _ = await asyncio.wait({task}, timeout=budget)
        if not done:
            log.warning("shutdown_step_timed_out", task=name, budget=round(budget, 2))
            task.cancel()
            await asyncio.wait({task}, timeout=5)
