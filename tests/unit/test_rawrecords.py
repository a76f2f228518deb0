"""Raw records: partition, offset and value straight off aiokafka's record batches.

Built with aiokafka's own record-batch code (the bytes a broker sends), unpacked by
aiokafka's ``PartitionRecords`` as its fetcher does: the adapter changes what each
message becomes, nothing of which messages come or where the position moves.
"""

from __future__ import annotations

import struct

import aiokafka
import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from cryptostream import rawrecords
from cryptostream.rawrecords import RawRecord, raw_values

TP = TopicPartition("prices", 2)


def batch(base_offset: int, values: list[bytes | None]) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=None, key=b"k", value=value, headers=[("h", b"1")])
    raw = bytes(builder.build())
    # The base offset is the batch's first 8 bytes (outside the CRC), set by the broker.
    return struct.pack(">q", base_offset) + raw[8:]


def unpack(data: bytes, fetch_offset: int, deserializer: object = raw_values) -> list[object]:
    records = fetcher.PartitionRecords(
        TP, MemoryRecords(data), [], fetch_offset, None, deserializer, True, 0
    )
    out = list(records)
    unpack.next_fetch_offset = records.next_fetch_offset  # type: ignore[attr-defined]
    return out


def test_the_adapter_is_installed_on_the_aiokafka_the_service_pins() -> None:
    assert aiokafka.__version__.startswith(rawrecords.SUPPORTED)
    assert rawrecords.INSTALLED


def test_a_consumer_asking_for_raw_values_gets_partition_offset_and_value() -> None:
    data = batch(10, [b"a", None, b"c"]) + batch(13, [b"d"])
    got = unpack(data, 10)
    assert got == [(2, 10, b"a"), (2, 11, None), (2, 12, b"c"), (2, 13, b"d")]
    assert all(type(r) is RawRecord for r in got)
    first = got[0]
    assert isinstance(first, RawRecord)
    assert (first.partition, first.offset, first.value) == (2, 10, b"a")
    assert unpack.next_fetch_offset == 14  # type: ignore[attr-defined]


def test_any_other_consumer_still_gets_aiokafkas_records() -> None:
    got = unpack(batch(0, [b"a"]), 0, deserializer=None)
    assert isinstance(got[0], ConsumerRecord)
    record = got[0]
    assert (record.offset, record.value, record.key) == (0, b"a", b"k")
    assert record.headers == (("h", b"1"),)


def test_records_below_the_fetch_offset_are_skipped_and_the_position_follows() -> None:
    """A fetch from the middle of a batch: the broker sends the whole batch."""
    got = unpack(batch(100, [b"x", b"y", b"z"]), 102)
    assert got == [(2, 102, b"z")]
    assert unpack.next_fetch_offset == 103  # type: ignore[attr-defined]


def test_a_corrupt_batch_still_fails_its_crc_check() -> None:
    data = bytearray(batch(0, [b"price-one", b"price-two"]))
    at = data.find(b"price-two")
    data[at] ^= 0xFF
    with pytest.raises(CorruptRecordException):
        unpack(bytes(data), 0)
