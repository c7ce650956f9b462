"""The one place where trio meets grpclib.

grpclib speaks asyncio only. Each kelp process runs trio at the root and opens a trio-asyncio
loop once (``trio_asyncio.open_loop()``); this module hides the crossings:

* ``serve`` runs a grpclib ``Server`` on TCP or a Unix socket until cancelled.
* ``Channel`` opens a client channel whose unary calls are plain trio awaitables.
* ``stream_handler`` lets a trio function own a bidirectional server stream: it receives
  ``recv()``/``send()`` trio callables and may run as many tasks as it likes in its own nursery.
* ``ClientStream`` owns one long-lived bidirectional client stream.

Hot paths ride on long-lived streams (~30-60 us a message) rather than unary calls (~1-2 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpclib.client
import grpclib.const
import grpclib.server
import hyperframe.frame
import trio
import trio_asyncio

# h2 formats every frame it receives for a trace log it then discards
# (``logger.trace("Received frame: %s", repr(frame))``), and a DATA frame's repr serialises
# and hex-encodes its whole payload: 11 % of the broker's CPU under produce load, measured
# with py-spy. A DATA frame's repr only needs its size.
hyperframe.frame.DataFrame._body_repr = lambda self: f"data=<{len(self.data)} bytes>"

Req = TypeVar("Req")
Rep = TypeVar("Rep")


@dataclass(frozen=True)
class Address:
    """A gRPC endpoint: ``host:port`` or ``unix:/path/to.sock``."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        if text.startswith("unix:"):
            return cls(path=text[len("unix:") :])
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port or unix:/path, got {text!r}")
        return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


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

    async def wait_writable(self) -> None:
        """Until the queued bytes are below the bound."""
        while self.pending_bytes >= self.max_outgoing_bytes and self.error is None:
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


def stream_handler(
    serve: Callable[[Callable[[], Awaitable[Any]], Any], Awaitable[None]],
    request_type: type,
    reply_type: type,
) -> grpclib.const.Handler:
    """Wrap a trio function ``serve(recv, send)`` as a grpclib bidi-stream handler.

    ``await recv()`` returns the next request or ``None`` at the end of the stream; ``send`` is
    a ``StreamSender``: ``send(reply)`` queues one reply (synchronous, never blocks). The pump
    runs as a task of a nursery this stream owns; when the peer goes away the end of stream
    reaches ``recv()`` and the stream's task is cancelled, which cancels ``serve`` and everything
    in its nurseries.
    """

    async def serve_stream(stream: grpclib.server.Stream) -> None:
        pump = _Pump(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_asyncio.aio_as_trio(pump.run))
            try:
                await serve(pump.recv, StreamSender(pump))
            finally:
                nursery.cancel_scope.cancel()

    async def handle(stream: grpclib.server.Stream) -> None:
        await trio_asyncio.trio_as_aio(serve_stream)(stream)

    return grpclib.const.Handler(
        handle, grpclib.const.Cardinality.STREAM_STREAM, request_type, reply_type
    )


def unary_handler(
    call: Callable[[Any], Awaitable[Any]], request_type: type, reply_type: type
) -> grpclib.const.Handler:
    """Wrap a trio function ``call(request) -> reply`` as a grpclib unary handler."""

    async def handle(stream: grpclib.server.Stream) -> None:
        request = await stream.recv_message()
        reply = await trio_asyncio.trio_as_aio(call)(request)
        # A caller that gave up as the reply was ready makes this raise; grpclib's log of it
        # is filtered as the peer going away (kelp.logs).
        await stream.send_message(reply)

    return grpclib.const.Handler(
        handle, grpclib.const.Cardinality.UNARY_UNARY, request_type, reply_type
    )


class _Service:
    """A grpclib service built from an explicit ``{path: Handler}`` mapping."""

    def __init__(self, mapping: dict[str, grpclib.const.Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


async def serve(
    mapping: dict[str, grpclib.const.Handler],
    address: Address,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the handlers on ``address`` until cancelled. Needs a trio-asyncio loop."""
    server = grpclib.server.Server([_Service(mapping)])
    if address.path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.path)
        await trio_asyncio.aio_as_trio(server.start)(path=address.path)
    else:
        await trio_asyncio.aio_as_trio(server.start)(address.host, address.port)
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


class Channel:
    """A client channel; ``call`` makes a unary call from trio."""

    def __init__(self, address: Address) -> None:
        self.address = address
        if address.path:
            self._channel = grpclib.client.Channel(path=address.path)
        else:
            self._channel = grpclib.client.Channel(address.host, address.port)

    async def call(
        self, path: str, request: Any, reply_type: type, *, timeout: float = 10.0
    ) -> Any:
        return await trio_asyncio.aio_as_trio(self._unary)(path, request, reply_type, timeout)

    async def _unary(self, path: str, request: Any, reply_type: type, timeout: float) -> Any:
        async with self._channel.request(
            path, grpclib.const.Cardinality.UNARY_UNARY, type(request), reply_type, timeout=timeout
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
            return reply

    @contextlib.asynccontextmanager
    async def open_stream(
        self, path: str, request_type: type[Req], reply_type: type[Rep]
    ) -> AsyncIterator[ClientStream[Req, Rep]]:
        """Open a long-lived bidirectional stream; leaving the context ends it."""
        cm = self._channel.request(
            path, grpclib.const.Cardinality.STREAM_STREAM, request_type, reply_type
        )
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

    async def recv(self) -> Rep | None:
        return await self._pump.recv()

    @property
    def error(self) -> BaseException | None:
        return self._pump.error
