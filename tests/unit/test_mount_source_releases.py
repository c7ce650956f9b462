"""The mount's reads carry the releases of buffers it has given back; a read cancelled while
it waits for room on the stream must leave them for the next message, not drop them."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from rdma.mount.source import Source, SourceConfig


class RecordingStream:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, request: Any, size: int = 0) -> None:
        self.sent.append(request)


async def test_a_read_cancelled_while_waiting_for_room_keeps_the_releases():
    source = Source(SourceConfig())
    stream = RecordingStream()
    source._reads.stream = stream  # type: ignore[assignment]
    source._reads.max_outstanding = 0  # no room: every read waits
    source._to_release = [7, 8]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source._sidecar_read, "3,01", 0, 4096)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert source._to_release == [7, 8] and stream.sent == []
    # Once there is room, the next read carries them.
    source._reads.max_outstanding = 1
    with trio.move_on_after(0.1):
        await source._sidecar_read("3,01", 0, 4096)
    (request,) = stream.sent
    assert list(request.release) == [7, 8] and source._to_release == []
