"""Writing a response made of several buffers without joining them first.

A Fetch response is a few small buffers around each partition's records (see
``gateway.kafka.fetch_response``). On a plain TCP connection they go out with ``sendmsg``
(a scatter write: the kernel reads each buffer where it is), so the record bytes are not
copied again in the gateway; records still in a segment file (``gateway.segment_files``) go
with ``os.sendfile``, never entering the gateway's memory. TLS encrypts what it sends, which
is a copy anyway: there the buffers are joined once and sent as one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import trio

from gateway.segment_files import FileSlice

Buffer = bytes | bytearray | memoryview | FileSlice
Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]

# Linux refuses a sendmsg with more than IOV_MAX (1024) buffers: send at most this many a call.
MAX_BUFFERS_PER_CALL = 512


async def send_buffers(stream: Stream, buffers: Sequence[Buffer]) -> None:
    """Send ``buffers`` in order, whole. Raises ``trio.BrokenResourceError`` if the peer is
    gone (as ``send_all`` does) or a file range can no longer be read whole (the frame
    cannot be finished: the connection must close)."""
    try:
        if not isinstance(stream, trio.SocketStream):
            await stream.send_all(_joined(buffers))
            return
        sock = stream.socket
        pending: list[memoryview] = []
        for buffer in buffers:
            if isinstance(buffer, FileSlice):
                await _sendmsg(sock, pending)
                pending = []
                await _sendfile(sock, buffer)
            elif len(buffer):
                pending.append(memoryview(buffer).cast("B"))
        await _sendmsg(sock, pending)
    except OSError as exc:
        raise trio.BrokenResourceError(f"send failed: {exc}") from exc


def close_files(buffers: Sequence[Buffer]) -> None:
    """Close the file ranges among ``buffers`` (once written, or never to be)."""
    for buffer in buffers:
        if isinstance(buffer, FileSlice):
            buffer.close()


def _joined(buffers: Sequence[Buffer]) -> bytes | bytearray | memoryview:
    if len(buffers) == 1 and not isinstance(buffers[0], FileSlice):
        return buffers[0]
    return b"".join(b.read() if isinstance(b, FileSlice) else b for b in buffers)


async def _sendmsg(sock: trio.socket.SocketType, pending: list[memoryview]) -> None:
    while pending:
        sent = await sock.sendmsg(pending[:MAX_BUFFERS_PER_CALL])
        pending = _advance(pending, sent)


async def _sendfile(sock: trio.socket.SocketType, piece: FileSlice) -> None:
    position, remaining = piece.position, piece.size
    while remaining:
        try:
            sent = os.sendfile(sock.fileno(), piece.fd, position, remaining)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        if sent == 0:  # the file ends before the range does (truncated under us)
            raise OSError(f"segment file ends {remaining} bytes early")
        position += sent
        remaining -= sent
        await trio.lowlevel.checkpoint()  # a fast client must not starve the other tasks


def _advance(pending: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of ``pending`` once its first ``sent`` bytes are written."""
    index = 0
    while index < len(pending) and sent >= len(pending[index]):
        sent -= len(pending[index])
        index += 1
    rest = pending[index:]
    if rest and sent:
        rest[0] = rest[0][sent:]
    return rest
