"""Kafka v2 record batches: the header, validation, and the two fields a broker rewrites.

Sans-IO: bytes in, values out. The log stores batches exactly as produced; only ``baseOffset``
(bytes 0-7) and ``partitionLeaderEpoch`` (bytes 12-15) change, and both lie outside the CRC-32C,
which covers bytes 21..end. Layout (big-endian)::

    0  baseOffset            int64      21 attributes          int16
    8  batchLength           int32      23 lastOffsetDelta     int32
    12 partitionLeaderEpoch  int32      27 baseTimestamp       int64
    16 magic                 int8       35 maxTimestamp        int64
    17 crc                   uint32     43 producerId          int64
                                        51 producerEpoch       int16
                                        53 baseSequence        int32
                                        57 recordCount         int32  (records follow at 61)
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields

import crc32c

# Where each header field starts: the only place kelp spells the layout out.
BASE_OFFSET = 0
BATCH_LENGTH = 8
PARTITION_LEADER_EPOCH = 12
MAGIC = 16
CRC = 17
ATTRIBUTES = 21  # the CRC-32C covers this byte to the end of the batch
LAST_OFFSET_DELTA = 23
BASE_TIMESTAMP = 27
MAX_TIMESTAMP = 35
PRODUCER_ID = 43
PRODUCER_EPOCH = 51
BASE_SEQUENCE = 53
RECORD_COUNT = 57
HEADER_SIZE = 61  # records follow
# The bytes a reader needs to know a batch's size: baseOffset + batchLength.
LENGTH_PREFIX = BATCH_LENGTH + 4
# The bytes a log walks by (``peek``): up to and including lastOffsetDelta.
PEEK_SIZE = LAST_OFFSET_DELTA + 4
_HEADER = struct.Struct(">qiiBIhiqqqhii")
_INT64 = struct.Struct(">q")
_INT32 = struct.Struct(">i")
_INT16 = struct.Struct(">h")
_UINT32 = struct.Struct(">I")
_PREFIX = struct.Struct(">qi")

TIMESTAMP_TYPE_BIT = 0x08  # attributes bit 3: 1 = LogAppendTime
COMPRESSION_MASK = 0x07
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20


class CorruptBatch(ValueError):
    """The bytes are not a valid v2 record batch (Kafka's CORRUPT_MESSAGE)."""


class UnsupportedMagic(CorruptBatch):
    """A magic 0/1 message set: valid once, but kelp stores v2 batches only
    (Kafka's UNSUPPORTED_FOR_MESSAGE_FORMAT)."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    batch_length: int  # bytes after the length field: the batch is batch_length + 12 bytes
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        return self.batch_length + LENGTH_PREFIX

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK


def parse_header(data: bytes | memoryview, position: int = 0) -> BatchHeader:
    """Parse the 61-byte header at ``position``; raises ``CorruptBatch`` if it is not v2."""
    available = len(data) - position
    # Magic sits at byte 16 in every message format, so old formats are named as such even
    # when they are shorter than a v2 header.
    if available > MAGIC and data[position + MAGIC] in (0, 1):
        raise UnsupportedMagic(f"magic {data[position + MAGIC]} message sets are not supported; "
                               "produce v2 record batches (Kafka >= 0.11 clients)")
    if available < HEADER_SIZE:
        raise CorruptBatch(f"batch header truncated: {available} < {HEADER_SIZE} bytes")
    header = BatchHeader(*_HEADER.unpack_from(data, position))
    if header.magic != 2:
        raise CorruptBatch(f"unsupported magic {header.magic} (only v2 record batches)")
    if header.batch_length < HEADER_SIZE - LENGTH_PREFIX:
        raise CorruptBatch(f"batch length {header.batch_length} shorter than a header")
    if header.last_offset_delta < 0 or header.record_count < 0:
        raise CorruptBatch("negative lastOffsetDelta or record count")
    return header


def crc_matches(data: bytes | memoryview, position: int, header: BatchHeader) -> bool:
    """Does the stored CRC-32C match attributes..end of the batch at ``position``?"""
    view = memoryview(data)[position + ATTRIBUTES : position + header.size]
    return crc32c.crc32c(view) == header.crc


def peek(data: bytes | bytearray | memoryview, position: int = 0) -> tuple[int, int]:
    """(base offset, size in bytes) of the batch at ``position``, from its first
    ``LENGTH_PREFIX`` bytes, unchecked: for walking batches already validated."""
    base_offset, batch_length = _PREFIX.unpack_from(data, position)
    return base_offset, batch_length + LENGTH_PREFIX


def peek_last_offset(data: bytes | bytearray | memoryview, position: int = 0) -> int:
    """The last offset of the batch at ``position`` (needs ``PEEK_SIZE`` bytes), unchecked."""
    return (_INT64.unpack_from(data, position + BASE_OFFSET)[0]
            + _INT32.unpack_from(data, position + LAST_OFFSET_DELTA)[0])


def pack_header(header: BatchHeader) -> bytes:
    """The 61 header bytes of ``header`` (for code that builds batches)."""
    return _HEADER.pack(*(getattr(header, field.name) for field in fields(BatchHeader)))


def sign(buffer: bytearray, position: int = 0, size: int | None = None) -> None:
    """Store the CRC-32C of the batch at ``position`` (``size`` bytes, default: to the end)."""
    end = len(buffer) if size is None else position + size
    crc = crc32c.crc32c(memoryview(buffer)[position + ATTRIBUTES : end])
    _UINT32.pack_into(buffer, position + CRC, crc)


def set_size(buffer: bytearray, position: int, size: int, record_count: int) -> None:
    """Store a rebuilt batch's size and record count (the CRC must be signed afterwards)."""
    _INT32.pack_into(buffer, position + BATCH_LENGTH, size - LENGTH_PREFIX)
    _INT32.pack_into(buffer, position + RECORD_COUNT, record_count)


def set_producer(buffer: bytearray, producer_id: int, producer_epoch: int,
                 attributes: int) -> None:
    """Make the one batch in ``buffer`` a producer's (id, epoch, attribute bits such as
    transactional and control), re-signing it: how the broker builds its control batches."""
    _INT16.pack_into(buffer, ATTRIBUTES, attributes)
    _INT64.pack_into(buffer, PRODUCER_ID, producer_id)
    _INT16.pack_into(buffer, PRODUCER_EPOCH, producer_epoch)
    sign(buffer)


def iter_batches(
    data: bytes | memoryview, *, verify_crc: bool = True
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` for each whole batch in ``data``.

    Raises ``CorruptBatch`` on a bad header, a batch running past the end, or a CRC mismatch.
    """
    position = 0
    end = len(data)
    while position < end:
        header = parse_header(data, position)
        if position + header.size > end:
            raise CorruptBatch(
                f"batch at byte {position} needs {header.size} bytes, {end - position} present"
            )
        if verify_crc and not crc_matches(data, position, header):
            raise CorruptBatch(f"CRC-32C mismatch in batch at byte {position}")
        yield position, header
        position += header.size


def stamp_log_append_time(buffer: bytearray, position: int, header: BatchHeader,
                          now_ms: int) -> None:
    """Make a batch LogAppendTime: set the attribute bit and maxTimestamp, re-sign the CRC.

    Both fields lie inside the CRC, so this is one of the two rewrites that need a new
    checksum — what Kafka does for topics with ``message.timestamp.type=LogAppendTime``.
    """
    set_max_timestamp(buffer, position, header, now_ms,
                      attributes=header.attributes | TIMESTAMP_TYPE_BIT)


def set_max_timestamp(buffer: bytearray, position: int, header: BatchHeader, max_timestamp: int,
                      *, attributes: int | None = None) -> None:
    """Store ``max_timestamp`` (and ``attributes``) in the batch at ``position``, re-signing
    the CRC: Kafka's LogValidator sets maxTimestamp to the largest record timestamp, so a
    producer's wrong value is corrected rather than stored."""
    if attributes is not None:
        _INT16.pack_into(buffer, position + ATTRIBUTES, attributes)
    _INT64.pack_into(buffer, position + MAX_TIMESTAMP, max_timestamp)
    sign(buffer, position, header.size)


def rewrite_offset_and_epoch(
    buffer: bytearray, position: int, base_offset: int, leader_epoch: int = 0
) -> None:
    """Assign the broker's base offset and leader epoch in place (both outside the CRC)."""
    _INT64.pack_into(buffer, position + BASE_OFFSET, base_offset)
    _INT32.pack_into(buffer, position + PARTITION_LEADER_EPOCH, leader_epoch)
