"""Writing a response made of several buffers without joining them first.

A Fetch response is a few small buffers around each partition's records (see
``gateway.kafka.fetch_response``). On a plain TCP connection they go out with ``sendmsg``
(a scatter write: the kernel reads each buffer where it is), so the record bytes are not
copied again in the gateway. TLS encrypts what it sends, which is a copy anyway: there the
buffers are joined once and sent as one.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

Buffer = bytes | bytearray | memoryview
Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]

# Linux refuses a sendmsg with more than IOV_MAX (1024) buffers: send at most this many a call.
MAX_BUFFERS_PER_CALL = 512


async def send_buffers(stream: Stream, buffers: Sequence[Buffer]) -> None:
    """Send ``buffers`` in order, whole. Raises ``trio.BrokenResourceError`` if the peer is
    gone, as ``send_all`` does."""
    if len(buffers) == 1 or not isinstance(stream, trio.SocketStream):
        await stream.send_all(buffers[0] if len(buffers) == 1 else b"".join(buffers))
        return
    sock = stream.socket
    pending = [memoryview(b).cast("B") for b in buffers if len(b)]
    try:
        while pending:
            sent = await sock.sendmsg(pending[:MAX_BUFFERS_PER_CALL])
            pending = _advance(pending, sent)
    except OSError as exc:
        raise trio.BrokenResourceError(f"send failed: {exc}") from exc


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
