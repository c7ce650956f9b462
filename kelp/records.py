"""The records inside a v2 batch: decompression and decoding (sans-IO).

Only code that must look inside batches uses this (ListOffsets by time, compaction, schema
validation); the produce and fetch paths never do. Codecs follow Kafka: gzip, snappy (raw or
the xerial framing the Java client writes), lz4 (frame format), zstd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import cramjam

from kelp import decompress as codecs
from kelp import recordbatch
from kelp.decompress import GZIP, LZ4, NONE, SNAPPY, ZSTD

# Kafka's fetch.max.bytes default: what a fetch may return when it names no limit. The gateway
# and the broker share it.
DEFAULT_FETCH_MAX_BYTES = 50 * 1024 * 1024

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
               limit: int = codecs.DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """The records body of a batch compressed with ``codec``; ``CorruptBatch`` if it is not,
    or if it would expand past ``limit`` bytes (a zip bomb is refused, never expanded)."""
    if codec == NONE:
        return bytes(data)
    try:
        return codecs.decompress_bounded(codec, data, limit)
    except codecs.Undecompressible as exc:
        raise (UnsupportedCodec if codec not in codecs.CODEC_NAMES
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
        offset = recordbatch.peek(batch)[0] if len(batch) >= recordbatch.LENGTH_PREFIX else -1
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
    recordbatch.set_size(batch, 0, len(batch), len(kept))
    recordbatch.sign(batch)
    return bytes(batch)


def build_batch(pairs: list[tuple[bytes | None, bytes | None]], timestamp: int) -> bytes:
    """A fresh uncompressed v2 batch (base offset 0, no producer) holding ``pairs``."""
    body = b"".join(encode_record(Record(index, timestamp, key, value, ()), 0, timestamp)
                    for index, (key, value) in enumerate(pairs))
    header = recordbatch.BatchHeader(
        base_offset=0, batch_length=0, partition_leader_epoch=0, magic=2, crc=0, attributes=0,
        last_offset_delta=len(pairs) - 1, base_timestamp=timestamp, max_timestamp=timestamp,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, record_count=len(pairs))
    batch = bytearray(recordbatch.pack_header(header) + body)
    recordbatch.set_size(batch, 0, len(batch), len(pairs))
    recordbatch.sign(batch)
    return bytes(batch)
