"""Producer stage: publish queued ticks to Kafka with ``acks=all`` and idempotence.

A batch leaves the producer's hands only when Kafka acknowledged every tick in
it, and a tick counts as published only once its own acknowledgement came back.
Any failure — broker down, timeout, metadata stuck — closes the Kafka client
(aiokafka can hang with a broken connection), waits per the retry policy and
sends the ticks still unacknowledged again with a fresh client. A resend may
put a tick on the topic twice (its acknowledgement was lost), never more than
one batch apart; the sink drops such duplicates (same asset, time, price).

On shutdown the queue is drained under a deadline; then the Kafka client is
closed — which flushes what it still buffers, so ticks it delivers then count as
published — and only the ticks still unacknowledged after that are spooled to
``.cryptostream/unpublished.jsonl``, published first on the next start. How far
that got is kept in ``unpublished.progress``, so a crash while publishing the
spool resends at most the batch in flight. The spool is bounded like the queue
it continues: at most ``source.queue_size`` + one batch ticks, the newest kept;
what it drops is counted (``cryptostream_spool_dropped_total``) and logged.

``firstValue`` in the Kafka message is the producer's: the first price of the
asset and UTC day this service handed to Kafka (see :mod:`cryptostream.firstvalue`).
The CSV files carry the sink's own, decided from what the files hold.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import tenacity
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from cryptostream.config import KafkaConfig
from cryptostream.files import atomic_write
from cryptostream.firstvalue import FirstValues
from cryptostream.layout import FIRST_VALUES_FILE, SPOOL_FILE, SPOOL_PROGRESS_FILE
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.queue import TickQueue
from cryptostream.retry import attempt_then_retry, log_kafka_retries
from cryptostream.tick import InvalidTick, Tick, tick_from_json
from cryptostream.topic import Topic, client_options, stop_client

log = get_logger(__name__)

BATCH = 2000
#: The partitioner ``AIOKafkaProducer.send()`` uses by default (Kafka's murmur2).
_PARTITIONER = DefaultPartitioner()


# The PublishError kinds that mean no broker answered (see _send).
UNREACHABLE = frozenset({"KafkaConnectionError", "connection"})


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
        *,
        fsync: bool = True,
    ) -> None:
        self._config = config
        self._topic = topic
        self._queue = queue
        self._metrics = metrics
        self._spool = data_dir / SPOOL_FILE
        self._progress = data_dir / SPOOL_PROGRESS_FILE
        # One run leaves at most a full queue and a batch in hand; across restarts
        # while Kafka stays away the spool keeps the newest that many (as the queue).
        self.spool_limit = queue.maxsize + BATCH
        self._first_values = FirstValues(data_dir / FIRST_VALUES_FILE, fsync=fsync)
        #: Spooled ticks not yet handed to delivery; None until the spool was read.
        self._spool_rest: list[Tick] | None = None
        self._client: AIOKafkaProducer | None = None
        self._closing = False
        self._in_hand: list[Tick] = []
        # The loop's time the last batch was taken (see _next_batch).
        self._previous_batch = float("-inf")
        # The send future of each tick in hand, where it has one: a client being
        # closed may still deliver it.
        self._in_flight: list[asyncio.Future[Any] | None] = []
        self.connected = False
        self.published = 0

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._publish_spool()
            while not self._closing or len(self._queue):
                if batch := await self._next_batch():
                    await self._deliver(batch)
        finally:
            try:
                # First close (flush) the client: what it delivers now is published,
                # and must not also be spooled (it would reach the topic twice).
                await self._close_client()
            finally:
                # Whatever is not acknowledged goes to disk, never into thin air.
                leftovers = self._in_hand + (self._spool_rest or []) + self._queue.drain_all()
                self._hand([])
                if leftovers or self._spool_rest is not None:
                    self._write_spool(leftovers)
                # The spooled ticks go out first on the next start, with the firstValue
                # they carry: the saved values must agree with them.
                self._first_values.save()
        log.info("producer_stopped", published=self.published)

    def close(self) -> None:
        """Ask :meth:`run` to publish what is queued and return."""
        self._closing = True
        self._queue.wake()

    # -- delivery ------------------------------------------------------------------

    def _hand(self, ticks: list[Tick]) -> None:
        self._in_hand = ticks
        self._in_flight = []

    async def _next_batch(self) -> list[Tick]:
        """Up to ``BATCH`` queued ticks. A short batch taken less than ``linger_ms`` after
        the previous one waits for the rest of that time, and what comes meanwhile joins
        it: ticks that trickle in go one request per ``linger_ms``, not one each. A full
        batch, or the first after a quieter spell, goes at once: a source that delivers
        its ticks in bursts (a poll, the demo's slices) has nothing to wait for, and its
        ticks would only be late by the linger.

        The linger is here, not in the Kafka client: a batch is acknowledged before the
        next is taken, so nothing could join a record batch lingering in the client.
        """
        # Stamped as taken: from here on, a stop spools these ticks as they would go.
        batch = self._first_values.stamp(await self._queue.get_batch(BATCH))
        self._hand(batch)
        loop = asyncio.get_running_loop()
        wait = self._previous_batch + self._config.linger_ms / 1000 - loop.time()
        if batch and len(batch) < BATCH and wait > 0 and not self._closing:
            await asyncio.sleep(wait)
            if len(self._queue):
                batch += self._first_values.stamp(await self._queue.get_batch(BATCH - len(batch)))
                self._hand(batch)
        if batch:
            self._previous_batch = loop.time()
        return batch

    async def _deliver(self, batch: list[Tick]) -> None:
        """Publish ``batch`` until every tick is acknowledged; retries send only the rest."""
        self._hand(batch)
        _, attempts = await attempt_then_retry(
            lambda: self._send(self._in_hand), self._publish_policy, PublishError
        )
        self._hand([])
        # Acknowledged: the day's first values they carry are facts on the topic now.
        self._first_values.save()
        if attempts > 1:
            log.info("kafka_publish_recovered", attempts=attempts, batch=len(batch))

    def _publish_policy(self) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(PublishError),
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10),
            stop=tenacity.stop_never,  # ticks wait in the queue; shutdown spools them
            before_sleep=log_kafka_retries(
                "kafka_publish_failed",
                "producer",
                self._config.bootstrap_servers,
                lambda exc: getattr(exc, "kind", "") in UNREACHABLE,
                lambda: {"queued": len(self._queue)},
            ),
            reraise=True,
        )

    async def _send(self, ticks: list[Tick]) -> None:
        """One attempt. Counts every tick Kafka acknowledged; on failure ``_in_hand``
        keeps only the others, in their order, and :class:`PublishError` is raised."""
        # futures[i] settles when Kafka acknowledged the record batch holding ticks[i]
        # (None: not handed to the client).
        futures: list[asyncio.Future[Any] | None] = [None] * len(ticks)
        failure: tuple[str, str] | None = None
        try:
            client = await self._ensure_client()
            async with asyncio.timeout(self._config.send_timeout):
                await self._send_batches(client, ticks, futures)
                pending = {f for f in futures if f is not None}
                if pending:
                    await asyncio.wait(pending)
        except TimeoutError:
            failure = ("timeout", f"no acknowledgement within {self._config.send_timeout:g} s")
        except KafkaError as exc:
            failure = (type(exc).__name__, str(exc) or type(exc).__name__)
        except OSError as exc:
            failure = ("connection", str(exc))
        except asyncio.CancelledError:
            # Forced stop: what Kafka confirmed is done; only the rest gets spooled.
            self._settle(ticks, futures)
            raise
        error = self._settle(ticks, futures)
        if self._in_hand:
            kind, message = failure or error or ("unacknowledged", "no acknowledgement")
            self.connected = False
            self._metrics.publish_errors.labels(kind).inc()
            # A fresh client per attempt: the old one may hold a dead connection or
            # a producer-id sequence that no longer matches what the broker saw.
            await self._close_client()
            raise PublishError(kind, message)
        self.connected = True

    async def _send_batches(
        self,
        client: AIOKafkaProducer,
        ticks: list[Tick],
        futures: list[asyncio.Future[Any] | None],
    ) -> None:
        """Hand ``ticks`` to ``client`` as whole record batches, one per partition at a time.

        ``client.send()`` per tick cost some 20 µs of Python: a coroutine, a pure-Python
        murmur2 of the key, a future and a scheduled callback per record. Here a tick
        costs its JSON and one append to a record batch (aiokafka's compiled builder),
        about 1.5 µs; the partition of a key is the one ``send()`` would choose (the
        same partitioner), computed once per asset. Batches are submitted in order and
        closed, so each partition's ticks keep their order and none lingers in the
        client (see :meth:`_next_batch`). ``futures`` says which ticks went out, also
        when this fails midway.
        """
        topic = self._config.topic
        all_partitions = sorted(await client.partitions_for(topic))
        partition_of: dict[bytes, int] = {}
        # partition -> (open batch, indexes of its ticks)
        open_batches: dict[int, tuple[Any, list[int]]] = {}

        async def submit(partition: int, batch: Any, members: list[int]) -> None:
            batch.close()  # complete: the client sends it without lingering
            future = await client.send_batch(batch, topic, partition=partition)
            for i in members:
                futures[i] = future

        for i, tick in enumerate(ticks):
            key = tick.key()
            value = tick.to_json()
            if (partition := partition_of.get(key)) is None:
                # Keyed: the partitioner ignores availability, so the choice is stable.
                partition = partition_of[key] = _PARTITIONER(key, all_partitions, all_partitions)
            batch, members = open_batches.get(partition) or (None, [])
            if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:  # full: it goes while the next one fills
                    await submit(partition, batch, members)
                # An empty batch takes any record (a larger one alone, as send() would).
                batch, members = client.create_batch(), []
                batch.append(key=key, value=value, timestamp=None)
                open_batches[partition] = (batch, members)
            members.append(i)
        for partition, (batch, members) in open_batches.items():
            await submit(partition, batch, members)

    def _settle(
        self, ticks: list[Tick], futures: list[asyncio.Future[Any] | None]
    ) -> tuple[str, str] | None:
        """Count the acknowledged ticks; keep the others in ``_in_hand`` (with their
        futures still pending in ``_in_flight``). Returns the first error Kafka
        reported for one of them, if any."""
        unacked: list[Tick] = []
        pending: list[asyncio.Future[Any] | None] = []
        error: tuple[str, str] | None = None
        for tick, future in zip(ticks, futures, strict=True):
            if future is None or not future.done() or future.cancelled():
                unacked.append(tick)
                pending.append(future if future is not None and not future.done() else None)
            elif (exc := future.exception()) is not None:
                unacked.append(tick)
                pending.append(None)
                error = error or (type(exc).__name__, str(exc) or type(exc).__name__)
        acked = len(ticks) - len(unacked)
        self.published += acked
        self._metrics.ticks_published.inc(acked)
        self._in_hand = unacked
        self._in_flight = pending
        if unacked:
            for future in {f for f in futures if f is not None}:
                # Late outcomes of an abandoned client are of no interest: no
                # "exception was never retrieved" noise when it is closed.
                future.add_done_callback(_ignore_outcome)
        return error

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
                # A whole BATCH of ticks (~0.5 MB) in one record batch, one request: with
                # idempotence aiokafka has one request per partition in flight, so two
                # smaller batches cost two round trips. librdkafka's default size, and
                # within Kafka's default message.max.bytes (1 MiB).
                max_batch_size=1_000_000,
                compression_type=None,
            )
            try:
                await client.start()
            except BaseException:
                await stop_client(client, "producer")
                raise
        self._client = client
        self.connected = True
        log.info("kafka_producer_connected", bootstrap_servers=self._config.bootstrap_servers)
        return client

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await stop_client(client, "producer")
        finally:
            # Closing flushes the client's buffer: a tick in hand Kafka acknowledged
            # meanwhile is published, not to be sent (or spooled) again.
            if any(f is not None for f in self._in_flight):
                self._settle(self._in_hand, self._in_flight)

    # -- spool ---------------------------------------------------------------------

    def _write_spool(self, ticks: list[Tick]) -> None:
        """Replace the spool with everything still unpublished (``ticks`` last)."""
        # Spooled ticks not read back yet (the run ended before) stay first.
        previous = self._load_spool()[0] if self._spool_rest is None else []
        all_ticks = previous + ticks
        dropped = len(all_ticks) - self.spool_limit
        if dropped > 0:
            # The oldest go, as in the queue: the newest prices matter most.
            all_ticks = all_ticks[dropped:]
            self._metrics.spool_dropped.inc(dropped)
            log.error(
                "unpublished_ticks_dropped",
                count=dropped,
                kept=len(all_ticks),
                path=str(self._spool),
            )
        try:
            if all_ticks:
                atomic_write(self._spool, b"".join(t.to_json() + b"\n" for t in all_ticks))
            else:
                self._spool.unlink(missing_ok=True)
            self._progress.unlink(missing_ok=True)
        except OSError as exc:
            self._metrics.publish_errors.labels("spool_failed").inc()
            log.error(
                "unpublished_ticks_lost",
                count=len(ticks),
                error=exc.strerror or str(exc),
                path=str(self._spool),
            )
            return
        if ticks:
            log.warning("unpublished_ticks_spooled", count=len(ticks), path=str(self._spool))

    def _spool_id(self) -> list[int]:
        # A rewritten spool is a new file (atomic replace): another inode and mtime.
        st = self._spool.stat()
        return [st.st_ino, st.st_size, st.st_mtime_ns]

    def _load_spool(self) -> tuple[list[Tick], int]:
        """(ticks still to publish, how many before them were acknowledged already)."""
        try:
            data = self._spool.read_bytes()
            spool_id = self._spool_id()
        except FileNotFoundError:
            return [], 0
        ticks: list[Tick] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                ticks.append(tick_from_json(line))
            except InvalidTick as exc:
                log.error("spooled_tick_unreadable", reason=exc.reason)
        try:
            progress = orjson.loads(self._progress.read_bytes())
            if progress["spool"] == spool_id:
                done = min(len(ticks), max(0, int(progress["done"])))
                return ticks[done:], done
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # no (or another spool's) progress: publish it all
        return ticks, 0

    async def _publish_spool(self) -> None:
        rest, done = self._load_spool()
        self._spool_rest = rest
        if not rest:
            self._write_spool([])  # nothing (left) to publish: tidy up
            return
        log.info("publishing_spooled_ticks", count=len(rest), already_published=done or None)
        spool_id = self._spool_id()
        while rest:
            chunk, rest = rest[:BATCH], rest[BATCH:]
            self._spool_rest = rest
            await self._deliver(chunk)
            done += len(chunk)
            try:
                # A crash from here on does not publish this chunk again.
                atomic_write(self._progress, orjson.dumps({"spool": spool_id, "done": done}))
            except OSError as exc:
                log.warning("spool_progress_not_saved", error=exc.strerror or str(exc))
        self._write_spool([])


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
