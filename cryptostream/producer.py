"""Producer stage: publish queued ticks to Kafka with ``acks=all`` and idempotence.

A batch leaves the producer's hands only when Kafka acknowledged every tick in
it. Any failure — broker down, timeout, metadata stuck — closes the Kafka
client (aiokafka can hang with a broken connection), waits per the retry
policy and sends the whole batch again with a fresh client. A resend may put a
tick on the topic twice; the sink drops such duplicates (same asset, time, price).

On shutdown the queue is drained under a deadline; ticks still unpublished are
spooled to ``.cryptostream/unpublished.jsonl`` and published first on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import tenacity
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from cryptostream.config import KafkaConfig
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.queue import TickQueue
from cryptostream.sink.files import atomic_write
from cryptostream.tick import InvalidTick, Tick, tick_from_json
from cryptostream.topic import Topic, client_options

log = get_logger(__name__)

SPOOL_FILE = ".cryptostream/unpublished.jsonl"
BATCH = 2000


class PublishError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Producer:
    def __init__(
        self,
        config: KafkaConfig,
        topic: Topic,
        queue: TickQueue,
        metrics: Metrics,
        data_dir: Path,
    ) -> None:
        self._config = config
        self._topic = topic
        self._queue = queue
        self._metrics = metrics
        self._spool = data_dir / SPOOL_FILE
        self._client: AIOKafkaProducer | None = None
        self._closing = False
        self._in_hand: list[Tick] = []
        self.connected = False
        self.published = 0

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._publish_spool()
            while not (self._closing and not len(self._queue)):
                batch = await self._queue.get_batch(BATCH)
                if not batch:
                    continue
                self._in_hand = batch
                await self._deliver(batch)
                self._in_hand = []
        finally:
            # Whatever is not acknowledged goes to disk, never into thin air.
            leftovers = self._in_hand + self._queue.drain_all()
            self._in_hand = []
            if leftovers:
                self._write_spool(leftovers)
            await self._close_client()
        log.info("producer_stopped", published=self.published)

    def close(self) -> None:
        """Ask :meth:`run` to publish what is queued and return."""
        self._closing = True
        self._queue.wake()

    # -- delivery ------------------------------------------------------------------

    async def _deliver(self, batch: list[Tick]) -> None:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(PublishError),
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10),
            stop=tenacity.stop_never,  # ticks wait in the queue; shutdown spools them
            before_sleep=self._before_sleep,
            reraise=True,
        )
        attempts = 0
        async for attempt in retrying:
            with attempt:
                attempts += 1
                await self._send(batch)
        if attempts > 1:
            log.info("kafka_publish_recovered", attempts=attempts, batch=len(batch))

    async def _send(self, batch: list[Tick]) -> None:
        try:
            client = await self._ensure_client()
            async with asyncio.timeout(self._config.send_timeout):
                futures = [
                    await client.send(self._config.topic, tick.to_json(), key=tick.key())
                    for tick in batch
                ]
                await asyncio.gather(*futures)
        except TimeoutError:
            await self._fail(
                "timeout", f"no acknowledgement within {self._config.send_timeout:g} s"
            )
        except KafkaError as exc:
            await self._fail(type(exc).__name__, str(exc) or type(exc).__name__)
        except OSError as exc:
            await self._fail("connection", str(exc))
        self.connected = True
        self.published += len(batch)
        self._metrics.ticks_published.inc(len(batch))

    async def _fail(self, kind: str, message: str) -> None:
        self.connected = False
        self._metrics.publish_errors.labels(kind).inc()
        # A fresh client per attempt: the old one may hold a dead connection or
        # a producer-id sequence that no longer matches what the broker saw.
        await self._close_client()
        raise PublishError(kind, message)

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        fields = {
            "kind": getattr(exc, "kind", "error"),
            "error": str(exc),
            "queued": len(self._queue),
            "retry_in": round(wait, 2),
        }
        if state.attempt_number == 1:
            log.warning("kafka_publish_failed", **fields)
        else:
            log.debug("kafka_publish_retry", attempt=state.attempt_number, **fields)

    async def _ensure_client(self) -> AIOKafkaProducer:
        if self._client is not None:
            return self._client
        async with asyncio.timeout(self._config.request_timeout * 2):
            await self._topic.ensure()
            client = AIOKafkaProducer(
                **client_options(self._config),
                acks="all",
                enable_idempotence=True,
                linger_ms=self._config.linger_ms,
                max_batch_size=256 * 1024,
                compression_type=None,
            )
            try:
                await client.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), 5)
                raise
        self._client = client
        log.info("kafka_producer_connected", bootstrap_servers=self._config.bootstrap_servers)
        return client

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(5):
                await client.stop()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("kafka_producer_stop_failed", error=str(exc) or type(exc).__name__)

    # -- spool ---------------------------------------------------------------------

    def _write_spool(self, ticks: list[Tick]) -> None:
        previous = self._read_spool()
        all_ticks = previous + ticks
        atomic_write(self._spool, b"".join(t.to_json() + b"\n" for t in all_ticks))
        log.warning("unpublished_ticks_spooled", count=len(ticks), path=str(self._spool))

    def _read_spool(self) -> list[Tick]:
        try:
            data = self._spool.read_bytes()
        except FileNotFoundError:
            return []
        ticks: list[Tick] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                ticks.append(tick_from_json(line))
            except InvalidTick as exc:
                log.error("spooled_tick_unreadable", reason=exc.reason)
        return ticks

    async def _publish_spool(self) -> None:
        ticks = self._read_spool()
        if not ticks:
            return
        log.info("publishing_spooled_ticks", count=len(ticks))
        for start in range(0, len(ticks), BATCH):
            self._in_hand = ticks[start : start + BATCH]
            await self._deliver(self._in_hand)
        self._in_hand = []
        # Only now: a crash before this line publishes them again (the sink dedups).
        self._spool.unlink()
