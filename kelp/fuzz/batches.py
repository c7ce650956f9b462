"""Record batches: build a valid one, and break one in the ways a broker must notice.

Kafka v2 batch header (big-endian; the CRC-32C covers attributes..end)::

    0 baseOffset int64    12 partitionLeaderEpoch int32   21 attributes int16
    8 batchLength int32   16 magic int8   17 crc uint32    23 lastOffsetDelta int32
    27 baseTimestamp int64  35 maxTimestamp int64  43 producerId int64
    51 producerEpoch int16  53 baseSequence int32  57 recordCount int32   61 records...

A mutation that breaks a field inside the CRC is caught by the CRC check alone, which teaches
nothing about the checks behind it; so most mutations re-sign the batch (``crc32c`` after the
change) and fix ``batchLength``, making the broker's *record-level* validation the thing
under test. Some deliberately leave either stale.
"""

from __future__ import annotations

import random
import struct

import cramjam
import crc32c

from kelp.fuzz.layout import uvarint

HEADER = 61
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_FIELDS = {  # name: (offset, struct format)
    "batch_length": (8, ">i"), "magic": (16, ">b"), "attributes": (21, ">h"),
    "last_offset_delta": (23, ">i"), "base_timestamp": (27, ">q"),
    "max_timestamp": (35, ">q"), "producer_id": (43, ">q"), "producer_epoch": (51, ">h"),
    "base_sequence": (53, ">i"), "record_count": (57, ">i"),
}
_EDGES = {">b": [0, 1, 3, -1, 127], ">h": [0, -1, 0x7FFF, -0x8000, 1],
          ">i": [0, -1, 1, 0x7FFFFFFF, -0x80000000, 0x10000],
          ">q": [0, -1, 2**63 - 1, -(2**63), 2**40]}


def zigzag(value: int) -> bytes:
    """A record-level (zigzag, signed) varint: an unsigned one of the zigzag mapping."""
    return uvarint((value << 1) ^ (value >> 63))


def read_zigzag(data: bytes, position: int) -> tuple[int, int]:
    """(value, width) of a zigzag varint; raises IndexError/ValueError on garbage."""
    raw = shift = width = 0
    while True:
        byte = data[position + width]
        width += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), width
        shift += 7
        if width > 10:
            raise ValueError("varint too long")


def encode_record(offset_delta: int, key: bytes | None, value: bytes | None,
                  headers: list[tuple[bytes, bytes | None]]) -> bytes:
    def blob(data: bytes | None) -> bytes:
        return zigzag(-1) if data is None else zigzag(len(data)) + data

    body = b"\x00" + zigzag(offset_delta) + zigzag(offset_delta) + blob(key) + blob(value)
    body += zigzag(len(headers)) + b"".join(blob(k) + blob(v) for k, v in headers)
    return zigzag(len(body)) + body


def build_batch(records: list[tuple[bytes | None, bytes | None]], codec: str = "none",
                producer_id: int = -1, base_sequence: int = -1,
                timestamp_ms: int = 1_700_000_000_000) -> bytes:
    """A valid v2 batch (the synthesizer's Produce seeds)."""
    body = b"".join(encode_record(i, k, v, [(b"h", b"v")]) for i, (k, v) in enumerate(records))
    body = compress(CODECS[codec], body)
    tail = struct.pack(">hiqqqhii", CODECS[codec], len(records) - 1, timestamp_ms,
                       timestamp_ms + len(records) - 1, producer_id, 0 if producer_id >= 0
                       else -1, base_sequence, len(records)) + body
    head = struct.pack(">qiib", 0, 9 + len(tail), 0, 2)
    return head + struct.pack(">I", crc32c.crc32c(tail)) + tail


def compress(codec: int, data: bytes) -> bytes:
    if codec == 1:
        return bytes(cramjam.gzip.compress(data))
    if codec == 2:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.compress(data))
    if codec == 4:
        return bytes(cramjam.zstd.compress(data))
    return data


def decompress(codec: int, data: bytes) -> bytes:
    if codec == 1:
        return bytes(cramjam.gzip.decompress(data))
    if codec == 2:
        if data.startswith(b"\x82SNAPPY\x00"):  # the xerial framing of the Java client
            out, position = [], 16
            while position + 4 <= len(data):
                (size,) = struct.unpack_from(">i", data, position)
                chunk = data[position + 4 : position + 4 + size]
                out.append(bytes(cramjam.snappy.decompress_raw(chunk)))
                position += 4 + size
            return b"".join(out)
        return bytes(cramjam.snappy.decompress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.decompress(data))
    if codec == 4:
        return bytes(cramjam.zstd.decompress(data))
    return data


def split_batches(blob: bytes) -> list[bytes]:
    """The whole batches in a record set (a trailing partial one is dropped)."""
    out, position = [], 0
    while position + 12 <= len(blob):
        (length,) = struct.unpack_from(">i", blob, position + 8)
        if length < HEADER - 12 or position + 12 + length > len(blob):
            break
        out.append(blob[position : position + 12 + length])
        position += 12 + length
    return out


def record_varints(records: bytes, count: int) -> list[tuple[int, int, int]]:
    """(offset, width, value) of every varint in ``count`` records: record length,
    timestamp/offset deltas, key/value lengths, header count, header key/value lengths."""
    found: list[tuple[int, int, int]] = []
    position = 0

    def take(*, blob: bool = False) -> int:
        nonlocal position
        value, width = read_zigzag(records, position)
        found.append((position, width, value))
        position += width + (max(value, 0) if blob else 0)
        return value

    try:
        for _ in range(count):
            take()  # length
            position += 1  # attributes
            take()  # timestamp delta
            take()  # offset delta
            take(blob=True)  # key
            take(blob=True)  # value
            for _ in range(max(take(), 0)):  # headers
                take(blob=True)
                take(blob=True)
    except (IndexError, ValueError):
        pass  # a seed's records are valid; a stacked mutation may have broken them
    return found


def mutate_batch(batch: bytes, rng: random.Random) -> bytes:
    """One mutation of one batch, then (usually) length and CRC fix-ups."""
    data = bytearray(batch)
    codec = data[22] & 0x07 if len(data) > 22 else 0
    choice = rng.random()
    fixed_length = True
    if choice < 0.40:
        name = rng.choice(list(_FIELDS))
        offset, fmt = _FIELDS[name]
        value = _field_value(data, offset, fmt, name, rng)
        struct.pack_into(fmt, data, offset, _wrap(value, fmt))
        fixed_length = name != "batch_length"
    elif choice < 0.70:
        data = bytearray(_mutate_records(bytes(data), codec, rng))
    elif choice < 0.80:
        if len(data) > HEADER:  # corrupt the (possibly compressed) record bytes themselves
            position = rng.randrange(HEADER, len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif choice < 0.90:
        data = data[: rng.randrange(HEADER - 12, len(data) + 1)]  # cut short
    else:
        data += bytes(rng.choice([1, 12, 61]))  # trailing garbage after the batch
        fixed_length = False
    if fixed_length and rng.random() < 0.85 and len(data) >= 12:
        struct.pack_into(">i", data, 8, len(data) - 12)
    if rng.random() < 0.75 and len(data) >= HEADER:
        struct.pack_into(">I", data, 17, crc32c.crc32c(bytes(data[21:])))
    return bytes(data)


def _field_value(data: bytearray, offset: int, fmt: str, name: str, rng: random.Random) -> int:
    if len(data) < offset + struct.calcsize(fmt):
        return 0
    (current,) = struct.unpack_from(fmt, data, offset)
    if name == "attributes":
        # Codec bits 0-2 (5, 6, 7 are unknown), timestamp type bit 3, transactional bit 4,
        # control bit 5, and the unused bits above.
        return rng.choice([(current & ~7) | rng.choice([1, 2, 3, 4, 5, 6, 7]), current ^ 0x08,
                           current | 0x10, current | 0x20, current | 0x40, -1])
    if name == "record_count" or name == "last_offset_delta":
        return rng.choice([current + 1, current - 1, current * 1000, *_EDGES[fmt]])
    return rng.choice([current + rng.choice([-1, 1, 61]), *_EDGES[fmt],
                       rng.getrandbits(struct.calcsize(fmt) * 8)])


def _wrap(value: int, fmt: str) -> int:
    bits = struct.calcsize(fmt) * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _mutate_records(batch: bytes, codec: int, rng: random.Random) -> bytes:
    """Change the records (decompressed and recompressed with the batch's codec)."""
    header, body = batch[:HEADER], batch[HEADER:]
    try:
        records = decompress(codec, body) if codec else body
    except Exception:
        return batch
    count = struct.unpack_from(">i", batch, 57)[0] if len(batch) >= HEADER else 0
    sites = record_varints(records, min(max(count, 0), 10_000))
    if sites and rng.random() < 0.7:
        offset, width, value = rng.choice(sites)
        new = rng.choice([zigzag(rng.choice([-1, -2, 0, 1, value + 1, value - 1, 2**31 - 1,
                                             -(2**31), 2**40])),
                          b"\xff" * rng.randrange(5, 11) + b"\x01",  # overlong
                          zigzag(value)[:-1] + b"\x80\x80\x00"])
        records = records[:offset] + new + records[offset + width :]
    elif records:
        cut = rng.randrange(len(records) + 1)
        records = rng.choice([records[:cut], records + records[cut:], records[:cut] + b"\x00"])
    try:
        body = compress(codec, records) if codec in (1, 2, 3, 4) else records
    except Exception:
        return batch
    return header + body
