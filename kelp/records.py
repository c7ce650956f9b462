"""The records inside a v2 batch: decompression and decoding (sans-IO).

Only code that must look inside batches uses this (ListOffsets by time, compaction, schema
validation); the produce and fetch paths never do. Codecs follow Kafka: gzip, snappy (raw or
the xerial framing the Java client writes), lz4 (frame format), zstd.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import cramjam
import crc32c

from kelp import batchcheck, recordbatch

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)


class UnsupportedCodec(recordbatch.CorruptBatch):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def decompress(codec: int, data: bytes | memoryview,
               limit: int = batchcheck.DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """The records body of a batch compressed with ``codec``; ``CorruptBatch`` if it is not,
    or if it would expand past ``limit`` bytes (a zip bomb is refused, never expanded)."""
    if codec == NONE:
        return bytes(data)
    try:
        return batchcheck.decompress_bounded(codec, data, limit)
    except batchcheck.BatchRejected as exc:
        raise (UnsupportedCodec if codec not in batchcheck.CODEC_NAMES
               else recordbatch.CorruptBatch)(exc.message) from None


def compress(codec: int, data: bytes) -> bytes:
    """The inverse, for code that rebuilds batches (compaction)."""
    if codec == NONE:
        return data
    if codec == GZIP:
        return bytes(cramjam.gzip.compress(data))
    if codec == SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == LZ4:
        return bytes(cramjam.lz4.compress(data))
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data))
    raise UnsupportedCodec(f"unknown compression codec {codec}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """A zigzag-encoded varint (Kafka's signed varint/varlong)."""
    raw = shift = 0
    while True:
        byte = data[position]
        position += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), position
        shift += 7
        if shift > 63:
            raise recordbatch.CorruptBatch("varint too long")


def _bytes(data: bytes, position: int) -> tuple[bytes | None, int]:
    length, position = _varint(data, position)
    if length < 0:
        return None, position
    end = position + length
    if end > len(data):
        raise recordbatch.CorruptBatch("record field runs past the batch")
    return data[position:end], end


def iter_records(batch: bytes | memoryview) -> Iterator[Record]:
    """Decode every record of one whole batch (header included)."""
    header = recordbatch.parse_header(batch)
    data = decompress(header.compression, memoryview(batch)[recordbatch.HEADER_SIZE :
                                                           header.size])
    log_append_time = bool(header.attributes & recordbatch.TIMESTAMP_TYPE_BIT)
    position = 0
    try:
        for _ in range(header.record_count):
            _length, position = _varint(data, position)
            position += 1  # attributes: unused
            timestamp_delta, position = _varint(data, position)
            offset_delta, position = _varint(data, position)
            key, position = _bytes(data, position)
            value, position = _bytes(data, position)
            count, position = _varint(data, position)
            headers = []
            for _ in range(count):
                name, position = _bytes(data, position)
                header_value, position = _bytes(data, position)
                headers.append(((name or b"").decode("utf-8", "replace"), header_value))
            timestamp = (header.max_timestamp if log_append_time
                         else header.base_timestamp + timestamp_delta)
            yield Record(header.base_offset + offset_delta, timestamp, key, value,
                         tuple(headers))
    except IndexError:
        raise recordbatch.CorruptBatch("records run past the end of the batch") from None


def records_or_skip(batch: bytes | memoryview, log: logging.Logger, *, topic: str,
                    partition: int) -> list[Record] | None:
    """Every record of ``batch``, or None with one log line if it cannot be read.

    For the readers that must go on past a record they cannot read (the registry's tailer,
    the offsets replay, compaction, timestamp search): the line names topic, partition, offset
    and the reason, never a raw traceback.
    """
    try:
        return list(iter_records(batch))
    except recordbatch.CorruptBatch as exc:
        offset = struct.unpack_from(">q", batch, 0)[0] if len(batch) >= 8 else -1
        log.warning("skipping unreadable record batch", extra={
            "topic": topic, "partition": partition, "offset": offset, "reason": str(exc)})
        return None


def _zigzag(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def _field(value: bytes | None) -> bytes:
    return _zigzag(-1) if value is None else _zigzag(len(value)) + value


def encode_record(record: Record, base_offset: int, base_timestamp: int) -> bytes:
    body = b"".join((
        b"\x00",  # attributes
        _zigzag(record.timestamp - base_timestamp),
        _zigzag(record.offset - base_offset),
        _field(record.key),
        _field(record.value),
        _zigzag(len(record.headers)),
        *(_field(name.encode()) + _field(value) for name, value in record.headers),
    ))
    return _zigzag(len(body)) + body


def rebuild_batch(original: bytes | memoryview, kept: list[Record]) -> bytes:
    """The batch ``original`` holding only ``kept`` (a subset of its records).

    Base offset, base and max timestamps, last offset delta, producer fields and attributes
    stay as they were, so offsets keep their meaning (gaps are allowed) and producer state
    survives; the records are re-encoded, recompressed with the same codec and the CRC is new.
    """
    header = recordbatch.parse_header(original)
    log_append_time = bool(header.attributes & recordbatch.TIMESTAMP_TYPE_BIT)
    body = b"".join(
        encode_record(Record(r.offset, header.base_timestamp if log_append_time else r.timestamp,
                             r.key, r.value, r.headers),
                      header.base_offset, header.base_timestamp)
        for r in kept)
    body = compress(header.compression, body)
    batch = bytearray(bytes(original[: recordbatch.HEADER_SIZE]) + body)
    struct.pack_into(">i", batch, 8, len(batch) - recordbatch.LENGTH_PREFIX)
    struct.pack_into(">i", batch, 57, len(kept))
    struct.pack_into(">I", batch, 17, crc32c.crc32c(memoryview(batch)[21:]))
    return bytes(batch)


def build_batch(pairs: list[tuple[bytes | None, bytes | None]], timestamp: int) -> bytes:
    """A fresh uncompressed v2 batch (base offset 0, no producer) holding ``pairs``."""
    body = b"".join(encode_record(Record(index, timestamp, key, value, ()), 0, timestamp)
                    for index, (key, value) in enumerate(pairs))
    header = struct.pack(">qiiBIhiqqqhii", 0, 0, 0, 2, 0, 0, len(pairs) - 1, timestamp,
                         timestamp, -1, -1, -1, len(pairs))
    batch = bytearray(header + body)
    struct.pack_into(">i", batch, 8, len(batch) - recordbatch.LENGTH_PREFIX)
    struct.pack_into(">I", batch, 17, crc32c.crc32c(memoryview(batch)[21:]))
    return bytes(batch)
