"""Consumer stage: read the topic in batches and hand them to the exactly-once CSV sink.

Auto-commit is off. The sink's own state file is the source of truth for
positions: on every assignment the consumer seeks to it, so a batch whose
transaction did not complete is read again. Kafka's committed offsets follow
the sink (for lag monitoring and for a data directory that has no state yet).

A topic can be reset under the stored offsets: ``docker compose down -v`` with
``data/`` kept, the topic deleted and created again, another cluster behind
``bootstrap_servers``. Its new records then sit at offsets below the stored
ones, and a sink that ignores records below its offsets would drop every one of
them without a word. So on
every assignment the consumer compares the topic with the identity the sink
recorded (:class:`~cryptostream.sinkport.TopicIdentity`: cluster id, the
log's start and end), and Kafka's "offset out of range" is never answered
silently (``auto_offset_reset="none"``): it is either records removed by
retention before they were read (logged, counted) or a reset. A reset is
logged as an error with the old and the new identity and counted; by default
(``kafka.on_topic_reset = "follow"``) the sink follows the new topic from its
beginning (copies of ticks already in the CSV are still dropped by its
duplicate check, which consults the committed files); ``"stop"`` ends the consumer
with an error naming the topic.

A log that lost its tail is no reset: a broker's unflushed records lost in a power
cut, or an unclean leader election, leave the stored offset beyond the log's end on
the same cluster with the same log start. When the last record the log still has is
a tick the committed files hold, the sink read this very log: the consumer says so
(``topic_truncated``), counts the records the log lost (the CSV keeps them) and reads
on from the log's new end instead of from its beginning.

The consumer knows the sink only as a :class:`~cryptostream.sinkport.BatchSink`
and hands it the Kafka client's records as fetched. Writing a batch is awaited:
the sink does its file work off the event loop (:mod:`cryptostream.sink.worker`),
so heartbeats, fetches, the producer and the web server go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

import tenacity
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)

from cryptostream.config import KafkaConfig
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics
from cryptostream.rawrecords import raw_values
from cryptostream.retry import attempt_then_retry, log_kafka_retries
from cryptostream.sinkport import BatchResult, BatchSink, KafkaRecord, SinkWriteError, TopicIdentity
from cryptostream.topic import Topic, client_options, close_admin, fetch_max_wait_ms, stop_client

log = get_logger(__name__)

#: Bytes per partition per fetch (aiokafka's default is 1 MiB): see ``_start``.
FETCH_BYTES = 4 * 1024 * 1024


class TopicResetError(Exception):
    """The topic behind the stored offsets was reset and the policy is to stop."""


def partition_lag(end: int, next_offset: int) -> int:
    """Messages of a partition not yet in the CSV.

    A stored offset beyond the log's end (a reset not handled yet) must not show
    as "no lag": then every message of the log is unread.
    """
    return end - next_offset if end >= next_offset else end


class _SeekToSinkState(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Consumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Wait for a batch in flight: its transaction completes before we let go.
        async with self._owner.lock:
            self._owner.assigned = set()
            self._owner.generation += 1

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._owner.lock:
            await self._owner.on_assigned(set(assigned))


class Consumer:
    def __init__(
        self, config: KafkaConfig, topic: Topic, sink: BatchSink, metrics: Metrics
    ) -> None:
        self._config = config
        self._topic = topic
        self._sink = sink
        self._metrics = metrics
        self._client: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._closing = False
        self._targets: dict[TopicPartition, int] | None = None
        self.lock = asyncio.Lock()
        self.assigned: set[TopicPartition] = set()
        #: Bumped by every revocation and assignment: a batch fetched across one is stale.
        self.generation = 0
        self.connected = False
        self.sink_failing: str | None = None
        self.written = 0
        # Set where raising is impossible (the rebalance listener); raised by run().
        self._fatal: TopicResetError | None = None
        self._skipped_reported = False
        # Kafka's copy of the offsets, committed in the background (see _commit_soon).
        self._committing: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            client = await self._start()
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if self._closing and await self._caught_up(client):
                    await self._commit_done()
                    await self._commit(client)  # Kafka's copy ends where the sink does
                    break
                generation = self.generation
                try:
                    batches = await client.getmany(
                        timeout_ms=200, max_records=self._config.max_batch
                    )
                except OffsetOutOfRangeError as exc:
                    async with self.lock:
                        await self._out_of_range(client, exc.args[0])
                    continue
                except NoOffsetForPartitionError as exc:
                    async with self.lock:
                        await self._no_position(client, exc.args[0])
                    continue
                if self._fatal is not None:
                    raise self._fatal
                self.connected = True
                # The client's records (raw: see cryptostream.rawrecords), in partition
                # order: no copy per message.
                records: list[KafkaRecord] = [
                    m for tp in sorted(batches, key=lambda t: t.partition) for m in batches[tp]
                ]
                if records:
                    async with self.lock:
                        if generation != self.generation:
                            self._refetch(client, records)
                        else:
                            await self._write(records)
                            self._commit_soon(client)
                self._update_lag(client)
        finally:
            if self._committing is not None:
                # Stopping (or cancelled): a commit in flight does not hold the client up.
                self._committing.cancel()
                self._committing = None
            await self._stop()
        log.info("consumer_stopped", written=self.written)

    def close(self) -> None:
        """Ask :meth:`run` to read up to the topic's current end, write it, and return."""
        self._closing = True

    async def _start(self) -> AIOKafkaConsumer:
        async for attempt in tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type((KafkaError, OSError, TimeoutError)),
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10),
            stop=tenacity.stop_never,  # Kafka may arrive later; shutdown cancels us
            before_sleep=log_kafka_retries(
                "kafka_consumer_start_failed",
                "consumer",
                self._config.bootstrap_servers,
                lambda exc: isinstance(exc, (KafkaConnectionError, OSError, TimeoutError)),
            ),
            reraise=True,
        ):
            with attempt:
                await self._topic.ensure()
                client = AIOKafkaConsumer(
                    **client_options(self._config),
                    group_id=self._config.group_id,
                    # Partition, offset and value per message, not a ConsumerRecord.
                    value_deserializer=raw_values,
                    enable_auto_commit=False,
                    # "Out of range" is a question for _out_of_range, never a silent jump.
                    auto_offset_reset="none",
                    max_poll_records=self._config.max_batch,
                    # aiokafka fetches a partition again only once its buffer is empty,
                    # and each fetch is a round trip the sink waits for: while catching up,
                    # one fetch should feed several batches (~16k ticks), not one (1 MiB).
                    max_partition_fetch_bytes=FETCH_BYTES,
                    # A fetch of partitions at their end waits this long on the broker,
                    # and the other partitions of that broker wait for it: see the key.
                    fetch_max_wait_ms=fetch_max_wait_ms(self._config),
                    metadata_max_age_ms=30_000,
                    session_timeout_ms=int(self._config.session_timeout * 1000),
                    heartbeat_interval_ms=max(100, int(self._config.session_timeout * 1000 / 3)),
                    max_poll_interval_ms=int(self._config.max_poll_interval * 1000),
                )
                # For the cluster id at each assignment: one client for the consumer's
                # life, not one per rebalance (that churns connections to failing brokers).
                admin = AIOKafkaAdminClient(**client_options(self._config))
                # Set before start(): the listener seeks with it as soon as partitions come.
                self._client, self._admin = client, admin
                client.subscribe([self._config.topic], listener=_SeekToSinkState(self))
                try:
                    async with asyncio.timeout(self._config.request_timeout * 2):
                        await admin.start()
                        await client.start()
                except BaseException:
                    await self._stop()
                    raise
        log.info("kafka_consumer_started", group_id=self._config.group_id)
        return client

    async def _stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await stop_client(client, "consumer")
        admin, self._admin = self._admin, None
        if admin is not None:
            await close_admin(admin)

    # -- assignment ----------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.generation += 1
        client = self._client
        offsets = self._sink.committed_offsets()
        if client is not None and assigned:
            # Paused while the topic is checked (that awaits the brokers): no batch may
            # be fetched from a position that the check then moves (a reset), or it
            # would be written first and push the sink's offset past the new start.
            client.pause(*assigned)
            try:
                for tp in assigned:
                    if tp.partition in offsets:
                        client.seek(tp, offsets[tp.partition])
                await self._check_topic(client, assigned)
            except (KafkaError, TimeoutError, OSError) as exc:
                # An "out of range" on the first fetch still catches a reset.
                log.warning("topic_identity_unavailable", error=str(exc) or type(exc).__name__)
            except SinkWriteError as exc:
                log.error("topic_identity_not_saved", error=str(exc))
            finally:
                client.resume(*assigned)
            offsets = self._sink.committed_offsets()
        partitions = sorted(tp.partition for tp in assigned)
        log.info(
            "partitions_assigned",
            partitions=partitions,
            from_sink_state={p: o for p, o in offsets.items() if p in partitions} or None,
        )

    def _refetch(self, client: AIOKafkaConsumer, records: Sequence[KafkaRecord]) -> None:
        """Drop a batch fetched before the partitions were (re)assigned: the listener may
        have moved them (a reset), and written first it would push the sink's offset
        past the new position. Fetch again from where the sink stands."""
        offsets = self._sink.committed_offsets()
        # Each partition's first offset in the batch (read backwards: the first one wins).
        first = {rec.partition: rec.offset for rec in reversed(records)}
        for tp in self.assigned:
            if tp.partition in first:
                client.seek(tp, offsets.get(tp.partition, first[tp.partition]))
        log.debug("stale_batch_dropped", records=len(records))

    # -- the topic's identity --------------------------------------------------------

    async def _observe(self, client: AIOKafkaConsumer, tps: list[TopicPartition]) -> TopicIdentity:
        """The cluster id and the log's start and end of each partition, now."""
        async with asyncio.timeout(self._config.request_timeout):
            described: dict[str, Any] = await self._admin.describe_cluster() if self._admin else {}
            begins = await client.beginning_offsets(tps)
            ends = await client.end_offsets(tps)
        cluster_id = described.get("cluster_id")
        return TopicIdentity(
            str(cluster_id) if cluster_id else None,
            {tp.partition: begins[tp] for tp in tps},
            {tp.partition: ends[tp] for tp in tps},
        )

    async def _check_topic(self, client: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Compare the topic with the identity the offsets were recorded with."""
        tps = sorted(assigned)
        now = await self._observe(client, tps)
        old = self._sink.identity
        offsets = self._sink.committed_offsets()
        moved = bool(old and old.cluster_id and now.cluster_id and now.cluster_id != old.cluster_id)
        resets: dict[int, str] = {}
        for tp in tps:
            p = tp.partition
            if p not in offsets:
                continue
            if moved:
                resets[p] = "cluster_changed"
            elif offsets[p] > now.log_end[p]:
                resets[p] = "offset_beyond_log_end"
            elif old is not None and now.log_start[p] < old.log_start.get(p, 0):
                # A log never starts earlier than it once did: this is another log.
                resets[p] = "log_start_moved_back"
        truncated = await self._truncations(resets, now)
        if truncated:
            await self._follow_truncation(client, truncated, now)
        if resets:
            await self._reset(client, resets, now)
            return
        if truncated:
            return
        if old is None:
            log.info("topic_identity_recorded", topic=self._config.topic, **now.to_json())
        await self._sink.set_identity(_merged(old, now))

    async def _truncations(self, resets: dict[int, str], now: TopicIdentity) -> dict[int, int]:
        """Take out of ``resets`` the partitions whose log lost its tail: partition -> log end.

        A stored offset beyond the log's end, on the same cluster, with a log start that
        did not move back, is either a log that lost its end (a broker's unflushed tail
        in a power cut, an unclean leader election) or a topic created again that has
        fewer records yet. The last record the log still has tells them apart: a tick the
        committed files already hold is one the sink read from this log. (An empty log is
        read from its start either way.)
        """
        old = self._sink.identity
        truncated: dict[int, int] = {}
        for p, reason in sorted(resets.items()):
            start, end = now.log_start[p], now.log_end[p]
            if reason != "offset_beyond_log_end" or end <= start:
                continue
            if old is not None and start < old.log_start.get(p, 0):
                continue  # another log (see _check_topic)
            tp = TopicPartition(self._config.topic, p)
            try:
                value = await self._last_value(tp, start, end)
                held = value is not None and await self._sink.holds_record(value[0])
            except (KafkaError, TimeoutError, OSError, SinkWriteError) as exc:
                # Not known: read from the start (the files still drop every copy).
                log.warning(
                    "topic_last_record_unavailable",
                    partition=p,
                    error=str(exc) or type(exc).__name__,
                )
                continue
            if held:
                truncated[p] = end
                del resets[p]
        return truncated

    async def _last_value(
        self, tp: TopicPartition, start: int, end: int
    ) -> tuple[bytes | None] | None:
        """The value of the last record before ``end`` (None: no record was found there),
        read by a client of no group, so the group's assignment is not touched."""
        client = AIOKafkaConsumer(
            **client_options(self._config),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
        )
        found: tuple[bytes | None] | None = None
        try:
            async with asyncio.timeout(self._config.request_timeout * 2):
                await client.start()
                client.assign([tp])
                # A few records back: the last offsets may hold no record a client sees
                # (a transaction's marker).
                client.seek(tp, max(start, end - 8))
                while await client.position(tp) < end:
                    batches = await client.getmany(tp, timeout_ms=500)
                    for rec in batches.get(tp, []):
                        if rec.offset < end:
                            found = (rec.value,)
        finally:
            await stop_client(client, "consumer")
        return found

    async def _follow_truncation(
        self, client: AIOKafkaConsumer, truncated: dict[int, int], now: TopicIdentity
    ) -> None:
        """The log lost records the CSV holds: say so, count them, read on from its end."""
        offsets = self._sink.committed_offsets()
        for p, end in sorted(truncated.items()):
            lost = offsets[p] - end
            self._metrics.records_truncated.inc(lost)
            log.error(
                "topic_truncated",
                topic=self._config.topic,
                partition=p,
                next_offset=offsets[p],
                log_start=now.log_start[p],
                log_end=end,
                lost=lost,
                note="the log lost its last records after the sink had written them "
                "(the CSV keeps them); reading on from the log's end",
            )
        await self._sink.set_identity(_merged(self._sink.identity, now), reset=dict(truncated))
        for p, end in truncated.items():
            client.seek(TopicPartition(self._config.topic, p), end)

    async def _reset(
        self, client: AIOKafkaConsumer, resets: dict[int, str], now: TopicIdentity
    ) -> None:
        """Say so, count it, and follow the new topic from its beginning (or stop)."""
        config = self._config
        old, offsets = self._sink.identity, self._sink.committed_offsets()
        policy = config.on_topic_reset
        for p, reason in sorted(resets.items()):
            self._metrics.topic_resets.labels(reason).inc()
            log.error(
                "topic_reset",
                topic=config.topic,
                partition=p,
                reason=reason,
                policy=policy,
                old={
                    "cluster_id": old.cluster_id if old else None,
                    "next_offset": offsets.get(p),
                    "log_start": old.log_start.get(p) if old else None,
                    "log_end": old.log_end.get(p) if old else None,
                },
                new={
                    "cluster_id": now.cluster_id,
                    "log_start": now.log_start.get(p),
                    "log_end": now.log_end.get(p),
                },
            )
        if policy == "stop":
            reasons = ", ".join(sorted(set(resets.values())))
            self._fatal = TopicResetError(
                f"Kafka topic {config.topic!r} was reset ({reasons}): the offsets in "
                "the data directory belong to a topic that no longer exists; nothing was "
                "written. Set kafka.on_topic_reset = follow to read the new topic from its "
                "beginning, or use another storage.data_dir"
            )
            return
        new_cluster = "cluster_changed" in resets.values()
        reset: dict[int, int | None] = {p: now.log_start[p] for p in resets}
        if new_cluster:
            # Offsets of partitions not assigned here mean nothing on the new cluster either.
            reset.update({p: None for p in offsets if p not in now.log_start})
        await self._sink.set_identity(now if new_cluster else _merged(old, now), reset=reset)
        for p in resets:
            client.seek(TopicPartition(config.topic, p), now.log_start[p])
        log.warning(
            "topic_reset_followed",
            topic=config.topic,
            partitions={p: now.log_start[p] for p in sorted(resets)},
        )

    async def _no_position(self, client: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Kafka has no committed offset for the group. Raised by a fetch that may have
        started before the assignment listener sought to the sink's offset: that one wins."""
        if tp not in self.assigned:
            return
        offsets = self._sink.committed_offsets()
        if tp.partition in offsets:
            client.seek(tp, offsets[tp.partition])
        else:
            # Neither the sink nor the group has a position: read from the start.
            await client.seek_to_beginning(tp)

    async def _out_of_range(
        self, client: AIOKafkaConsumer, positions: dict[TopicPartition, int]
    ) -> None:
        """Kafka has no record at a partition's position: expired or reset, never silent."""
        tps = sorted(tp for tp in positions if tp in self.assigned)
        if not tps:
            return
        try:
            now = await self._observe(client, tps)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("topic_offsets_unavailable", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(1)  # the fetch fails again and brings us back here
            return
        offsets = self._sink.committed_offsets()
        resets: dict[int, str] = {}
        for tp in tps:
            p, at, begin = tp.partition, positions[tp], now.log_start[tp.partition]
            if p in offsets and at != offsets[p]:
                # Raised for a position already left behind (a seek came after the
                # fetch): the fetcher asks again from where the partition is now.
                continue
            if at < begin:
                # Retention removed records before they were read: gone from Kafka.
                self._metrics.records_expired.inc(begin - at)
                log.error(
                    "topic_records_expired",
                    topic=self._config.topic,
                    partition=p,
                    from_offset=at,
                    log_start=begin,
                    count=begin - at,
                )
                client.seek(tp, begin)
            elif p in offsets:
                # Beyond the end when fetched: the log the offset came from is gone.
                resets[p] = "offset_beyond_log_end"
            else:
                log.warning("group_offset_out_of_range", partition=p, offset=at, log_start=begin)
                client.seek(tp, begin)
        if resets:
            try:
                truncated = await self._truncations(resets, now)
                if truncated:
                    await self._follow_truncation(client, truncated, now)
                if resets:
                    await self._reset(client, resets, now)
            except SinkWriteError as exc:
                log.error("topic_identity_not_saved", error=str(exc))
                await asyncio.sleep(1)

    # -- writing -------------------------------------------------------------------

    def _sink_policy(self) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(SinkWriteError),
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=15),
            stop=tenacity.stop_never,  # the batch is kept until the disk takes it
            before_sleep=self._sink_retry,
            reraise=True,
        )

    async def _write(self, records: Sequence[KafkaRecord]) -> None:
        result, _ = await attempt_then_retry(
            lambda: self._sink.write(records), self._sink_policy, SinkWriteError
        )
        if self.sink_failing is not None:
            log.info("sink_recovered", after=self.sink_failing)
            self.sink_failing = None
        self.written += result.written
        m = self._metrics
        m.ticks_written.inc(result.written)
        if result.skipped_below_offset:
            m.records_skipped_below_offset.inc(result.skipped_below_offset)
            if not self._skipped_reported:
                self._skipped_reported = True
                log.warning(
                    "records_below_offset_skipped",
                    count=result.skipped_below_offset,
                    note="logged once per run; counted in "
                    "cryptostream_records_skipped_below_offset_total",
                )
        if result.duplicates:
            m.duplicates_skipped.inc(result.duplicates)
            log.info("duplicates_skipped", count=result.duplicates)
        if result.dead_letters:
            log.warning("poison_messages_dead_lettered", count=result.dead_letters)
        _observe_latencies(m, result)

    def _sink_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        kind = getattr(exc, "kind", "error")
        if self.sink_failing != kind:
            self.sink_failing = kind
            wait = state.next_action.sleep if state.next_action else 0.0
            log.error("sink_write_failed", kind=kind, error=str(exc), retry_in=round(wait, 2))

    def _commit_soon(self, client: AIOKafkaConsumer) -> None:
        """Copy the sink's offsets to Kafka without waiting for the answer.

        Kafka's committed offsets are for lag monitoring and for a data directory that
        has no state yet: the state file is the truth, so the next batch need not wait
        for a round trip to the group coordinator (~8 % of the time catching up). At
        most one commit is in flight; it commits again until Kafka has the offsets the
        sink has, so an idle topic's lag still ends at zero.
        """
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_until_current(client))

    async def _commit_until_current(self, client: AIOKafkaConsumer) -> None:
        done: dict[int, int] | None = None
        while (offsets := self._sink.committed_offsets()) != done:
            await self._commit(client)
            done = offsets

    async def _commit_done(self) -> None:
        """Let the commit in flight finish (stop or drain)."""
        task, self._committing = self._committing, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task

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
        lag = sum(
            partition_lag(high, offsets.get(tp.partition, 0))
            for tp in self.assigned
            if (high := client.highwater(tp)) is not None
        )
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
            # A partition the sink never wrote starts at Kafka's committed offset; while
            # that is not known, it is not caught up (the shutdown budget bounds this).
            if tp in self.assigned:
                with contextlib.suppress(KafkaError, TimeoutError):
                    # position() waits for a valid position without a deadline of its own.
                    async with asyncio.timeout(self._config.request_timeout):
                        if await client.position(tp) >= end:
                            continue
            return False
        return True


def _observe_latencies(metrics: Metrics, result: BatchResult) -> None:
    """Every row's end-to-end latency into the histogram, counted per batch.

    ``Histogram.observe`` takes a lock and walks the buckets in Python once per
    value (~1.5 µs a row); here each value is placed with one C bisect and every
    bucket is incremented once per batch. The result is the same exposition as
    one ``observe`` per row (``tests/unit/test_sink_worker.py``). It reads
    the histogram's internals; should they change, it falls back to ``observe``.
    """
    done = result.committed_at
    hist = metrics.latency
    bounds: list[float] | None = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None or len(buckets) != len(bounds):
        for tick in result.ticks:
            hist.observe(done - tick.timestamp)
        return
    counts = [0] * len(bounds)
    latency_sum = 0.0
    for tick in result.ticks:
        latency = done - tick.timestamp
        latency_sum += latency
        # observe() counts a value in the first bucket whose bound is >= it (+Inf last).
        counts[bisect_left(bounds, latency)] += 1
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(latency_sum)


def _merged(old: TopicIdentity | None, now: TopicIdentity) -> TopicIdentity:
    """``now``, keeping what ``old`` knew of partitions not looked at this time."""
    if old is None:
        return now
    return TopicIdentity(
        now.cluster_id or old.cluster_id,
        {**old.log_start, **now.log_start},
        {**old.log_end, **now.log_end},
    )
