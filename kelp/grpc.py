"""The one place where trio meets grpclib.

grpclib speaks asyncio only. Each kelp process runs trio at the root and opens a trio-asyncio
loop once (``trio_asyncio.open_loop()``); this module hides the crossings:

* ``serve`` runs a grpclib ``Server`` on TCP or a Unix socket until cancelled.
* ``Channel`` opens a client channel whose unary calls are plain trio awaitables.
* ``stream_handler`` lets a trio function own a bidirectional server stream: it receives
  ``recv()``/``send()`` trio callables and may run as many tasks as it likes in its own nursery.
* ``ClientStream`` owns one long-lived bidirectional client stream.
* ``service_mapping`` serves an implementation of a *generated* service base (``BrokerBase``,
  ``SidecarBase``) whose methods are trio functions; ``Routes`` names a generated service's
  methods for clients. Method paths and message types come from the generated code only, so
  a misspelt method is an error at start-up or at attribute lookup, never an UNIMPLEMENTED
  answered at run time.

Hot paths ride on long-lived streams (~30-60 us a message) rather than unary calls (~1-2 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpclib.client
import grpclib.const
import grpclib.events
import grpclib.server
import hyperframe.frame
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from kelp import cluster_token
from kelp.address import Address
from kelp.logs import RateLimited
from kelp.stream_wire import StreamCodec
from kelp.unix_socket import bind_unix

__all__ = ["Address", "Channel", "ClientStream", "Route", "Routes", "StreamSender", "serve",
           "service_mapping", "stream_handler", "unary_handler"]

# h2 formats every frame it receives for a trace log it then discards
# (``logger.trace("Received frame: %s", repr(frame))``): a DATA frame's repr serialised and
# hex-encoded its whole payload (11 % of the broker's CPU under produce load, measured with
# py-spy), and even the flags' and fields' formatting of the small frames cost ~1 % more. Its
# kind and stream are what a trace needs.
hyperframe.frame.Frame.__repr__ = (  # type: ignore[method-assign]
    lambda self: f"{type(self).__name__}(stream_id={self.stream_id})")

unauthenticated_log = RateLimited(logging.getLogger("kelp.grpc"), interval_s=1.0)

Req = TypeVar("Req")
Rep = TypeVar("Rep")


# How many received messages may wait for their trio reader, and how many bytes of outgoing
# messages (by their owners' size hints) may wait for HTTP/2: past these a stream pushes back.
MAX_INCOMING_MESSAGES = 16
MAX_OUTGOING_BYTES = 64 * 1024 * 1024


class _Pump:
    """Moves messages between a grpclib stream (asyncio) and trio without a crossing each.

    A crossing between trio and asyncio costs ~40-50 us; a stream message should cost less. So
    trio pushes outgoing messages into an asyncio queue with a plain synchronous call, an asyncio
    task sends them, and the receiving side pushes incoming messages into a trio channel (again
    synchronously: trio-asyncio runs asyncio callbacks inside trio). ``None`` marks the end.

    Both directions are bounded. Incoming: when the trio reader falls behind by
    ``MAX_INCOMING_MESSAGES``, the pump waits for it (one crossing), grpclib stops reading and
    HTTP/2 flow control holds the peer back. Outgoing: ``reserve`` makes a trio task wait until
    the bytes queued (or reserved) for sending leave room for what it is about to produce;
    ``send_nowait`` itself never blocks.
    """

    def __init__(self, stream: Any, max_outgoing_bytes: int = MAX_OUTGOING_BYTES) -> None:
        self._stream = stream
        self._outgoing: asyncio.Queue[tuple[Any, int]] = asyncio.Queue()
        self._incoming_send, self.incoming = trio.open_memory_channel[Any](MAX_INCOMING_MESSAGES)
        self.error: BaseException | None = None
        self.max_outgoing_bytes = max_outgoing_bytes
        self.pending_bytes = 0  # queued for sending, or reserved by a task about to send
        self._room = trio.Event()

    def send_nowait(self, message: Any, size: int = 0, reserved: int = 0) -> None:
        """Queue ``message`` (``size`` bytes by its owner's count; ``reserved`` of them were
        reserved with ``reserve`` and are now handed over to the queue)."""
        if self.error is not None:
            raise trio.BrokenResourceError(f"stream failed: {self.error!r}")
        self.pending_bytes += size - reserved
        self._outgoing.put_nowait((message, size))

    async def reserve(self, size: int) -> int:
        """Wait until ``size`` more bytes fit (a message larger than the bound waits for an
        empty queue), and reserve them; returns what was reserved. Give it back with
        ``send_nowait(..., reserved=)`` or ``release``."""
        size = max(size, 0)
        while self.pending_bytes and self.pending_bytes + size > self.max_outgoing_bytes:
            if self.error is not None:
                raise trio.BrokenResourceError(f"stream failed: {self.error!r}")
            await self._room.wait()
        self.pending_bytes += size
        return size

    def release(self, size: int) -> None:
        """Give back bytes reserved but not sent (synchronous: safe in a cancelled task)."""
        self.pending_bytes -= size
        self._wake()

    def writable(self) -> bool:
        """Whether the queued bytes are below the bound (or the stream failed: then sending
        raises at once rather than waiting)."""
        return self.pending_bytes < self.max_outgoing_bytes or self.error is not None

    async def wait_writable(self) -> None:
        """Until ``writable``."""
        while not self.writable():
            await self._room.wait()

    def _wake(self) -> None:
        # Only once there is room (or the stream failed): waking every waiter on each message
        # sent while still full is a thundering herd with thousands of them.
        if self.pending_bytes < self.max_outgoing_bytes or self.error is not None:
            room, self._room = self._room, trio.Event()
            room.set()

    async def recv(self) -> Any:
        try:
            return await self.incoming.receive()
        except trio.EndOfChannel:
            return None

    async def run(self) -> None:
        """The asyncio side: pump both directions until the stream ends, fails or is cancelled.

        A cancellation ends it normally: the trio task that runs it (through ``aio_as_trio``)
        then sees trio's own Cancelled at its next checkpoint, never asyncio's CancelledError.
        """
        with contextlib.suppress(asyncio.CancelledError):
            await self._run()

    async def _run(self) -> None:
        sender = asyncio.ensure_future(self._send_loop())
        deliver = trio_asyncio.trio_as_aio(self._incoming_send.send)
        try:
            while (message := await self._stream.recv_message()) is not None:
                try:
                    self._incoming_send.send_nowait(message)
                except trio.WouldBlock:  # the reader is behind: wait for it, push back
                    await deliver(message)
        except Exception as exc:  # the peer vanished: readers see the end and the error
            self.error = exc
        finally:
            self._incoming_send.close()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if self.error is None:  # ended cleanly: nothing queued will be sent any more
                self.error = EOFError("stream ended")
            self._wake()  # reservers and writers see the end instead of waiting forever

    async def _send_loop(self) -> None:
        try:
            while True:
                message, size = await self._outgoing.get()
                await self._stream.send_message(message)
                if size:
                    self.pending_bytes -= size
                    self._wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            self._wake()


class StreamSender:
    """The ``send`` a stream handler gets: ``send(reply)`` queues without blocking;
    ``await send.reserve(n)`` / ``send(reply, size=, reserved=)`` / ``send.release(n)`` bound
    the bytes waiting to go out (see ``_Pump``)."""

    def __init__(self, pump: _Pump) -> None:
        self._pump = pump

    def __call__(self, message: Any, size: int = 0, reserved: int = 0) -> None:
        self._pump.send_nowait(message, size, reserved)

    async def reserve(self, size: int) -> int:
        return await self._pump.reserve(size)

    def release(self, size: int) -> None:
        self._pump.release(size)


def connection_of(stream: grpclib.server.Stream) -> Any:
    """The HTTP/2 connection a call arrived on (grpclib's ``protocol.Connection``: one object
    for the connection's life, ``is_closing()`` once it is gone). grpclib names it only
    through the stream's private attribute; every call on one channel shares it."""
    return stream._stream.connection  # type: ignore[attr-defined]


def per_connection(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a service method that needs the caller's connection (``connection_of``): it is
    called with ``connection=`` as well (resources that belong to a client, as the
    sidecar's loans do)."""
    method.kelp_per_connection = True  # type: ignore[attr-defined]
    return method


def on_unsent(hook: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a unary method whose reply hands the caller a resource (a lent buffer's handle):
    when the reply is made but never sent (the caller gave up meanwhile), the service's method
    ``hook(reply, connection)`` takes the resource back, since nobody else knows of it."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method.kelp_on_unsent = hook  # type: ignore[attr-defined]
        return method

    return mark


def stream_handler(
    serve: Callable[..., Awaitable[None]],
    request_type: type,
    reply_type: type,
    *,
    with_connection: bool = False,
) -> grpclib.const.Handler:
    """Wrap a trio function ``serve(recv, send)`` as a grpclib bidi-stream handler.

    ``await recv()`` returns the next request or ``None`` at the end of the stream; ``send`` is
    a ``StreamSender``: ``send(reply)`` queues one reply (synchronous, never blocks). The pump
    runs as a task of a nursery this stream owns; when the peer goes away the end of stream
    reaches ``recv()`` and the stream's task is cancelled, which cancels ``serve`` and everything
    in its nurseries. ``with_connection``: ``serve`` also gets ``connection=``.
    """

    async def serve_stream(stream: grpclib.server.Stream) -> None:
        pump = _Pump(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_asyncio.aio_as_trio(pump.run))
            try:
                if with_connection:
                    await serve(pump.recv, StreamSender(pump), connection=connection_of(stream))
                else:
                    await serve(pump.recv, StreamSender(pump))
            finally:
                nursery.cancel_scope.cancel()

    async def handle(stream: grpclib.server.Stream) -> None:
        await trio_asyncio.trio_as_aio(serve_stream)(stream)

    return grpclib.const.Handler(
        handle, grpclib.const.Cardinality.STREAM_STREAM, request_type, reply_type
    )


def unary_handler(
    call: Callable[..., Awaitable[Any]], request_type: type, reply_type: type, *,
    with_connection: bool = False, unsent: Callable[[Any, Any], None] | None = None,
) -> grpclib.const.Handler:
    """Wrap a trio function ``call(request) -> reply`` as a grpclib unary handler
    (``with_connection``: ``call(request, connection=)``; ``unsent(reply, connection)``: see
    ``on_unsent``)."""

    async def handle(stream: grpclib.server.Stream) -> None:
        request = await stream.recv_message()
        connection = connection_of(stream) if with_connection or unsent else None
        made: list[Any] = []  # the reply, kept even if the crossing back is cancelled

        async def answer(request: Any) -> Any:
            reply = await (call(request, connection=connection) if with_connection
                           else call(request))
            made.append(reply)
            return reply

        sent = False
        try:
            reply = await trio_asyncio.trio_as_aio(answer)(request)
            # A caller that gave up as the reply was ready makes this raise; grpclib's log of
            # it is filtered as the peer going away (kelp.logs).
            await stream.send_message(reply)
            sent = True
        finally:
            if not sent and made and unsent is not None:
                unsent(made[0], connection)

    return grpclib.const.Handler(
        handle, grpclib.const.Cardinality.UNARY_UNARY, request_type, reply_type
    )


@dataclass(frozen=True)
class Route(Generic[Req, Rep]):
    """One method of a generated service: its path, cardinality and message types."""

    path: str  # "/package.Service/Method"
    name: str  # the generated Python name, e.g. "open_read"
    cardinality: grpclib.const.Cardinality
    request_type: type[Req]
    reply_type: type[Rep]


# The generated base serves each method through a private ``__rpc_<name>`` method.
_RPC_PREFIX = "__rpc_"


def _generated_base(cls: type) -> type:
    """The generated service base ``cls`` is (or derives from): the class whose own
    ``__mapping__`` lists the service's routes."""
    for klass in cls.__mro__:
        if "__mapping__" in vars(klass):
            return klass
    raise TypeError(f"{cls.__name__} is not a generated gRPC service base (no __mapping__)")


@functools.cache
def routes_of(base: type) -> tuple[Route[Any, Any], ...]:
    """The routes a generated service base declares, in its order."""
    generated = _generated_base(base)
    found = []
    for path, handler in generated.__mapping__(generated()).items():
        name = handler.func.__name__
        if not name.startswith(_RPC_PREFIX):
            raise TypeError(f"{generated.__name__}: unexpected handler {name} for {path}")
        found.append(Route(path, name[len(_RPC_PREFIX):], handler.cardinality,
                           handler.request_type, handler.reply_type))
    return tuple(found)


class Routes:
    """A generated service's methods as attributes (``Routes(BrokerBase).open_read``): a
    misspelt method is an ``AttributeError`` where it is written."""

    def __init__(self, base: type) -> None:
        self._base = _generated_base(base)
        for route in routes_of(self._base):
            setattr(self, route.name, route)

    def __getattr__(self, name: str) -> Route[Any, Any]:  # only for names that are not routes
        known = [route.name for route in routes_of(self._base)]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AttributeError(f"{self._base.__name__} has no method {name!r}{hint}")

    def __iter__(self) -> Any:
        return iter(routes_of(self._base))


def service_mapping(implementation: Any) -> dict[str, grpclib.const.Handler]:
    """The grpclib handlers of ``implementation``, an instance of a subclass of a generated
    service base whose methods (the generated names) are trio functions: unary ones take the
    request and return the reply; stream-stream ones are ``serve(recv, send)`` as in
    ``stream_handler``. Methods marked ``per_connection`` also get ``connection=``.

    Every route must be implemented: a method left to the generated base (or misspelt in the
    subclass) is a ``TypeError`` here, at start-up.
    """
    generated = _generated_base(type(implementation))
    mapping: dict[str, grpclib.const.Handler] = {}
    missing = []
    for route in routes_of(generated):
        if getattr(type(implementation), route.name) is vars(generated).get(route.name):
            missing.append(route.name)
            continue
        method = getattr(implementation, route.name)
        options: dict[str, Any] = {
            "with_connection": getattr(method, "kelp_per_connection", False)}
        hook = getattr(method, "kelp_on_unsent", None)
        if route.cardinality is grpclib.const.Cardinality.UNARY_UNARY:
            wrap = unary_handler
            if hook is not None:
                options["unsent"] = getattr(implementation, hook)
        elif route.cardinality is grpclib.const.Cardinality.STREAM_STREAM and hook is None:
            wrap = stream_handler
        elif hook is not None:  # a stream's replies are its own: nothing to give back
            raise TypeError(f"{route.path}: on_unsent applies to unary methods only")
        else:  # no such method in kelp's contracts yet: add an adapter before using one
            raise TypeError(f"{route.path}: no trio adapter for {route.cardinality.name}")
        mapping[route.path] = wrap(method, route.request_type, route.reply_type, **options)
    if missing:
        named = ", ".join(f"{generated.__name__}.{name}" for name in missing)
        raise TypeError(f"{type(implementation).__name__} does not implement {named}")
    return mapping


class _Service:
    """A grpclib service built from an explicit ``{path: Handler}`` mapping."""

    def __init__(self, mapping: dict[str, grpclib.const.Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


def server_tls(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context for gRPC over TLS (HTTP/2 is negotiated with ALPN)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["h2"])
    return context


def client_tls(cafile: str | None) -> ssl.SSLContext:
    """A client context that verifies the server against ``cafile`` (or the system's CAs)."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2"])
    return context


def _require_token(server: grpclib.server.Server, token: str) -> None:
    """Every call must carry the cluster token (``kelp.cluster_token``); others are answered
    UNAUTHENTICATED without reaching their handler."""

    async def refuse(stream: grpclib.server.Stream) -> None:
        raise GRPCError(Status.UNAUTHENTICATED, "kelp: this call needs the cluster token")

    async def check(event: grpclib.events.RecvRequest) -> None:
        if not cluster_token.matches(token, event.metadata.get(cluster_token.METADATA_KEY)):
            unauthenticated_log.warning("gRPC call without the cluster token refused",
                                        method=event.method_name, peer=str(event.peer.addr()))
            event.method_func = refuse

    grpclib.events.listen(server, grpclib.events.RecvRequest, check)


async def serve(
    mapping: dict[str, grpclib.const.Handler],
    address: Address,
    *,
    tls: ssl.SSLContext | None = None,
    token: str | None = None,
    socket_mode: int = 0o600,
    socket_gid: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the handlers on ``address`` until cancelled (over TLS with ``tls``, for callers
    on other hosts; only to callers with the cluster ``token`` when given). Needs a
    trio-asyncio loop. A Unix socket gets ``socket_mode`` (and ``socket_gid``) explicitly: it
    is created under umask 0177, so it is never reachable by others before the chmod."""
    server = grpclib.server.Server([_Service(mapping)], codec=StreamCodec())
    if token is not None:
        _require_token(server, token)
    if address.path:
        listener = bind_unix(address.path, mode=socket_mode, gid=socket_gid)
        try:
            await trio_asyncio.aio_as_trio(server.start)(sock=listener)
        except BaseException:
            listener.close()
            raise
    else:
        await trio_asyncio.aio_as_trio(server.start)(address.host, address.port, ssl=tls)
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            server.close()
            await trio_asyncio.aio_as_trio(server.wait_closed)()
        if address.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.path)


def describe_failure(exc: BaseException) -> str:
    """A failed call's cause in words for a log line or an error reply (grpclib says only
    "Connect call failed" for a refused connection)."""
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno).lower()}: {exc}"
    return str(exc) or type(exc).__name__


class Channel:
    """A client channel; ``call`` makes a unary call from trio."""

    def __init__(self, address: Address, tls: ssl.SSLContext | None = None,
                 token: str | None = None) -> None:
        self.address = address
        if address.path:
            self._channel = grpclib.client.Channel(path=address.path, codec=StreamCodec())
        else:
            self._channel = grpclib.client.Channel(address.host, address.port, ssl=tls,
                                                   codec=StreamCodec())
        if token is not None:  # every call carries the cluster token
            async def add_token(event: grpclib.events.SendRequest) -> None:
                event.metadata[cluster_token.METADATA_KEY] = token

            grpclib.events.listen(self._channel, grpclib.events.SendRequest, add_token)

    async def call(self, route: Route[Any, Rep], request: Any, *, timeout: float = 10.0
                   ) -> Rep:
        """A unary call of ``route`` (``kelp.routes.BROKER.open_read``); raises
        ``TimeoutError`` without an answer in ``timeout`` seconds.

        The deadline is trio's, not grpclib's: a grpclib deadline is an asyncio timer on both
        ends, and trio-asyncio keeps a cancelled timer until it falls due, so every call woke
        both processes once more, ``timeout`` seconds later. On an idle kelp those wake-ups
        were most of the CPU. Leaving the scope resets the stream, which cancels the handler.
        """
        with trio.move_on_after(timeout):
            return await trio_asyncio.aio_as_trio(self._unary)(route.path, request,
                                                               route.reply_type)
        raise TimeoutError(f"{route.path}: no answer within {timeout:g} s")

    async def _unary(self, path: str, request: Any, reply_type: type) -> Any:
        try:
            async with self._channel.request(
                path, grpclib.const.Cardinality.UNARY_UNARY, type(request), reply_type
            ) as stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
                return reply
        except AttributeError as exc:
            # grpclib opening a stream on a connection its peer has just closed (the
            # connection's transport is already gone): a lost connection like any other.
            if "_transport" not in str(exc):
                raise
            raise StreamTerminatedError("Connection lost") from exc

    @contextlib.asynccontextmanager
    async def open_stream(self, route: Route[Req, Rep]
                          ) -> AsyncIterator[ClientStream[Req, Rep]]:
        """Open a long-lived bidirectional stream of ``route``; leaving the context ends it."""
        cm = self._channel.request(route.path, grpclib.const.Cardinality.STREAM_STREAM,
                                   route.request_type, route.reply_type)
        stream = await trio_asyncio.aio_as_trio(cm.__aenter__)()
        try:
            await trio_asyncio.aio_as_trio(stream.send_request)()
            pump = _Pump(stream)
            async with trio.open_nursery() as nursery:  # owns the pump for the stream's life
                nursery.start_soon(trio_asyncio.aio_as_trio(pump.run))
                try:
                    yield ClientStream(pump)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            # Cancelled half-open (the request not even sent), or the peer gone: the stream's
            # own teardown may complain; there is nothing left to save.
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                with contextlib.suppress(Exception):
                    await trio_asyncio.aio_as_trio(stream.cancel)()
                with contextlib.suppress(Exception):
                    await trio_asyncio.aio_as_trio(cm.__aexit__)(None, None, None)

    def close(self) -> None:
        self._channel.close()


class ClientStream(Generic[Req, Rep]):
    """One open bidi stream: ``send`` never blocks and may be called from any trio task;
    ``recv`` (one reader) returns the next reply, or ``None`` once the stream has ended."""

    def __init__(self, pump: _Pump) -> None:
        self._pump = pump

    def send(self, message: Req, size: int = 0) -> None:
        """Queue ``message`` (``size``: its bytes, counted against the outgoing bound)."""
        self._pump.send_nowait(message, size)

    async def wait_writable(self) -> None:
        """Until the bytes queued for sending are below the bound (backpressure)."""
        await self._pump.wait_writable()

    def writable(self) -> bool:
        """Whether ``wait_writable`` would return at once."""
        return self._pump.writable()

    async def recv(self) -> Rep | None:
        return await self._pump.recv()

    @property
    def error(self) -> BaseException | None:
        return self._pump.error
