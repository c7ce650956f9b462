"""Broker.Fetch replies on the wire without betterproto copying their records.

betterproto2 serialises a bytes field by concatenation at every level of nesting (the
records into a FetchedPartition, that into the FetchReply, each through a fresh buffer): a
10 MB fetch cost ~60 ms of copies in the broker, most of the fetch's time. Its parser copies
the records again on the gateway's side.

``FetchReplyWire`` is a ``FetchReply`` that writes itself with the records copied once (each
partition's small fields are still encoded by betterproto, the records field is framed here),
and reads itself with one copy of the records (the small fields are again parsed by
betterproto). The bytes are plain protobuf: any peer that reads ``FetchReply`` reads them, and
this reader reads what betterproto writes. Protobuf allows fields in any order and takes the
last occurrence of a repeated scalar, so the records field goes last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from kelp.rpc.broker import v1 as pb

Buffer = bytes | bytearray | memoryview

PARTITIONS_FIELD = 2  # FetchReply.partitions
RECORDS_FIELD = 6  # FetchedPartition.records
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


class MalformedReply(ValueError):
    """The bytes are not a FetchReply (a length or tag runs past its message)."""


def uvarint(value: int) -> bytes:
    """An unsigned varint (7 bits a byte, least significant first): protobuf's and Kafka's."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_PARTITION_KEY = uvarint(PARTITIONS_FIELD << 3 | _LEN)
_RECORDS_KEY = uvarint(RECORDS_FIELD << 3 | _LEN)


def encode_reply(reply: pb.FetchReply) -> list[Buffer]:
    """``reply``'s wire form as buffers: the records as they are, between small pieces."""
    pieces: list[Buffer] = [bytes(pb.FetchReply(request_id=reply.request_id))]
    for part in reply.partitions:
        records = part.records
        small = bytes(dataclasses.replace(part, records=b""))
        if records:
            tail = _RECORDS_KEY + uvarint(len(records))
            pieces += [_PARTITION_KEY, uvarint(len(small) + len(tail) + len(records)), small,
                       tail, records]
        else:
            pieces += [_PARTITION_KEY, uvarint(len(small)), small]
    return pieces


def decode_reply(data: bytes | bytearray | memoryview) -> pb.FetchReply:
    """A FetchReply from its wire form; raises ``MalformedReply``."""
    view = memoryview(data).cast("B")
    rest: list[memoryview] = []
    partitions: list[pb.FetchedPartition] = []
    for number, wire_type, start, body, end in _fields(view, 0, len(view)):
        if number == PARTITIONS_FIELD and wire_type == _LEN:
            partitions.append(_decode_partition(view, body, end))
        else:
            rest.append(view[start:end])
    reply = pb.FetchReply.FromString(b"".join(rest))
    reply.partitions = partitions
    return reply


def _decode_partition(view: memoryview, begin: int, end: int) -> pb.FetchedPartition:
    rest: list[memoryview] = []
    records: memoryview | None = None
    for number, wire_type, start, body, field_end in _fields(view, begin, end):
        if number == RECORDS_FIELD and wire_type == _LEN:
            records = view[body:field_end]  # a later occurrence replaces an earlier one
        else:
            rest.append(view[start:field_end])
    part = pb.FetchedPartition.FromString(b"".join(rest))
    part.records = b"" if records is None else bytes(records)
    return part


def _fields(view: memoryview, position: int,
            end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, field start, value start, field end) of each field in
    ``view[position:end]``, every length checked against ``end``."""
    while position < end:
        start = position
        key, position = _varint(view, position, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise MalformedReply("field number 0")
        body = position
        if wire_type == _VARINT:
            _value, position = _varint(view, position, end)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        elif wire_type == _LEN:
            size, body = _varint(view, position, end)
            position = body + size
        else:
            raise MalformedReply(f"wire type {wire_type} of field {number}")
        if position > end:
            raise MalformedReply(f"field {number} runs past its message")
        yield number, wire_type, start, body, position


def _varint(view: memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for index in range(position, min(end, position + _MAX_VARINT_BYTES)):
        byte = view[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise MalformedReply("varint runs past its message or past 10 bytes")


class FetchReplyWire(pb.FetchReply):
    """A FetchReply that the broker builds and the gateway's stream reads (its reply type):
    written and read by ``encode_reply`` and ``decode_reply``."""

    def __bytes__(self) -> bytes:
        return b"".join(encode_reply(self))

    def SerializeToString(self) -> bytes:  # the name grpclib calls
        return bytes(self)

    @classmethod
    def FromString(cls, data: bytes) -> Any:  # the name grpclib calls
        return decode_reply(data)


# betterproto2 resolves a message's field types in the module of its class: the generated one.
FetchReplyWire.__module__ = pb.FetchReply.__module__
