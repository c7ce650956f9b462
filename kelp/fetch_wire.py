"""Broker.Fetch replies on the wire without betterproto copying their records.

betterproto2 serialises a bytes field by concatenation at every level of nesting (the
records into a FetchedPartition, that into the FetchReply, each through a fresh buffer): a
10 MB fetch cost ~60 ms of copies in the broker, most of the fetch's time. Its parser copies
the records again on the gateway's side.

``FetchReplyWire`` is a ``FetchReply`` that writes itself with the records copied once (each
partition's small fields are encoded by :mod:`kelp.stream_wire`, the records field is framed
here), and reads itself with one copy of the records (:mod:`kelp.stream_wire` parses it
all, faster than betterproto too). The bytes are plain protobuf: any peer that reads
``FetchReply`` reads them, and this reader reads what betterproto writes. Protobuf allows
fields in any order and takes the last occurrence of a repeated scalar, so the records field
goes last.
"""

from __future__ import annotations

from typing import Any

from kelp.rpc.broker import v1 as pb
from kelp.stream_wire import (
    FETCHED_PARTITION,
    MESSAGE,
    UINT,
    MalformedMessage,
    Schema,
    uvarint,
)

Buffer = bytes | bytearray | memoryview

PARTITIONS_FIELD = 2  # FetchReply.partitions
RECORDS_FIELD = 6  # FetchedPartition.records
_LEN = 2

MalformedReply = MalformedMessage  # the bytes are not a FetchReply

FETCH_REPLY = Schema(pb.FetchReply, [(1, "request_id", UINT, None, False),
                                     (PARTITIONS_FIELD, "partitions", MESSAGE,
                                      FETCHED_PARTITION, True)])
# A fetched partition's small fields: everything but its records, which are framed below.
_SMALL_FIELDS = Schema(pb.FetchedPartition, [
    (number, name, kind, nested, repeated)
    for number, (name, kind, nested, repeated) in FETCHED_PARTITION.by_number.items()
    if number != RECORDS_FIELD])
_REQUEST_ID_KEY = uvarint(1 << 3)
_PARTITION_KEY = uvarint(PARTITIONS_FIELD << 3 | _LEN)
_RECORDS_KEY = uvarint(RECORDS_FIELD << 3 | _LEN)


def encode_reply(reply: pb.FetchReply) -> list[Buffer]:
    """``reply``'s wire form as buffers: the records as they are, between small pieces."""
    pieces: list[Buffer] = [_REQUEST_ID_KEY, uvarint(reply.request_id)] if reply.request_id \
        else []
    for part in reply.partitions:
        records = part.records
        small = _SMALL_FIELDS.encode(part)
        if records:
            tail = _RECORDS_KEY + uvarint(len(records))
            pieces += [_PARTITION_KEY, uvarint(len(small) + len(tail) + len(records)), small,
                       tail, records]
        else:
            pieces += [_PARTITION_KEY, uvarint(len(small)), small]
    return pieces


def decode_reply(data: bytes | bytearray | memoryview) -> pb.FetchReply:
    """A FetchReply from its wire form (each partition's records copied once); raises
    ``MalformedReply``."""
    if isinstance(data, memoryview):
        data = data.cast("B")
    reply: pb.FetchReply = FETCH_REPLY.decode(data)
    return reply


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
