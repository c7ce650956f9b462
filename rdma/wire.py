"""The sidecar's read socket protocol: fixed little-endian frames, bytes in and objects out.

The gRPC ReadStream costs 0.6-1.2 ms a read in HTTP/2 framing, protobuf and the asyncio bridge;
a local reader (the mount) wants a round trip close to a Unix socket's. This is the same
conversation as ReadStream (the same ``ReadRequest``/``ReadReply`` objects, replies matched by
request id and possibly out of order) in frames a few struct calls encode and decode. A read
is answered with a zero-copy loan of a pool buffer, or, asked with ``zero_copy`` false and at
most ``MAX_COPY`` bytes, with the bytes in the reply: a small read then needs no loan, so no
release frame follows it (that frame, and the sidecar waking for it, cost a random 4 KiB read
about as much again). No sockets here: the trio layers are :mod:`rdma.read_socket`.

Every frame is ``u32 body length`` then the body, whose first byte is its kind::

    HELLO   sidecar -> reader, once:  version u16, client_buffers u32, pool path (u16 + bytes)
    READ    reader -> sidecar:        request_id u64, offset u64, size u32,
                                      file id (u8 + ascii), releases (u16 + u64 each)
                                      (size 0: only the releases)
    COPY    reader -> sidecar:        as READ, size 1..MAX_COPY: answer with the bytes
    REPLY   sidecar -> reader:        request_id u64, status i16, transport u8, handle u64,
                                      pool offset u64, length u32, error (u16 + utf-8),
                                      refused releases (u16 + u64 each)
    DATA    sidecar -> reader:        as REPLY with handle and pool offset 0, and ``length``
                                      bytes of data between the error and the releases

A sidecar announces COPY in its Capabilities (``read_socket_copy_max``); a reader sends it
to no other (an older sidecar would close the connection on the unknown kind): ``encode_read``
makes a COPY only within the ``copy_max`` it is given.

Every length is checked against the frame it claims to be in and against the limits below; a
frame that breaks one is a :class:`WireError`, and the connection that sent it is closed.
"""

from __future__ import annotations

import struct

from kelp.rpc.sidecar import v1 as sidecar_pb

VERSION = 1
MAX_COPY = 64 * 1024  # a COPY read's most bytes (the reply carries them)
MAX_FRAME = 64 * 1024 + MAX_COPY  # far above any valid frame: 4,096 releases are 32 KiB
MAX_FILE_ID = 255
MAX_RELEASES = 4096
MAX_ERROR = 4096

HELLO, READ, REPLY, COPY, DATA = 1, 2, 3, 4, 5

_LENGTH = struct.Struct("<I")
_HELLO = struct.Struct("<BHIH")
_READ = struct.Struct("<BQQIB")
_REPLY = struct.Struct("<BQhBQQIH")
_COUNT = struct.Struct("<H")
TRANSPORTS = ("", "ucx", "http")


class WireError(ValueError):
    """A frame that is not one this protocol allows (the peer is broken or hostile)."""


def _frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


def _handles(handles: list[int]) -> bytes:
    if len(handles) > MAX_RELEASES:
        raise WireError(f"{len(handles)} handles in one frame; at most {MAX_RELEASES}")
    return _COUNT.pack(len(handles)) + struct.pack(f"<{len(handles)}Q", *handles)


def _read_handles(body: bytes, at: int) -> tuple[list[int], int]:
    if at + 2 > len(body):
        raise WireError("frame ends inside a handle count")
    (count,) = _COUNT.unpack_from(body, at)
    at += 2
    if count > MAX_RELEASES or at + 8 * count > len(body):
        raise WireError(f"{count} handles do not fit the frame")
    return list(struct.unpack_from(f"<{count}Q", body, at)), at + 8 * count


def _text(body: bytes, at: int, width: str, limit: int, what: str) -> tuple[bytes, int]:
    size = struct.calcsize(width)
    if at + size > len(body):
        raise WireError(f"frame ends inside the {what}'s length")
    (length,) = struct.unpack_from(width, body, at)
    at += size
    if length > limit or at + length > len(body):
        raise WireError(f"{what} of {length} bytes does not fit the frame")
    return body[at:at + length], at + length


def _done(body: bytes, at: int) -> None:
    if at != len(body):
        raise WireError(f"{len(body) - at} bytes left over after the frame")


# -- encoding -----------------------------------------------------------------------------------

def encode_hello(client_buffers: int, pool_path: str) -> bytes:
    path = pool_path.encode()
    if len(path) > 0xFFFF:
        raise WireError("pool path too long")
    return _frame(_HELLO.pack(HELLO, VERSION, client_buffers, len(path)) + path)


def encode_read(request: sidecar_pb.ReadRequest, *, copy_max: int = 0) -> bytes:
    """A COPY for a read (size > 0) without ``zero_copy`` of at most ``copy_max`` bytes (what
    the sidecar announced, capped at ``MAX_COPY``); a READ otherwise, so a request for a
    sidecar that announced nothing is always one it knows."""
    file_id = request.file_id.encode("ascii")
    if len(file_id) > MAX_FILE_ID:
        raise WireError(f"file id of {len(file_id)} bytes; at most {MAX_FILE_ID}")
    if not 0 <= request.size <= 0xFFFFFFFF:
        raise WireError(f"read size {request.size} does not fit 32 bits")
    copy = not request.zero_copy and 0 < request.size <= min(copy_max, MAX_COPY)
    kind = COPY if copy else READ
    return _frame(_READ.pack(kind, request.request_id, request.offset, request.size,
                             len(file_id)) + file_id + _handles(list(request.release)))


def encode_reply(reply: sidecar_pb.ReadReply) -> bytes:
    """A REPLY (a loan, or no bytes), or a DATA reply carrying ``reply.data``."""
    shared = reply.shared
    handle, offset, length = ((shared.handle, shared.offset, shared.length)
                              if shared is not None else (0, 0, 0))
    data = reply.data
    if data:
        if shared is not None or len(data) > MAX_COPY:
            raise WireError(f"a reply with {len(data)} bytes of data and a loan, or over "
                            f"{MAX_COPY}")
        length = len(data)
    error = reply.error.encode()[:MAX_ERROR]
    transport = TRANSPORTS.index(reply.transport) if reply.transport in TRANSPORTS else 0
    return _frame(_REPLY.pack(DATA if data else REPLY, reply.request_id, reply.status,
                              transport, handle, offset, length, len(error)) + error + data
                  + _handles(list(reply.release_refused)))


# -- decoding -----------------------------------------------------------------------------------

class Hello:
    __slots__ = ("client_buffers", "pool_path", "version")

    def __init__(self, version: int, client_buffers: int, pool_path: str) -> None:
        self.version = version
        self.client_buffers = client_buffers
        self.pool_path = pool_path


def decode_hello(body: bytes) -> Hello:
    if len(body) < _HELLO.size or body[0] != HELLO:
        raise WireError("expected the sidecar's hello")
    _, version, client_buffers, _ = _HELLO.unpack_from(body)
    if version != VERSION:
        raise WireError(f"sidecar speaks read-socket version {version}, not {VERSION}")
    path, at = _text(body, _HELLO.size - 2, "<H", 0xFFFF, "pool path")
    _done(body, at)
    return Hello(version, client_buffers, path.decode())


def decode_read(body: bytes) -> sidecar_pb.ReadRequest:
    if len(body) < _READ.size or body[0] not in (READ, COPY):
        raise WireError("expected a read request")
    kind, request_id, offset, size, _ = _READ.unpack_from(body)
    if kind == COPY and not 0 < size <= MAX_COPY:
        raise WireError(f"a copied read of {size} bytes; allowed 1..{MAX_COPY}")
    file_id, at = _text(body, _READ.size - 1, "<B", MAX_FILE_ID, "file id")
    releases, at = _read_handles(body, at)
    _done(body, at)
    try:
        name = file_id.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("file id is not ascii") from None
    return sidecar_pb.ReadRequest(file_id=name, offset=offset, size=size,
                                  zero_copy=kind == READ, request_id=request_id,
                                  release=releases)


def decode_reply(body: bytes, pool_path: str) -> sidecar_pb.ReadReply:
    if len(body) < _REPLY.size or body[0] not in (REPLY, DATA):
        raise WireError("expected a read reply")
    kind, request_id, status, transport, handle, offset, length, _ = _REPLY.unpack_from(body)
    error, at = _text(body, _REPLY.size - 2, "<H", MAX_ERROR, "error")
    data = b""
    if kind == DATA:
        if handle or offset or not 0 < length <= MAX_COPY or at + length > len(body):
            raise WireError(f"a data reply of {length} bytes that does not fit the frame, "
                            "or with a loan")
        data, at = body[at:at + length], at + length
    refused, at = _read_handles(body, at)
    _done(body, at)
    if transport >= len(TRANSPORTS):
        raise WireError(f"unknown transport {transport}")
    shared = (sidecar_pb.SharedBuffer(path=pool_path, offset=offset, length=length,
                                      handle=handle) if handle else None)
    return sidecar_pb.ReadReply(status=status, error=error.decode(errors="replace"),
                                shared=shared, transport=TRANSPORTS[transport], data=data,
                                request_id=request_id, release_refused=refused)


class FrameBuffer:
    """Bytes from a stream in, whole frame bodies out (at most ``MAX_FRAME`` each)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data

    def next(self) -> bytes | None:
        """The next whole body, or None until more bytes come."""
        if len(self._data) < 4:
            return None
        (length,) = _LENGTH.unpack_from(self._data)
        if not 0 < length <= MAX_FRAME:
            raise WireError(f"frame of {length} bytes; allowed 1..{MAX_FRAME}")
        if len(self._data) < 4 + length:
            return None
        body = bytes(self._data[4:4 + length])
        del self._data[:4 + length]
        return body

    @property
    def buffered(self) -> int:
        return len(self._data)
