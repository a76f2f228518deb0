"""Kafka records as the sink reads them: partition, offset and value, nothing more.

aiokafka turns every message of a fetched record batch into a ``ConsumerRecord``
(eleven fields, the headers copied into a tuple, key and value sizes), and the
sink reads three of them. aiokafka 0.14 has no public way to ask for less, so
this module adapts the one place that builds them, ``PartitionRecords``
(``aiokafka.consumer.fetcher``): a consumer created with
``value_deserializer=raw_values`` gets a :class:`RawRecord` per message instead.
Everything else of aiokafka's unpacking stays as it is: CRC checks, control and
aborted batches skipped, records below the fetch offset skipped, the position
moved record by record.

The adapter is installed at import, and only on an aiokafka whose
``PartitionRecords`` is the one it was written against (:data:`SUPPORTED`,
checked by version and by the method it overrides). On any other the consumer
gets aiokafka's own records through the same ``getmany``: slower, the same rows
(:data:`INSTALLED` says which).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import aiokafka
from aiokafka.consumer import fetcher

#: aiokafka versions whose ``PartitionRecords._consumer_record`` the adapter replaces.
SUPPORTED = ("0.14.",)


class RawRecord(NamedTuple):
    """A Kafka message as the sink reads it (see :class:`~cryptostream.sinkport.KafkaRecord`)."""

    partition: int
    offset: int
    value: bytes | None


def raw_values(value: bytes | None) -> bytes | None:
    """The value deserializer that asks for :class:`RawRecord` s (the value as fetched)."""
    return value


_new = tuple.__new__
_Base: Any = fetcher.PartitionRecords


class _PartitionRecords(_Base):  # type: ignore[misc]
    def _consumer_record(self, tp: Any, record: Any) -> Any:
        if self._value_deserializer is raw_values:
            return _new(RawRecord, (tp.partition, record.offset, record.value))
        return super()._consumer_record(tp, record)


def _install() -> bool:
    if not aiokafka.__version__.startswith(SUPPORTED):
        return False
    if not callable(getattr(_Base, "_consumer_record", None)):
        return False
    fetcher.PartitionRecords = _PartitionRecords
    return True


#: True when consumers asking for raw values get :class:`RawRecord` s.
INSTALLED = _install()
