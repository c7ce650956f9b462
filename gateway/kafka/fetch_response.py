"""Fetch responses framed by hand around the stored record batches.

kio's encoder writes every field into one buffer, which copies each partition's records, and
the frame then copies the whole body twice more (header + body, size + payload). A fetch
response is almost all records, so this encoder writes only the small parts: the frame is a
list of buffers in which each partition's records appear as the very object the broker's
reply carried. Written with a scatter send, the record bytes are not copied in the gateway.

The output is byte for byte what kio would write for the same entity (unit tests compare them
for every Fetch version served). The tagged fields kelp never sets (a partition's
diverging_epoch, current_leader and snapshot_id; the response's node_endpoints) are left to
kio: ``encode`` returns None when any of them is not its default, and the caller encodes the
response the ordinary way.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Sequence, Sized
from typing import Any

# Kafka's unsigned varint is protobuf's (7 bits a byte, least significant first).
from kelp.fetch_wire import uvarint

# Records are bytes, or anything with a length that the writer knows how to send (a range of a
# segment file, see gateway.segment_files): this codec only frames them.
Buffer = bytes | bytearray | memoryview | Sized

FIRST_FLEXIBLE = 12  # compact arrays, compact strings and tagged fields from here
FIRST_TOPIC_ID = 13  # topics by id instead of by name
# Records at most this long are copied into the surrounding bytes: a separate buffer per
# small partition would cost more in the scatter write than the copy does.
INLINE_RECORDS = 4096

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_TOP_V7 = struct.Struct(">ihi")  # throttle_time_ms, error_code, session_id
_PARTITION_V4 = struct.Struct(">ihqq")  # index, error_code, high_watermark, last_stable
_PARTITION_V5 = struct.Struct(">ihqqq")  # ... and log_start_offset
_ABORTED = struct.Struct(">qq")  # producer_id, first_offset
_NO_UUID = bytes(16)
_MAX_I16 = 2**15 - 1
_MAX_I32 = 2**31 - 1


def frame_size(buffers: Sequence[Buffer]) -> int:
    return sum(len(b) for b in buffers)


def encode(version: int, correlation_id: int, body: Any) -> list[Buffer] | None:
    """The whole frame (size, response header, body) of Fetch response ``body`` at
    ``version``, as buffers to write in order; None if ``body`` sets a tagged field this
    encoder leaves to kio."""
    flexible = version >= FIRST_FLEXIBLE
    if flexible and _has_tagged_values(body):
        return None
    out = _Frame()
    head = out.head
    head += _I32.pack(correlation_id)
    if flexible:
        head.append(0)  # response header v1: no tagged fields
    throttle_ms = round(body.throttle_time.total_seconds() * 1000)
    if version >= 7:
        head += _TOP_V7.pack(throttle_ms, int(body.error_code), body.session_id)
    else:
        head += _I32.pack(throttle_ms)
    _array_length(head, len(body.responses), flexible)
    partition_head = _PARTITION_V5 if version >= 5 else _PARTITION_V4
    for topic in body.responses:
        head = out.head
        if version >= FIRST_TOPIC_ID:
            head += _NO_UUID if topic.topic_id is None else topic.topic_id.bytes
        else:
            _string(head, topic.topic, flexible)
        _array_length(head, len(topic.partitions), flexible)
        for part in topic.partitions:
            head = out.head
            if version >= 5:
                head += partition_head.pack(part.partition_index, int(part.error_code),
                                            part.high_watermark, part.last_stable_offset,
                                            part.log_start_offset)
            else:
                head += partition_head.pack(part.partition_index, int(part.error_code),
                                            part.high_watermark, part.last_stable_offset)
            aborted = part.aborted_transactions
            if aborted is None:
                _null_length(head, flexible)
            else:
                _array_length(head, len(aborted), flexible)
                for txn in aborted:
                    head += _ABORTED.pack(txn.producer_id, txn.first_offset)
                    if flexible:
                        head.append(0)
            if version >= 11:
                head += _I32.pack(part.preferred_read_replica)
            out.records(part.records, flexible)
            if flexible:
                out.head.append(0)  # the partition's tagged fields: all default (checked)
        if flexible:
            out.head.append(0)  # the topic's tagged fields: it has none
    if flexible:
        out.head.append(0)  # the response's tagged fields: node_endpoints empty (checked)
    return out.finish()


class _Frame:
    """Buffers in the making: small fields go into ``head``; large records are kept as they
    are, each between two heads."""

    __slots__ = ("buffers", "head")

    def __init__(self) -> None:
        self.head = bytearray()
        self.buffers: list[Buffer] = [b"", self.head]  # [0]: the size, once known

    def records(self, records: Buffer | None, flexible: bool) -> None:
        if records is None:
            _null_length(self.head, flexible)
            return
        size = len(records)
        if flexible:
            self.head += uvarint(size + 1)
        else:
            if size > _MAX_I32:
                raise ValueError(f"records of {size} bytes do not fit a Fetch response")
            self.head += _I32.pack(size)
        if size <= INLINE_RECORDS and isinstance(records, bytes | bytearray | memoryview):
            self.head += records
            return
        self.buffers.append(records)
        self.head = bytearray()
        self.buffers.append(self.head)

    def finish(self) -> list[Buffer]:
        buffers = [b for b in self.buffers[1:] if b]
        size = frame_size(buffers)
        if size > _MAX_I32:
            raise ValueError(f"a Fetch response of {size} bytes does not fit a frame")
        return [_I32.pack(size), *buffers]


def _array_length(head: bytearray, length: int, flexible: bool) -> None:
    if flexible:
        head += uvarint(length + 1)
    else:
        head += _I32.pack(length)


def _null_length(head: bytearray, flexible: bool) -> None:
    if flexible:
        head.append(0)
    else:
        head += _I32.pack(-1)


def _string(head: bytearray, value: str, flexible: bool) -> None:
    encoded = value.encode()
    if flexible:
        head += uvarint(len(encoded) + 1)
    else:
        if len(encoded) > _MAX_I16:
            raise ValueError(f"topic name of {len(encoded)} bytes is too long")
        head += _I16.pack(len(encoded))
    head += encoded


@functools.cache
def _tagged_defaults(entity_type: type) -> tuple[tuple[str, Any], ...]:
    """(name, default) of each tagged field ``entity_type`` has."""
    return tuple((f.name, f.default) for f in dataclasses.fields(entity_type)
                 if f.metadata.get("tag") is not None)


def _has_tagged_values(body: Any) -> bool:
    """Whether any tagged field in ``body`` differs from its default (kio would write it)."""
    if any(getattr(body, name) != default for name, default in _tagged_defaults(type(body))):
        return True
    for topic in body.responses:
        for part in topic.partitions:
            if any(getattr(part, name) != default
                   for name, default in _tagged_defaults(type(part))):
                return True
    return False
