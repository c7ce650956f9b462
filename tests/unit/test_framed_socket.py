"""The read socket's framed connection: frames come through whole, a peer whose bytes are always
there (it never pauses) does not starve the sidecar's other tasks, and a cancelled receive
loses no frame."""

from __future__ import annotations

import pytest
import trio

from rdma.read_socket import FramedSocket


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "little") + body


class EndlessPeer:
    """A socket whose every receive finds a frame and a half waiting: a reader never has to
    wait for it, so only the reader itself can give other tasks their turn."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._stream = frame(body) * 3
        self._at = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def recv(self, size: int) -> bytes:
        size = min(size, len(self._stream) // 2)
        chunk = (self._stream[self._at:] + self._stream)[:size]
        self._at = (self._at + size) % len(self._stream)
        return chunk

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


@pytest.mark.parametrize("body_size", [60_000, 30])
async def test_frames_come_through_whole_and_a_flood_leaves_room_for_other_tasks(
        body_size: int) -> None:
    peer = EndlessPeer(bytes(range(256)) * (body_size // 256) + b"r" * (body_size % 256))
    conn = FramedSocket(peer)  # type: ignore[arg-type]
    others_ran = 0

    async def other_task() -> None:
        nonlocal others_ran
        while True:
            others_ran += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            for _ in range(2_000):
                assert await conn.receive() == peer.body
            nursery.cancel_scope.cancel()
    # The other task gets a turn every few frames.
    assert others_ran >= 100, others_ran


class NumberedPeer(EndlessPeer):
    """An endless stream of numbered frames (``00000000``, ``00000001``, ...), handed out 20
    bytes a receive, so frames straddle receives."""

    def __init__(self) -> None:
        super().__init__(b"")
        self._next = 0
        self._pending = b""

    def recv(self, size: int) -> bytes:
        while len(self._pending) < 20:
            self._pending += frame(b"%08d" % self._next)
            self._next += 1
        chunk, self._pending = self._pending[:20], self._pending[20:]
        return chunk


async def test_a_cancelled_receive_loses_no_frame() -> None:
    conn = FramedSocket(NumberedPeer())  # type: ignore[arg-type]
    expected = 0
    for attempt in range(300):
        with trio.CancelScope() as scope:
            if attempt % 3 == 0:
                scope.cancel()  # cancelled before it starts: takes nothing
            while True:
                assert await conn.receive() == b"%08d" % expected
                expected += 1
                if expected % 7 == 0:
                    scope.cancel()  # cancelled mid-run: at its next step
    # Every frame came whole and in order, none skipped: the stream never lost its place.
    assert expected > 300
