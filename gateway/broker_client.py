"""The gateway's connection to the broker: two long-lived streams and unary control calls.

Appends and fetches from every Kafka connection share one Append and one Fetch stream; replies
are matched to waiters by request id. ``submit_append`` is synchronous up to the point where the
request is queued on the stream, so appends queued in order reach the broker in order. A fetch
cancelled by its Kafka client (disconnect) tells the broker to drop it too.

If the broker goes away, waiters get ``BrokerUnavailable`` (the handlers answer with a retriable
Kafka error) and ``run`` reconnects with backoff.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import grpclib.exceptions
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from kelp import grpc
from kelp.rpc.broker import v1 as pb

log = logging.getLogger("kelp.gateway.broker")

_SERVICE = "/broker.v1.Broker/"
CONNECT_WAIT_S = 10.0
MAX_CONCURRENT_CALLS = 64  # unary calls in flight (the two streams take two more)
# Appends sent and not yet answered: past this, produce requests wait (a closed Kafka connection
# no longer bounds what it had already sent, so this bound is gateway-wide).
MAX_OUTSTANDING_APPENDS = 4096


class BrokerUnavailable(Exception):
    """The broker cannot be reached (refused, reset, timed out): retriable, clients retry."""


class BrokerFailed(Exception):
    """The broker was reached but the call failed for a reason retrying will not fix (a bug
    there, an UNIMPLEMENTED method): logged with its traceback; clients get
    UNKNOWN_SERVER_ERROR."""


# grpc statuses that mean "not reachable now" rather than "reached and broken".
_UNAVAILABLE = {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED,
                Status.RESOURCE_EXHAUSTED, Status.ABORTED}


class _Waiter:
    """One outstanding stream request: set once, by the reply or by a stream failure."""

    __slots__ = ("append", "done", "error", "reply")

    def __init__(self, *, append: bool = False) -> None:
        self.done = trio.Event()
        self.reply: Any = None
        self.error: Exception | None = None
        self.append = append

    async def wait(self) -> Any:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.reply


class BrokerClient:
    def __init__(self, address: grpc.Address) -> None:
        self.address = address
        self._channel: grpc.Channel | None = None
        self._append: grpc.ClientStream[pb.AppendRequest, pb.AppendReply] | None = None
        self._fetch: grpc.ClientStream[pb.FetchRequest, pb.FetchReply] | None = None
        self._connected = trio.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._outage = False  # logged once when calls start failing, once when they recover
        self._calls = trio.CapacityLimiter(MAX_CONCURRENT_CALLS)
        self._appends_outstanding = 0
        self._append_lot = trio.lowlevel.ParkingLot()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the streams open until cancelled, reconnecting when the broker goes away."""
        task_status.started()
        backoff = 0.05
        self._channel = grpc.Channel(self.address)
        try:
            while True:
                try:
                    await self._serve_streams()
                    backoff = 0.05
                except Exception as exc:
                    log.warning("broker stream failed", extra={"broker": str(self.address),
                                                              "error": repr(exc)})
                finally:
                    self._fail_waiters(BrokerUnavailable(f"broker {self.address} unavailable"))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
        finally:
            self._channel.close()

    async def _serve_streams(self) -> None:
        assert self._channel is not None
        async with (
            self._channel.open_stream(_SERVICE + "Append", pb.AppendRequest, pb.AppendReply) as ap,
            self._channel.open_stream(_SERVICE + "Fetch", pb.FetchRequest, pb.FetchReply) as fe,
        ):
            self._append, self._fetch = ap, fe
            self._connected.set()
            log.info("connected to broker", extra={"broker": str(self.address)})
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_replies, ap, nursery.cancel_scope)
                    nursery.start_soon(self._read_replies, fe, nursery.cancel_scope)
            finally:
                self._append = self._fetch = None
                self._connected = trio.Event()
        raise BrokerUnavailable("broker closed the streams")

    async def _read_replies(self, stream: grpc.ClientStream[Any, Any],
                            scope: trio.CancelScope) -> None:
        while (reply := await stream.recv()) is not None:
            waiter = self._waiting.pop(reply.request_id, None)
            if waiter is not None:
                waiter.reply = reply
                waiter.done.set()
                if waiter.append:
                    self._append_answered()
        scope.cancel()  # one stream ended: reconnect both

    def _fail_waiters(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.error = error
            waiter.done.set()
        self._appends_outstanding = 0
        self._append_lot.unpark_all()

    async def wait_connected(self) -> None:
        with trio.move_on_after(CONNECT_WAIT_S):
            await self._connected.wait()
        if not self._connected.is_set():
            raise BrokerUnavailable(f"broker {self.address} unavailable")

    # -- data path --------------------------------------------------------------------------

    async def wait_append_writable(self) -> None:
        """Until the append stream has room, in bytes queued and in appends the broker has
        not answered yet (the broker takes appends slower than clients send them: the Kafka
        connection waiting here is not read meanwhile)."""
        while self._appends_outstanding >= MAX_OUTSTANDING_APPENDS:
            await self._append_lot.park()
        stream = self._append
        if stream is not None:
            await stream.wait_writable()

    def _append_answered(self) -> None:
        # Wake only as many waiters as there is room for: thousands of stuck connections
        # must not all be woken by every answer (that burned a core under the fuzzer).
        self._appends_outstanding = max(self._appends_outstanding - 1, 0)
        self._append_lot.unpark(count=MAX_OUTSTANDING_APPENDS - self._appends_outstanding)

    def submit_append(self, topic: str, partition: int, records: bytes,
                      acks: int) -> _Waiter | None:
        """Queue an append now (order preserved); await the returned waiter for the reply.

        Returns None for acks=0, which gets no reply. Raises ``BrokerUnavailable``.
        """
        stream = self._append
        if stream is None:
            raise BrokerUnavailable(f"broker {self.address} unavailable")
        request_id = next(self._ids)
        try:
            stream.send(pb.AppendRequest(request_id=request_id, topic=topic,
                                         partition=partition, records=records, acks=acks),
                        size=len(records))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The stream failed under us: a retriable answer, not a dropped Kafka connection.
            raise BrokerUnavailable(f"broker {self.address} append stream failed") from exc
        # Every append is answered (acks=0 too), so each is counted until it is.
        waiter = self._waiting[request_id] = _Waiter(append=True)
        self._appends_outstanding += 1
        return None if acks == 0 else waiter

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchReply:
        await self.wait_connected()
        stream = self._fetch
        if stream is None:
            raise BrokerUnavailable(f"broker {self.address} unavailable")
        request.request_id = next(self._ids)
        waiter = self._waiting[request.request_id] = _Waiter()
        stream.send(request)
        try:
            return await waiter.wait()
        finally:
            if not waiter.done.is_set():  # cancelled: let the broker drop it as well
                self._waiting.pop(request.request_id, None)
                if self._fetch is stream:
                    stream.send(pb.FetchRequest(request_id=request.request_id, cancel=True))

    # -- control ------------------------------------------------------------------------------

    async def call(self, method: str, request: Any, reply_type: type, *,
                   timeout: float = 10.0) -> Any:
        """A unary call. Raises ``BrokerUnavailable`` when the broker cannot be reached
        (logged once per outage) and ``BrokerFailed`` when it answered with an error that
        retrying will not fix (logged with its traceback)."""
        assert self._channel is not None, "BrokerClient.run() not started"
        try:
            # HTTP/2 allows the broker 100 concurrent streams: more calls wait here instead of
            # failing with TooManyStreamsError.
            async with self._calls:
                reply = await self._channel.call(_SERVICE + method, request, reply_type,
                                                 timeout=timeout)
        except GRPCError as exc:
            if exc.status in _UNAVAILABLE:
                self._note_outage(exc)
                raise BrokerUnavailable(f"broker {self.address}: {exc.message}") from exc
            log.error("broker call failed", exc_info=True,
                      extra={"method": method, "status": exc.status.name})
            raise BrokerFailed(f"broker {method}: {exc.status.name} {exc.message}") from exc
        except (OSError, TimeoutError, grpclib.exceptions.StreamTerminatedError,
                grpclib.exceptions.ProtocolError) as exc:
            self._note_outage(exc)
            raise BrokerUnavailable(f"broker {self.address}: {exc}") from exc
        if self._outage:
            self._outage = False
            log.info("broker reachable again", extra={"broker": str(self.address)})
        return reply

    def _note_outage(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.warning("broker unreachable", extra={"broker": str(self.address),
                                                     "error": str(exc) or type(exc).__name__})
