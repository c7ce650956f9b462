"""The one place where trio meets grpclib.

grpclib speaks asyncio only. Each kelp process runs trio at the root and opens a trio-asyncio
loop once (``trio_asyncio.open_loop()``); this module hides the crossings:

* ``serve`` runs a grpclib ``Server`` on TCP or a Unix socket until cancelled.
* ``Channel`` opens a client channel whose unary calls are plain trio awaitables.
* ``StreamHandler`` lets a trio function own a bidirectional server stream: it receives
  ``recv()``/``send()`` trio callables and may run as many tasks as it likes in its own nursery.
* ``ClientStream`` owns one long-lived bidirectional client stream.

Hot paths ride on long-lived streams (~30-60 us a message) rather than unary calls (~1-2 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
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


class _Pump:
    """Moves messages between a grpclib stream (asyncio) and trio without a crossing each.

    A crossing between trio and asyncio costs ~40-50 us; a stream message should cost less. So
    trio pushes outgoing messages into an asyncio queue with a plain synchronous call, an asyncio
    task sends them, and another asyncio task pushes incoming messages into a trio channel (again
    synchronously: trio-asyncio runs asyncio callbacks inside trio). ``None`` marks the end.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self._incoming_send, self.incoming = trio.open_memory_channel[Any](math.inf)
        self.error: BaseException | None = None

    def send_nowait(self, message: Any) -> None:
        if self.error is not None:
            raise trio.BrokenResourceError(f"stream failed: {self.error!r}")
        self._outgoing.put_nowait(message)

    async def recv(self) -> Any:
        try:
            return await self.incoming.receive()
        except trio.EndOfChannel:
            return None

    async def run(self) -> None:
        """The asyncio side: pump both directions until the stream ends or fails."""
        sender = asyncio.ensure_future(self._send_loop())
        try:
            while (message := await self._stream.recv_message()) is not None:
                self._incoming_send.send_nowait(message)
        except Exception as exc:  # the peer vanished: readers see the end and the error
            self.error = exc
        finally:
            self._incoming_send.close()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._stream.send_message(await self._outgoing.get())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc


def stream_handler(
    serve: Callable[[Callable[[], Awaitable[Any]], Callable[[Any], None]], Awaitable[None]],
    request_type: type,
    reply_type: type,
) -> grpclib.const.Handler:
    """Wrap a trio function ``serve(recv, send)`` as a grpclib bidi-stream handler.

    ``await recv()`` returns the next request or ``None`` at the end of the stream; ``send(reply)``
    queues one reply (synchronous, never blocks). When the peer goes away the end of stream
    reaches ``recv()`` and the stream's asyncio task is cancelled, which cancels ``serve`` and
    everything in its nurseries.
    """

    async def handle(stream: grpclib.server.Stream) -> None:
        pump = _Pump(stream)
        pumping = asyncio.ensure_future(pump.run())
        try:
            await trio_asyncio.trio_as_aio(serve)(pump.recv, pump.send_nowait)
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping

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
        pumping = None
        try:
            await trio_asyncio.aio_as_trio(stream.send_request)()
            pump = _Pump(stream)
            pumping = asyncio.ensure_future(pump.run())
            yield ClientStream(pump)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                if pumping is not None:
                    pumping.cancel()
                await trio_asyncio.aio_as_trio(stream.cancel)()
                await trio_asyncio.aio_as_trio(cm.__aexit__)(None, None, None)

    def close(self) -> None:
        self._channel.close()


class ClientStream(Generic[Req, Rep]):
    """One open bidi stream: ``send`` never blocks and may be called from any trio task;
    ``recv`` (one reader) returns the next reply, or ``None`` once the stream has ended."""

    def __init__(self, pump: _Pump) -> None:
        self._pump = pump

    def send(self, message: Req) -> None:
        self._pump.send_nowait(message)

    async def recv(self) -> Rep | None:
        return await self._pump.recv()

    @property
    def error(self) -> BaseException | None:
        return self._pump.error
