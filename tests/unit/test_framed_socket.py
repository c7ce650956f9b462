"""The read socket's framed connection: frames come through whole, and a peer whose bytes are
always there (it never pauses) does not starve the sidecar's other tasks."""

from __future__ import annotations

import trio

from rdma.read_socket import FramedSocket

FRAME_BODY = b"r" * 60_000


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "little") + body


class EndlessPeer:
    """A socket whose every receive finds a frame and a half waiting: a reader never has to
    wait for it, so only the reader itself can give other tasks their turn."""

    def __init__(self) -> None:
        self._stream = frame(FRAME_BODY) * 3
        self._at = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def recv(self, size: int) -> bytes:
        size = min(size, len(FRAME_BODY) * 3 // 2)
        chunk = (self._stream[self._at:] + self._stream)[:size]
        self._at = (self._at + size) % len(self._stream)
        return chunk

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


async def test_frames_come_through_whole_and_a_flood_leaves_room_for_other_tasks() -> None:
    conn = FramedSocket(EndlessPeer())  # type: ignore[arg-type]
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
                assert await conn.receive() == FRAME_BODY
            nursery.cancel_scope.cancel()
    # 2,000 frames are about 1,300 receives: the other task gets a turn every few of them.
    assert others_ran >= 50, others_ran
