"""Active messages: small requests and replies over the same endpoints as the GETs.

`Worker.am_inbox` registers a handler for one message id; what arrives is queued in an
`AmInbox` as `AmMessage` objects. Eager messages (small; the payload arrived with the message) are
copied out inside UCX's callback. Rendezvous messages (large) are fetched into a new buffer first
and queued when complete. The inbox is bounded: UCX cannot be told to slow down an eager sender,
so when the inbox is full eager messages are dropped and counted, and rendezvous ones are
refused, which fails the sender's `Endpoint.am_send` — a protocol on top should ask before it
sends much.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from rdma.ucx.endpoint import Endpoint
    from rdma.ucx.worker import Worker


@dataclass(frozen=True)
class AmMessage:
    """An active message: ``header`` and ``data`` as sent; ``endpoint`` replies to the sender
    when it was sent with ``reply=True`` and the worker knows that endpoint."""

    am_id: int
    header: bytes
    data: bytes | bytearray
    endpoint: Endpoint | None


class AmInbox:
    """Active messages for one id, buffered up to ``capacity``. Eager messages that arrive when
    it is full are dropped and counted in ``dropped``; rendezvous ones are refused, so the
    sender's `Endpoint.am_send` fails instead."""

    def __init__(self, worker: Worker, am_id: int, capacity: int) -> None:
        self._worker = worker
        self.am_id = am_id
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[AmMessage](capacity)

    def _full(self) -> bool:
        stats = self._send.statistics()
        return stats.current_buffer_used >= stats.max_buffer_size

    def _deliver(self, message: AmMessage) -> None:
        try:
            self._send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped += 1

    async def receive(self) -> AmMessage:
        return await self._receive.receive()

    def __aiter__(self) -> AmInbox:
        return self

    async def __anext__(self) -> AmMessage:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        if self._worker._inboxes.get(self.am_id) is self:
            self._worker._set_am_handler(self.am_id, enabled=False)
            del self._worker._inboxes[self.am_id]
        self._send.close()
