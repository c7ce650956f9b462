"""Request headers (v1, and v2 with tagged fields) and response headers (v0, v1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.kafka import vet

_FIXED = struct.Struct(">hhi")
_CORRELATION = struct.Struct(">i")


# Kafka allows any int16 length; kelp keeps client ids in per-client tables, so it bounds them.
MAX_CLIENT_ID_LENGTH = 1024


class MalformedHeader(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


def peek_ids(frame: bytes) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id): the part every header version shares."""
    if len(frame) < _FIXED.size:
        raise MalformedHeader(f"frame of {len(frame)} bytes is too short for a request header")
    return _FIXED.unpack_from(frame, 0)


def read_unsigned_varint(data: bytes, position: int) -> tuple[int, int]:
    try:
        return vet.read_uvarint(data, position, len(data))
    except vet.Malformed as exc:
        raise MalformedHeader(str(exc)) from None


def skip_tagged_fields(data: bytes, position: int) -> int:
    """Skip a tagged-field section; unknown tags are ignored, as the protocol says."""
    count, position = read_unsigned_varint(data, position)
    for _ in range(count):
        _tag, position = read_unsigned_varint(data, position)
        size, position = read_unsigned_varint(data, position)
        position += size
        if position > len(data):
            raise MalformedHeader("tagged field runs past the frame")
    return position


def parse_request_header(frame: bytes, *, flexible: bool) -> tuple[RequestHeader, int]:
    """Parse header v1 (or v2 when ``flexible``); returns the header and where the body starts."""
    api_key, api_version, correlation_id = peek_ids(frame)
    position = _FIXED.size
    if len(frame) < position + 2:
        raise MalformedHeader("truncated client id")
    (length,) = struct.unpack_from(">h", frame, position)
    position += 2
    client_id = None
    if length > MAX_CLIENT_ID_LENGTH:
        raise MalformedHeader(f"client id of {length} bytes exceeds {MAX_CLIENT_ID_LENGTH}")
    if length >= 0:
        if position + length > len(frame):
            raise MalformedHeader("client id runs past the frame")
        client_id = frame[position : position + length].decode("utf-8", "replace")
        position += length
    elif length != -1:
        raise MalformedHeader(f"invalid client id length {length}")
    if flexible:
        position = skip_tagged_fields(frame, position)
    return RequestHeader(api_key, api_version, correlation_id, client_id), position


def response_header(correlation_id: int, *, flexible: bool) -> bytes:
    """Header v0 (correlation id) or v1 (plus an empty tagged-field section)."""
    return _CORRELATION.pack(correlation_id) + (b"\x00" if flexible else b"")
