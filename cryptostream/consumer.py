"""Consumer stage: read the topic in batches and hand them to the exactly-once CSV sink.

Auto-commit is off. The sink's own state file is the source of truth for
positions: on every assignment the consumer seeks to it, so a batch whose
transaction did not complete is read again. Kafka's committed offsets follow
the sink (for lag monitoring and for a data directory that has no state yet).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import tenacity
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from cryptostream.config import KafkaConfig
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.retry import log_retries
from cryptostream.sink.csvsink import CsvSink, Record, SinkWriteError
from cryptostream.topic import Topic, client_options, stop_client

log = get_logger(__name__)

#: Bytes per partition per fetch (aiokafka's default is 1 MiB): see ``_start``.
FETCH_BYTES = 4 * 1024 * 1024


class _SeekToSinkState(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Consumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Wait for a batch in flight: its transaction completes before we let go.
        async with self._owner.lock:
            self._owner.assigned = set()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._owner.lock:
            self._owner.on_assigned(set(assigned))


class Consumer:
    def __init__(self, config: KafkaConfig, topic: Topic, sink: CsvSink, metrics: Metrics) -> None:
        self._config = config
        self._topic = topic
        self._sink = sink
        self._metrics = metrics
        self._client: AIOKafkaConsumer | None = None
        self._closing = False
        self._targets: dict[TopicPartition, int] | None = None
        self.lock = asyncio.Lock()
        self.assigned: set[TopicPartition] = set()
        self.connected = False
        self.sink_failing: str | None = None
        self.written = 0

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            client = await self._start()
            while True:
                if self._closing and await self._caught_up(client):
                    break
                batches = await client.getmany(timeout_ms=200, max_records=self._config.max_batch)
                self.connected = True
                records = [
                    Record(tp.partition, m.offset, m.value)
                    for tp in sorted(batches, key=lambda t: t.partition)
                    for m in batches[tp]
                ]
                if records:
                    async with self.lock:
                        await self._write(records)
                        await self._commit(client)
                self._update_lag(client)
        finally:
            await self._stop()
        log.info("consumer_stopped", written=self.written)

    def close(self) -> None:
        """Ask :meth:`run` to read up to the topic's current end, write it, and return."""
        self._closing = True

    async def _start(self) -> AIOKafkaConsumer:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type((KafkaError, OSError, TimeoutError)),
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10),
            stop=tenacity.stop_never,  # Kafka may arrive later; shutdown cancels us
            before_sleep=log_retries("kafka_consumer_start_failed"),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._topic.ensure()
                client = AIOKafkaConsumer(
                    **client_options(self._config),
                    group_id=self._config.group_id,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    max_poll_records=self._config.max_batch,
                    # aiokafka fetches a partition again only once its buffer is empty,
                    # and each fetch is a round trip the sink waits for: while catching up,
                    # one fetch should feed several batches (~16k ticks), not one (1 MiB).
                    max_partition_fetch_bytes=FETCH_BYTES,
                    metadata_max_age_ms=30_000,
                    session_timeout_ms=int(self._config.session_timeout * 1000),
                    heartbeat_interval_ms=max(100, int(self._config.session_timeout * 1000 / 3)),
                    max_poll_interval_ms=int(self._config.max_poll_interval * 1000),
                )
                # Set before start(): the listener seeks with it as soon as partitions come.
                self._client = client
                client.subscribe([self._config.topic], listener=_SeekToSinkState(self))
                try:
                    async with asyncio.timeout(self._config.request_timeout * 2):
                        await client.start()
                except BaseException:
                    self._client = None
                    await stop_client(client, "consumer")
                    raise
        log.info("kafka_consumer_started", group_id=self._config.group_id)
        return client

    async def _stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await stop_client(client, "consumer")

    # -- assignment ----------------------------------------------------------------

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        client = self._client
        offsets = self._sink.committed_offsets()
        for tp in assigned:
            if tp.partition in offsets and client is not None:
                client.seek(tp, offsets[tp.partition])
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            from_sink_state={
                p: o for p, o in offsets.items() if p in {t.partition for t in assigned}
            }
            or None,
        )

    # -- writing -------------------------------------------------------------------

    async def _write(self, records: list[Record]) -> None:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(SinkWriteError),
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=15),
            stop=tenacity.stop_never,  # the batch is kept until the disk takes it
            before_sleep=self._sink_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                result = self._sink.write(records)
        if self.sink_failing is not None:
            log.info("sink_recovered", after=self.sink_failing)
            self.sink_failing = None
        self.written += result.written
        m = self._metrics
        m.ticks_written.inc(result.written)
        if result.duplicates:
            m.duplicates_skipped.inc(result.duplicates)
            log.info("duplicates_skipped", count=result.duplicates)
        if result.dead_letters:
            log.warning("poison_messages_dead_lettered", count=result.dead_letters)
        for latency in result.latencies:
            m.latency.observe(latency)

    def _sink_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        kind = getattr(exc, "kind", "error")
        if self.sink_failing != kind:
            self.sink_failing = kind
            wait = state.next_action.sleep if state.next_action else 0.0
            log.error("sink_write_failed", kind=kind, error=str(exc), retry_in=round(wait, 2))

    async def _commit(self, client: AIOKafkaConsumer) -> None:
        offsets = self._sink.committed_offsets()
        to_commit = {tp: offsets[tp.partition] for tp in self.assigned if tp.partition in offsets}
        if not to_commit:
            return
        try:
            async with asyncio.timeout(self._config.request_timeout):
                await client.commit(to_commit)
        except (KafkaError, TimeoutError) as exc:
            # The sink state already holds these offsets; Kafka's copy catches up later.
            log.debug("kafka_commit_failed", error=str(exc) or type(exc).__name__)

    def _update_lag(self, client: AIOKafkaConsumer) -> None:
        offsets = self._sink.committed_offsets()
        lag = 0
        for tp in self.assigned:
            high = client.highwater(tp)
            if high is not None:
                lag += max(0, high - offsets.get(tp.partition, 0))
        self._metrics.consumer_lag.set(lag)

    async def _caught_up(self, client: AIOKafkaConsumer) -> bool:
        if not self.assigned:
            return True
        if self._targets is None:
            try:
                async with asyncio.timeout(self._config.request_timeout):
                    self._targets = await client.end_offsets(list(self.assigned))
            except (KafkaError, TimeoutError) as exc:
                log.warning("end_offsets_unavailable", error=str(exc) or type(exc).__name__)
                return True
            log.info(
                "consumer_draining",
                to={tp.partition: o for tp, o in self._targets.items()},
            )
        offsets = self._sink.committed_offsets()
        for tp, end in self._targets.items():
            if offsets.get(tp.partition, 0) >= end:
                continue
            # A partition the sink never wrote starts at Kafka's committed offset.
            if tp in self.assigned:
                try:
                    # position() waits for a valid position without a deadline of its own.
                    async with asyncio.timeout(self._config.request_timeout):
                        if await client.position(tp) >= end:
                            continue
                except (KafkaError, TimeoutError):
                    pass  # not known yet: not caught up (the shutdown budget bounds this)
            return False
        return True
