"""The gateway's connection to the broker: two long-lived streams and unary control calls.

Appends and fetches from every Kafka connection share one Append and one Fetch stream; replies
are matched to waiters by request id. ``submit_append`` is synchronous up to the point where the
request is queued on the stream, so appends queued in order reach the broker in order. A fetch
cancelled by its Kafka client (disconnect) tells the broker to drop it too.

If the broker goes away, waiters get ``BrokerUnavailable`` (the handlers answer with a retriable
Kafka error) and ``run`` reconnects with backoff.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import ssl
from typing import Any, TypeVar

import grpclib.exceptions
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from kelp import grpc
from kelp.fetch_wire import FetchReplyWire
from kelp.mux import Multiplexed, Waiter
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

log = logging.getLogger("kelp.gateway.broker")

Rep = TypeVar("Rep")

CONNECT_WAIT_S = 10.0
MAX_CONCURRENT_CALLS = 64  # unary calls in flight (the two streams take two more)
# Appends sent and not yet answered: past this, produce requests wait (a closed Kafka connection
# no longer bounds what it had already sent, so this bound is gateway-wide).
MAX_OUTSTANDING_APPENDS = 4096
# Fetches waiting for their reply (most park in a long poll at the broker): past this, more wait.
MAX_OUTSTANDING_FETCHES = 4096
# Broker.Fetch with its replies read by kelp.fetch_wire: the records copied once, not thrice.
FETCH_ROUTE = dataclasses.replace(BROKER.fetch, reply_type=FetchReplyWire)
# Segment-file ranges the gateway could not open as the broker named them, in a row: past
# this the broker's files are taken to be out of reach (another container, another host) and
# fetches ask for bytes. One miss can be retention deleting a segment in between.
MAX_FILE_MISSES = 3


class BrokerUnavailable(Exception):
    """The broker cannot be reached (refused, reset, timed out): retriable, clients retry."""


class BrokerFailed(Exception):
    """The broker was reached but the call failed for a reason retrying will not fix (a bug
    there, an UNIMPLEMENTED method): logged with its traceback; clients get
    UNKNOWN_SERVER_ERROR."""


# grpc statuses that mean "not reachable now" rather than "reached and broken".
# UNAUTHENTICATED too: a gateway without the broker's cluster token is as good as cut off
# (one log line says which flag is missing), and its clients get retriable errors.
_UNAVAILABLE = {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED,
                Status.RESOURCE_EXHAUSTED, Status.ABORTED, Status.UNAUTHENTICATED}


class BrokerClient:
    def __init__(self, address: grpc.Address, tls: ssl.SSLContext | None = None,
                 token: str | None = None) -> None:
        self.tls = tls  # gRPC over TLS, for a broker on another host
        self.token = token  # the cluster token, when the broker requires one
        self.address = address
        self._channel: grpc.Channel | None = None
        self._appends: Multiplexed[pb.AppendRequest, pb.AppendReply] = Multiplexed(
            max_outstanding=MAX_OUTSTANDING_APPENDS)
        self._fetches: Multiplexed[pb.FetchRequest, pb.FetchReply] = Multiplexed(
            max_outstanding=MAX_OUTSTANDING_FETCHES)
        self._connected = trio.Event()
        self._outage = False  # logged once when calls start failing, once when they recover
        self._calls = trio.CapacityLimiter(MAX_CONCURRENT_CALLS)
        # Whether fetches ask for segment-file ranges (gateway.segment_files): a broker on
        # this host may share its files; one elsewhere cannot.
        self.reads_files = _on_this_host(address)
        self._file_misses = 0

    @property
    def connected(self) -> bool:
        """Whether the streams are up now (False while the broker is away)."""
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """Appends and fetches sent whose reply has not come yet."""
        return self._appends.outstanding + self._fetches.outstanding

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the streams open until cancelled, reconnecting when the broker goes away."""
        task_status.started()
        backoff = 0.05
        self._channel = grpc.Channel(self.address, self.tls, self.token)
        try:
            while True:
                try:
                    await self._serve_streams()
                    backoff = 0.05
                except Exception as exc:
                    log.warning("broker stream failed", extra={"broker": str(self.address),
                                                              "error": repr(exc)})
                finally:
                    unavailable = BrokerUnavailable(f"broker {self.address} unavailable")
                    self._appends.fail(unavailable)
                    self._fetches.fail(unavailable)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
        finally:
            self._channel.close()

    async def _serve_streams(self) -> None:
        assert self._channel is not None
        async with (
            self._channel.open_stream(BROKER.append) as appends,
            self._channel.open_stream(FETCH_ROUTE) as fetches,
        ):
            self._appends.stream, self._fetches.stream = appends, fetches
            self._connected.set()
            log.info("connected to broker", extra={"broker": str(self.address)})
            try:
                async with trio.open_nursery() as nursery:
                    for mux, stream in ((self._appends, appends), (self._fetches, fetches)):
                        nursery.start_soon(self._deliver, mux, stream, nursery.cancel_scope)
            finally:
                self._appends.stream = self._fetches.stream = None
                self._connected = trio.Event()
        raise BrokerUnavailable("broker closed the streams")

    @staticmethod
    async def _deliver(mux: Multiplexed[Any, Any], stream: grpc.ClientStream[Any, Any],
                       scope: trio.CancelScope) -> None:
        await mux.deliver_replies(stream)
        scope.cancel()  # one stream ended: reconnect both

    async def wait_connected(self) -> None:
        with trio.move_on_after(CONNECT_WAIT_S):
            await self._connected.wait()
        if not self._connected.is_set():
            raise BrokerUnavailable(f"broker {self.address} unavailable")

    # -- data path --------------------------------------------------------------------------

    def append_writable(self) -> bool:
        """Whether an append would go out now without waiting (``wait_append_writable``)."""
        stream = self._appends.stream
        return self._appends.has_room() and (stream is None or stream.writable())

    async def wait_append_writable(self) -> None:
        """Until the append stream has room, in appends the broker has not answered yet and
        in bytes queued (the broker takes appends slower than clients send them: the Kafka
        connection waiting here is not read meanwhile)."""
        await self._appends.wait_for_room()
        stream = self._appends.stream
        if stream is not None:
            await stream.wait_writable()

    def submit_append(self, topic: str, partition: int, records: bytes,
                      acks: int) -> Waiter[pb.AppendReply] | None:
        """Queue an append now (order preserved); await the returned waiter for the reply.

        Returns None for acks=0, which gets no reply. Raises ``BrokerUnavailable``.
        """
        request = pb.AppendRequest(topic=topic, partition=partition, records=records, acks=acks)
        try:
            # Every append is answered (acks=0 too), so each counts as outstanding until it is.
            waiter = self._appends.submit(request, size=len(records))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # Not connected, or the stream failed under us: a retriable answer, not a dropped
            # Kafka connection.
            raise BrokerUnavailable(f"broker {self.address} append stream failed") from exc
        return None if acks == 0 else waiter

    async def fetch(self, request: pb.FetchRequest, *, wait_connected: bool = True
                    ) -> pb.FetchReply:
        """One fetch on the shared stream; cancelled, it tells the broker to drop it too.
        While the broker is away it waits for the reconnection (``CONNECT_WAIT_S``), or with
        ``wait_connected=False`` raises ``BrokerUnavailable`` at once: a cluster's gateway,
        whose partitions move to another leader meanwhile."""
        if wait_connected:
            await self.wait_connected()
        elif not self.connected:
            raise BrokerUnavailable(f"broker {self.address} is not connected")
        try:
            return await self._fetches.call(request, cancel=_cancel_fetch)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BrokerUnavailable(f"broker {self.address} fetch stream failed") from exc

    def note_file_ranges(self, *, opened: bool) -> None:
        """Count a fetch whose file ranges all opened (or not): after ``MAX_FILE_MISSES``
        misses in a row, stop asking for them."""
        if opened:
            self._file_misses = 0
            return
        self._file_misses += 1
        if self._file_misses >= MAX_FILE_MISSES and self.reads_files:
            self.reads_files = False
            log.warning("the broker's segment files cannot be opened here: fetching bytes "
                        "instead of sending from its files", extra={"broker": str(self.address)})

    # -- control ------------------------------------------------------------------------------

    async def call(self, method: grpc.Route[Any, Rep], request: Any, *,
                   timeout: float = 10.0) -> Rep:
        """A unary call of ``method`` (``BROKER.describe_topics``). Raises
        ``BrokerUnavailable`` when the broker cannot be reached (logged once per outage) and
        ``BrokerFailed`` when it answered with an error that retrying will not fix (logged
        with its traceback)."""
        assert self._channel is not None, "BrokerClient.run() not started"
        route = method
        try:
            # HTTP/2 allows the broker 100 concurrent streams: more calls wait here instead of
            # failing with TooManyStreamsError.
            async with self._calls:
                reply = await self._channel.call(route, request, timeout=timeout)
        except GRPCError as exc:
            if exc.status in _UNAVAILABLE:
                if exc.status != Status.ABORTED:  # ABORTED: reached, refused for its role
                    self._note_outage(exc)
                raise BrokerUnavailable(f"broker {self.address}: {exc.message}") from exc
            log.error("broker call failed", exc_info=True,
                      extra={"method": route.name, "status": exc.status.name})
            raise BrokerFailed(f"broker {route.name}: {exc.status.name} {exc.message}") from exc
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
            error = grpc.describe_failure(exc)
            if isinstance(exc, GRPCError) and exc.status == Status.UNAUTHENTICATED:
                error += " (give the gateway the broker's token: --broker-token-file)"
            log.warning("broker unreachable", extra={"broker": str(self.address),
                                                     "error": error})


def _on_this_host(address: grpc.Address) -> bool:
    """Whether ``address`` is a Unix socket or a loopback address (the broker's host)."""
    if address.path is not None:
        return True
    host = (address.host or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cancel_fetch(request_id: int) -> pb.FetchRequest:
    return pb.FetchRequest(request_id=request_id, cancel=True)
