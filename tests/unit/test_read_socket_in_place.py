"""rdma.read_socket's wait in place (``receive_ready``): the mount's lone small read takes
its reply off the socket itself, in one bounded wait and receive, sharing the frame buffer
with the receiving task parked on the same socket; nothing is lost, duplicated or reordered,
and what the peer breaks ends the connection with its reason."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma import wire
from rdma.read_socket import RECEIVE_BYTES, FramedSocket, ReadSocketStream


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FramedSocket, socket.socket]]:
    """Our end (a FramedSocket) and the peer's raw socket, with room for a few MiB between
    them (more than one receive takes)."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    conn = FramedSocket(ours)
    try:
        yield conn, peer
    finally:
        conn.close()
        peer.close()


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


async def test_frames_here_or_arriving_within_the_wait_are_taken(
        pair: tuple[FramedSocket, socket.socket]) -> None:
    conn, peer = pair
    started = time.monotonic()
    assert conn.receive_ready(20) == []  # nothing came: the wait ran out
    assert time.monotonic() - started >= 0.015
    peer.sendall(frame(b"a") + frame(b"bc") + frame(b"def")[:3])
    assert conn.receive_ready(1) == [b"a", b"bc"]  # the split third waits for its bytes
    peer.sendall(frame(b"def")[3:])
    assert conn.receive_ready(1) == [b"def"]


async def test_the_receiving_task_parked_meanwhile_gets_only_what_is_left(
        pair: tuple[FramedSocket, socket.socket]) -> None:
    conn, peer = pair
    received: list[bytes | None] = []

    async def receiving() -> None:
        while (body := await conn.receive()) is not None:
            received.append(body)
        received.append(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiving)
        await trio.testing.wait_all_tasks_blocked()  # parked in wait_readable
        peer.sendall(frame(b"first") + frame(b"sec"))
        assert conn.receive_ready(1) == [b"first", b"sec"]
        peer.sendall(frame(b"ond-part")[:6])
        assert conn.receive_ready(1) == []  # half a frame stays in the shared buffer
        peer.sendall(frame(b"ond-part")[6:])
        peer.close()  # then the peer closes: the receiving task sees the close
        with trio.fail_after(5):
            while not received or received[-1] is not None:
                await trio.sleep(0.01)
    assert received == [b"ond-part", None]


async def test_one_wait_takes_at_most_one_receive(
        pair: tuple[FramedSocket, socket.socket]) -> None:
    """A peer that floods the socket cannot keep the loop blocked: the rest is left to
    ``receive``."""
    conn, peer = pair
    body = b"x" * 1000
    count = 4 * RECEIVE_BYTES // len(body)
    peer.setblocking(False)
    sent = 0
    try:
        while sent < count:
            peer.send(frame(body))
            sent += 1
    except BlockingIOError:
        pass
    if sent * len(body) <= 2 * RECEIVE_BYTES:
        pytest.skip(f"this kernel buffers only {sent * len(body)} bytes on a socketpair")
    taken = conn.receive_ready(1)
    assert 0 < len(taken) <= RECEIVE_BYTES // len(body) < sent
    rest = 0
    while rest < sent - len(taken):
        assert await conn.receive() == body
        rest += 1


async def test_a_malformed_frame_ends_the_connection_with_its_reason(
        pair: tuple[FramedSocket, socket.socket]) -> None:
    conn, peer = pair
    failures: list[Exception] = []

    async def receiving() -> None:
        try:
            await conn.receive()
        except trio.BrokenResourceError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiving)
        await trio.testing.wait_all_tasks_blocked()  # parked in wait_readable
        peer.sendall(struct.pack("<I", 1 << 30) + b"x")
        assert conn.receive_ready(1) == []
    (failure,) = failures  # the parked task learns why, not just "closed"
    assert "frame of 1073741824 bytes" in str(failure)
    assert conn.receive_ready(1) == []  # and nothing more is taken from it


async def test_a_malformed_reply_ends_the_stream_and_nothing_is_delivered(
        pair: tuple[FramedSocket, socket.socket]) -> None:
    conn, peer = pair
    stream = ReadSocketStream(conn, wire.Hello(wire.VERSION, 4, "/dev/shm/p"))
    good = wire.encode_reply(sidecar_pb.ReadReply(status=200, request_id=1, data=b"ok"))
    peer.sendall(good + frame(bytes([wire.REPLY]) + b"short"))
    assert stream.recv_ready(1) == []
    assert conn.error is not None and "malformed reply" in conn.error
    with pytest.raises(trio.BrokenResourceError, match="malformed reply"):
        await stream.recv()


async def test_a_request_still_queued_gets_no_wait(
        pair: tuple[FramedSocket, socket.socket]) -> None:
    """Bytes the socket has not taken yet: the request is not out, no reply can come, and the
    flusher that would send them cannot run while we wait: so we do not."""
    conn, _peer = pair
    conn.send(frame(b"y" * (2 << 20)))  # far more than the socket buffers
    started = time.monotonic()
    assert conn.receive_ready(1000) == []
    assert time.monotonic() - started < 0.5


async def test_the_stream_sends_copies_only_within_what_the_sidecar_announced(
        pair: tuple[FramedSocket, socket.socket]) -> None:
    conn, peer = pair
    stream = ReadSocketStream(conn, wire.Hello(wire.VERSION, 4, "/dev/shm/p"))
    request = sidecar_pb.ReadRequest(file_id="1,ab", size=100)  # a copy, asked
    stream.send(request)  # copy_max 0: an older sidecar's
    stream.copy_max = wire.MAX_COPY
    stream.send(request)
    kinds = []
    buffer = wire.FrameBuffer()
    while len(kinds) < 2:
        buffer.feed(peer.recv(4096))
        while (body := buffer.next()) is not None:
            kinds.append(body[0])
    assert kinds == [wire.READ, wire.COPY]
