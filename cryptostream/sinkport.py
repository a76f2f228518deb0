"""What the consumer needs of a sink: the methods it calls and the types it exchanges.

The consumer depends on this module only, never on :mod:`cryptostream.sink`
(which implements it). A sink takes the Kafka client's own records as they
come (anything with ``partition``, ``offset`` and ``value``): no copy per
message on the way in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptostream.tick import Tick


class SinkWriteError(Exception):
    """A batch could not be made durable; nothing of it counts as written."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class KafkaRecord(Protocol):
    """The part of a Kafka record a sink reads (aiokafka's ``ConsumerRecord`` has it)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class BatchResult:
    written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    skipped_below_offset: int = 0
    #: The ticks of the rows written, once durable (for observers and the latency).
    ticks: list[Tick] = field(default_factory=list)
    #: Wall-clock time the batch became durable (0.0: nothing was committed).
    committed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """What tells the topic the offsets were read from apart from another of its name.

    ``cluster_id`` is the Kafka cluster's (None when the broker did not say);
    ``log_start``/``log_end`` are each partition's first and next offset when the
    consumer last looked. A log never starts earlier than it once did, and a
    stored offset is never beyond the log's end: a topic that breaks either, or
    that lives in another cluster, is not the one the offsets came from.
    (Topic ids would say it directly, but the Kafka client does not expose them.)
    """

    cluster_id: str | None
    log_start: dict[int, int] = field(default_factory=dict)
    log_end: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "log_start": {str(p): o for p, o in sorted(self.log_start.items())},
            "log_end": {str(p): o for p, o in sorted(self.log_end.items())},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TopicIdentity:
        cluster = raw.get("cluster_id")
        return cls(
            cluster_id=None if cluster is None else str(cluster),
            log_start={int(p): int(o) for p, o in raw.get("log_start", {}).items()},
            log_end={int(p): int(o) for p, o in raw.get("log_end", {}).items()},
        )


class BatchSink(Protocol):
    """The exactly-once sink as the consumer drives it.

    ``write`` and ``set_identity`` are awaited: a sink may do its file work off
    the event loop. Calls never overlap (the consumer awaits each one).
    """

    @property
    def identity(self) -> TopicIdentity | None:
        """The topic the committed offsets were read from (None: not recorded yet)."""
        ...

    def committed_offsets(self) -> dict[int, int]:
        """Next offset to read per partition, as of the last durable batch."""
        ...

    async def set_identity(
        self, identity: TopicIdentity, reset: dict[int, int | None] | None = None
    ) -> None:
        """Durably record the topic's identity (and move partitions). Raises
        :class:`SinkWriteError`."""
        ...

    async def write(self, records: Sequence[KafkaRecord]) -> BatchResult:
        """Make one batch durable. Raises :class:`SinkWriteError`; then nothing counts."""
        ...

    async def holds_record(self, value: bytes | None) -> bool:
        """Does a committed file hold the row of this record's tick? (False for a value
        that is no tick.) Tells a log that lost its tail from a new one."""
        ...
