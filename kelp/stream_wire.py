"""The broker's Append and Fetch stream messages (and a follower's ReplicaFetch) encoded and
decoded by hand.

Every produce request crosses the gateway's Append stream to the broker and back, every
fetch its Fetch stream, and every replicated append a follower's ReplicaFetch, so these few
messages are encoded and decoded thousands of times a second. betterproto2 does it in pure
Python through generic, per-field machinery: 15 us for an AppendRequest each way, ~90-120 us
for a FetchRequest or a six-partition FetchReply, a good part of the gateway's and the
broker's CPU per request at moderate load.

Here a message is a table of its fields (number, name, kind) and one loop per direction that
does only what these messages need: varints, strings, bytes and nested messages, proto3
defaults left out, fields in number order — the bytes betterproto writes, which the tests
check, so either end may use either codec. Decoding checks every length against the message
it is in, skips fields it does not know (a newer peer's), and builds the generated message
classes, so callers see no difference. :class:`StreamCodec` plugs this into grpclib for the
messages listed here and leaves every other message to betterproto.
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.proto import ProtoCodec

from kelp.rpc.broker import v1 as pb

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1
_SIGN64 = 1 << 63
_MAX_VARINT_BYTES = 10

# Field kinds.
UINT, INT, BOOL, STRING, BYTES, MESSAGE = range(6)


class MalformedMessage(ValueError):
    """Bytes that are not the message they were read as (a length runs past its message, a
    field has the wrong wire type)."""


_ONE_BYTE = [bytes([value]) for value in range(0x80)]


def uvarint(value: int) -> bytes:
    """An unsigned varint (7 bits a byte, least significant first): protobuf's and Kafka's."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes | memoryview, position: int, end: int) -> tuple[int, int]:
    """The varint at ``position`` (not past ``end``) and the position after it."""
    value = shift = 0
    for index in range(position, min(end, position + _MAX_VARINT_BYTES)):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise MalformedMessage("varint runs past its message or past 10 bytes")


class Schema:
    """A message class and its fields: ``(number, name, kind, nested schema or None,
    repeated)`` in number order."""

    def __init__(self, cls: type, fields: list[tuple[int, str, int, Schema | None, bool]]
                 ) -> None:
        self.cls = cls
        self.encoding = [(name, uvarint(number << 3 | (_LEN if kind >= STRING else _VARINT)),
                          kind, nested, repeated)
                         for number, name, kind, nested, repeated in fields]
        self.by_number = {number: (name, kind, nested, repeated)
                          for number, name, kind, nested, repeated in fields}

    def encode(self, message: Any) -> bytes:
        out: list[bytes] = []
        self._encode_into(message, out)
        return b"".join(out)

    def _encode_into(self, message: Any, out: list[bytes]) -> None:
        for name, key, kind, nested, repeated in self.encoding:
            value = getattr(message, name)
            if repeated:
                for item in value:
                    assert nested is not None
                    body = nested.encode(item)
                    out += (key, uvarint(len(body)), body)
            elif kind == MESSAGE:
                if value is not None:
                    assert nested is not None
                    body = nested.encode(value)
                    out += (key, uvarint(len(body)), body)
            elif not value:
                continue  # proto3 leaves defaults out
            elif kind in (UINT, BOOL):
                out += (key, uvarint(int(value)))
            elif kind == INT:
                out += (key, uvarint(value & _MASK64))
            elif kind == STRING:
                data = value.encode()
                out += (key, uvarint(len(data)), data)
            else:  # BYTES
                out += (key, uvarint(len(value)), value)

    def decode(self, data: bytes | memoryview, start: int = 0, end: int | None = None) -> Any:
        """The message in ``data[start:end]``; raises :class:`MalformedMessage`."""
        end = len(data) if end is None else end
        values: dict[str, Any] = {}
        position = start
        by_number = self.by_number
        while position < end:
            key = data[position]  # one-byte keys and values inline: a call each costs more
            if key < 0x80:
                position += 1
            else:
                key, position = read_varint(data, position, end)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise MalformedMessage(f"field number 0 in {self.cls.__name__}")
            field = by_number.get(number)
            if wire_type == _VARINT:
                if position < end and data[position] < 0x80:
                    value = data[position]
                    position += 1
                else:
                    value, position = read_varint(data, position, end)
                if field is None:
                    continue
                name, kind, _, _ = field
                if kind == INT:
                    values[name] = value - (1 << 64) if value & _SIGN64 else value
                elif kind == UINT:
                    values[name] = value
                elif kind == BOOL:
                    values[name] = bool(value)
                else:
                    raise MalformedMessage(f"field {number} of {self.cls.__name__} is a varint")
            elif wire_type == _LEN:
                if position < end and data[position] < 0x80:
                    size, body = data[position], position + 1
                else:
                    size, body = read_varint(data, position, end)
                position = body + size
                if position > end:
                    raise MalformedMessage(f"field {number} of {self.cls.__name__} runs past "
                                           "its message")
                if field is None:
                    continue
                name, kind, nested, repeated = field
                if kind == STRING:
                    values[name] = bytes(data[body:position]).decode()
                elif kind == BYTES:
                    values[name] = bytes(data[body:position])
                elif nested is not None:
                    item = nested.decode(data, body, position)
                    if repeated:
                        values.setdefault(name, []).append(item)
                    else:
                        values[name] = item
                else:
                    raise MalformedMessage(f"field {number} of {self.cls.__name__} is not "
                                           "length-delimited")
            elif wire_type in (_FIXED64, _FIXED32) and field is None:
                position += 8 if wire_type == _FIXED64 else 4
                if position > end:
                    raise MalformedMessage(f"field {number} runs past its message")
            else:
                raise MalformedMessage(f"wire type {wire_type} of field {number} of "
                                       f"{self.cls.__name__}")
        return self.cls(**values)


APPEND_REQUEST = Schema(pb.AppendRequest, [
    (1, "request_id", UINT, None, False), (2, "topic", STRING, None, False),
    (3, "partition", INT, None, False), (4, "records", BYTES, None, False),
    (5, "acks", INT, None, False)])
RECORD_ERROR = Schema(pb.RecordError, [
    (1, "batch_index", INT, None, False), (2, "message", STRING, None, False)])
APPEND_REPLY = Schema(pb.AppendReply, [
    (1, "request_id", UINT, None, False), (2, "error_code", INT, None, False),
    (3, "error_message", STRING, None, False), (4, "base_offset", INT, None, False),
    (5, "log_append_time", INT, None, False), (6, "log_start_offset", INT, None, False),
    (7, "record_errors", MESSAGE, RECORD_ERROR, True)])
FETCH_PARTITION = Schema(pb.FetchPartition, [
    (1, "topic", STRING, None, False), (2, "partition", INT, None, False),
    (3, "offset", INT, None, False), (4, "max_bytes", INT, None, False)])
FETCH_REQUEST = Schema(pb.FetchRequest, [
    (1, "request_id", UINT, None, False), (2, "partitions", MESSAGE, FETCH_PARTITION, True),
    (3, "max_wait_ms", INT, None, False), (4, "min_bytes", INT, None, False),
    (5, "max_bytes", INT, None, False), (6, "cancel", BOOL, None, False),
    (7, "isolation_level", INT, None, False), (8, "file_ranges", BOOL, None, False)])
ABORTED_TRANSACTION = Schema(pb.AbortedTransaction, [
    (1, "producer_id", INT, None, False), (2, "first_offset", INT, None, False)])
FILE_RANGE = Schema(pb.FileRange, [
    (1, "path", STRING, None, False), (2, "device", UINT, None, False),
    (3, "inode", UINT, None, False), (4, "position", INT, None, False),
    (5, "size", INT, None, False)])
# A fetched partition's fields but its records (kelp.fetch_wire frames those itself, with
# one copy instead of betterproto's three).
FETCHED_PARTITION = Schema(pb.FetchedPartition, [
    (1, "topic", STRING, None, False), (2, "partition", INT, None, False),
    (3, "error_code", INT, None, False), (4, "high_watermark", INT, None, False),
    (5, "log_start_offset", INT, None, False), (6, "records", BYTES, None, False),
    (7, "last_stable_offset", INT, None, False),
    (8, "aborted", MESSAGE, ABORTED_TRANSACTION, True),
    (9, "file", MESSAGE, FILE_RANGE, False)])

# A follower's fetch from its leader: one per partition and follower per round, the records
# of every acks=all append on a replicated topic.
REPLICA_FETCH_REQUEST = Schema(pb.ReplicaFetchRequest, [
    (1, "topic", STRING, None, False), (2, "partition", INT, None, False),
    (3, "replica_id", INT, None, False), (4, "leader_epoch", INT, None, False),
    (5, "fetch_offset", INT, None, False), (6, "max_bytes", INT, None, False),
    (7, "max_wait_ms", INT, None, False), (8, "topic_id", STRING, None, False),
    (9, "request_id", UINT, None, False), (10, "cancel", BOOL, None, False)])
REPLICA_FETCH_REPLY = Schema(pb.ReplicaFetchReply, [
    (1, "error_code", INT, None, False), (2, "error_message", STRING, None, False),
    (3, "records", BYTES, None, False), (4, "high_watermark", INT, None, False),
    (5, "log_start_offset", INT, None, False), (6, "log_end_offset", INT, None, False),
    (7, "leader_epoch", INT, None, False), (8, "request_id", UINT, None, False)])

SCHEMAS = {schema.cls: schema for schema in (APPEND_REQUEST, APPEND_REPLY, FETCH_REQUEST,
                                             REPLICA_FETCH_REQUEST, REPLICA_FETCH_REPLY)}


class StreamCodec(ProtoCodec):
    """grpclib's protobuf codec, with the messages in :data:`SCHEMAS` done here."""

    def encode(self, message: Any, message_type: type) -> bytes:
        schema = SCHEMAS.get(message_type)
        if schema is None or type(message) is not message_type:
            return super().encode(message, message_type)
        return schema.encode(message)

    def decode(self, data: bytes, message_type: type) -> Any:
        schema = SCHEMAS.get(message_type)
        if schema is None:
            return super().decode(data, message_type)
        return schema.decode(data)
