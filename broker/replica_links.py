"""A follower's fetches to one leader on one long-lived stream (ReplicaFetchStream).

A unary ReplicaFetch opens a new HTTP/2 stream and crosses trio-asyncio twice on each side:
about 1.5 ms a call on an idle machine, and a replicated acks=all append waits for two of them
(the fetch that carries the records, then the one whose offset tells the leader the follower
has them). On a stream each fetch is one message each way, its reply matched by request id
(``kelp.mux.Multiplexed``), every partition this broker follows from that leader sharing it.

``LeaderLink.run`` (a task of the replication nursery) keeps the stream open and reconnects
after a failure; while it is not connected, or when the leader does not serve the stream (an
older kelp during a rolling upgrade: tried again every 10 s), ``fetch`` says so with None
and the caller makes the unary call instead.
"""

from __future__ import annotations

import logging

import grpclib.const
import grpclib.exceptions
import trio

from kelp import grpc
from kelp.mux import Multiplexed
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

log = logging.getLogger("kelp.replication")

# Fetches outstanding on one stream: one per partition followed from that leader is the norm.
MAX_OUTSTANDING_FETCHES = 4096
RECONNECT_S = 0.2
MAX_RECONNECT_S = 5.0
# A stream the leader ends at once (within QUICK_END_S of opening, before any reply) this many
# times in a row: not served.
QUICK_END_S = 1.0
EMPTY_ENDS_FOR_UNSUPPORTED = 3
RETRY_UNSUPPORTED_S = 10.0


class LinkLost(Exception):
    """The stream ended while a fetch was outstanding (the caller retries, as after a failed
    unary call)."""


def _cancel(request_id: int) -> pb.ReplicaFetchRequest:
    return pb.ReplicaFetchRequest(request_id=request_id, cancel=True)


class LeaderLink:
    """This follower's fetch stream to the leader at ``channel``."""

    def __init__(self, channel: grpc.Channel, address: str) -> None:
        self.channel = channel
        self.address = address
        self.fetches: Multiplexed[pb.ReplicaFetchRequest, pb.ReplicaFetchReply] = Multiplexed(
            max_outstanding=MAX_OUTSTANDING_FETCHES)
        self.unsupported = False  # the leader does not serve the stream: unary calls for now

    async def run(self) -> None:
        """Until cancelled: the stream kept open, reopened after a pause when it fails (a
        longer one each time the leader cannot be reached). A leader that ends it at once,
        before any reply, on every try (an older kelp without the method: grpclib resets the
        stream rather than saying UNIMPLEMENTED to it) gets unary fetches only, and the
        stream is tried again later."""
        empty_ends = 0
        pause = RECONNECT_S
        while True:
            replies = 0
            error: BaseException | None = None
            try:
                async with self.channel.open_stream(BROKER.replica_fetch_stream) as stream:
                    opened = trio.current_time()
                    self.fetches.stream = stream
                    while (reply := await stream.recv()) is not None:
                        replies += 1
                        self.fetches.deliver(reply)
                    error = stream.error  # how it ended (the pump keeps the failure)
                quick = trio.current_time() - opened < QUICK_END_S
                empty_ends = empty_ends + 1 if quick and not replies else 0
                pause = RECONNECT_S
            except Exception as exc:  # not connected at all: the leader is away
                error = exc
                pause = min(pause * 2, MAX_RECONNECT_S)  # a departed broker: ever less often
            finally:
                self.fetches.stream = None
                self.fetches.fail(LinkLost(f"fetch stream to {self.address} ended"))
            unimplemented = (isinstance(error, grpclib.exceptions.GRPCError)
                             and error.status == grpclib.const.Status.UNIMPLEMENTED)
            self.unsupported = unimplemented or empty_ends >= EMPTY_ENDS_FOR_UNSUPPORTED
            if self.unsupported:
                log.info("leader serves no fetch stream: unary fetches for now",
                         extra={"leader": self.address})
                await trio.sleep(RETRY_UNSUPPORTED_S)
                empty_ends = 0
                continue
            log.debug("fetch stream ended", extra={
                "leader": self.address,
                "error": grpc.describe_failure(error) if isinstance(error, Exception) else ""})
            await trio.sleep(pause)

    async def fetch(self, request: pb.ReplicaFetchRequest, timeout: float
                    ) -> pb.ReplicaFetchReply | None:
        """The reply on the stream; None when it is not up (make the unary call). Raises
        ``TimeoutError`` after ``timeout`` s and ``LinkLost`` when the stream ends first."""
        if self.fetches.stream is None or not self.fetches.has_room():
            return None
        with trio.move_on_after(timeout):
            try:
                return await self.fetches.call(request, cancel=_cancel)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkLost(f"fetch stream to {self.address}: {exc}") from None
        raise TimeoutError(f"ReplicaFetchStream to {self.address}: no answer within "
                           f"{timeout:g} s")
