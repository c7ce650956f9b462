"""Shared by the kelp.batchcheck tests: batch builders, check shorthands and strategies.

Valid batches come from encoders that are not ours (aiokafka's record builder, kio's batch
writer) besides kelp.records; ``finish`` rewrites a batch's header fields and CRC.
"""

from __future__ import annotations

import struct

import crc32c
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from kelp import batchcheck, decompress, recordbatch, records

INVALID = ErrorCode.invalid_record
CORRUPT = ErrorCode.corrupt_message
CODECS = [decompress.NONE, decompress.GZIP, decompress.SNAPPY, decompress.LZ4, decompress.ZSTD]
COMPRESSED = CODECS[1:]
MiB = 1024 * 1024
WALKERS = [pytest.param(False, id="python"),
           pytest.param(True, id="native", marks=pytest.mark.skipif(
               not batchcheck.NATIVE, reason="kelp._recordwalk is not built"))]


# --- building batches --------------------------------------------------------------------------


def finish(batch: bytearray | bytes, *, count: int | None = None,
           last_offset_delta: int | None = None, attributes: int | None = None,
           producer: tuple[int, int] | None = None) -> bytes:
    """Patch header fields, then set batchLength and the CRC so only our change is wrong."""
    batch = bytearray(batch)
    if count is not None:
        struct.pack_into(">i", batch, 57, count)
    if last_offset_delta is not None:
        struct.pack_into(">i", batch, 23, last_offset_delta)
    if attributes is not None:
        struct.pack_into(">h", batch, 21, attributes)
    if producer is not None:
        struct.pack_into(">q", batch, 43, producer[0])
        struct.pack_into(">i", batch, 53, producer[1])
    struct.pack_into(">i", batch, 8, len(batch) - recordbatch.LENGTH_PREFIX)
    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))
    return bytes(batch)


def with_body(batch: bytes, body: bytes, codec: int | None = None, **fields: int) -> bytes:
    """``batch``'s header with another records body (and codec bits)."""
    header = bytearray(batch[: recordbatch.HEADER_SIZE])
    attributes = struct.unpack_from(">h", header, 21)[0]
    if codec is not None:
        attributes = attributes & ~7 | codec
    return finish(header + body, attributes=attributes, **fields)


def aiokafka_batch(pairs, *, codec: int = 0, headers=(), producer=(-1, -1, -1),
                   transactional: bool = False) -> bytes:
    """A batch from aiokafka's DefaultRecordBatchBuilder, the encoder a real client uses."""
    builder = DefaultRecordBatchBuilder(2, codec, int(transactional), *producer, 1 << 30)
    for index, (key, value) in enumerate(pairs):
        assert builder.append(index, 1_700_000_000_000 + index, key, value,
                              list(headers)) is not None
    return bytes(builder.build())


def check(batch: bytes, **options) -> None:
    batchcheck.check_batch(batch, recordbatch.parse_header(batch), **options)


def rejected(batch: bytes, **options) -> batchcheck.BatchRejected:
    with pytest.raises(batchcheck.BatchRejected) as info:
        check(batch, **options)
    return info.value


def encode_record(index: int, key: bytes | None, value: bytes | None,
                  headers: list[tuple[bytes | None, bytes | None]] = (),
                  offset_delta: int | None = None) -> bytes:
    """One record by hand, so tests can write what encoders refuse to (null header keys)."""
    def field(data: bytes | None) -> bytes:
        return zigzag(-1) if data is None else zigzag(len(data)) + data
    body = (b"\x00" + zigzag(0) + zigzag(index if offset_delta is None else offset_delta)
            + field(key) + field(value) + zigzag(len(headers))
            + b"".join(field(k) + field(v) for k, v in headers))
    return zigzag(len(body)) + body


def zigzag(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append(raw & 0x7F | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


BASE = records.build_batch([(b"k", b"v")], 1_700_000_000_000)

keys = st.binary(max_size=20) | st.none()
values = st.binary(max_size=200) | st.none()
header_lists = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=20) | st.none()),
                        max_size=3)
pair_lists = st.lists(st.tuples(keys, values), min_size=1, max_size=40)
