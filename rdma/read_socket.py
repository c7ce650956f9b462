"""The sidecar's read socket: :mod:`rdma.wire` frames over a Unix socket, both ends.

The sidecar serves it next to its gRPC socket (``--read-socket``); each connection is one
client of the buffer pool, like a gRPC connection, running the same read conversation
(:meth:`rdma.sidecar.Sidecar.serve_read_stream`), and everything it still has lent comes back
when it closes. The mount opens one connection and multiplexes its reads over it
(:class:`ReadSocketStream` fits :class:`kelp.mux.Multiplexed`).

Speed comes from doing less, not from cleverness: a frame is sent from the task that makes it
with a non-blocking ``send`` (a background flusher takes over only when the socket is full),
and received with a non-blocking ``recv`` before any wait, so a read costs about one scheduler
round and one epoll wake-up at each end.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import select
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from kelp.rpc.sidecar import v1 as sidecar_pb
from kelp.unix_socket import bind_unix
from rdma import wire

if TYPE_CHECKING:
    from rdma.sidecar import Sidecar

log = logging.getLogger("kelp.sidecar")

RECEIVE_BYTES = 256 * 1024
# Bytes queued for a peer that does not read: past this it is cut off (a reader's own queue
# is bounded by its outstanding reads, so only a broken or hostile peer gets near it).
MAX_QUEUED_BYTES = 4 * 1024 * 1024
BACKLOG = 64
UNBROKEN_STEPS = 8  # frames or receives without a wait before one yields to the other tasks


class FramedSocket:
    """One connected Unix socket: ``send`` never blocks, ``receive`` yields frame bodies.

    Close it with :meth:`close` (synchronous: safe in a ``finally`` being cancelled)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._queued = bytearray()
        self._has_queued = trio.Event()
        self._frames = wire.FrameBuffer()
        self._unbroken = 0  # frames and receives in a row that needed no wait
        self._poller: select.poll | None = None  # receive_ready's, once it is used
        self.error: str | None = None

    def send(self, frame: bytes) -> None:
        """Send ``frame`` now, or queue what the socket does not take for :meth:`flush`.
        Raises ``trio.BrokenResourceError`` once the socket has failed."""
        if self.error is not None:
            raise trio.BrokenResourceError(self.error)
        if not self._queued:
            try:
                sent = self._sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(f"send: {exc}")
                raise trio.BrokenResourceError(self.error) from None
            if sent == len(frame):
                return
            frame = frame[sent:]
        if len(self._queued) + len(frame) > MAX_QUEUED_BYTES:
            self._fail(f"peer left over {MAX_QUEUED_BYTES} bytes unread")
            raise trio.BrokenResourceError(self.error)
        self._queued += frame
        self._has_queued.set()

    async def flush(self) -> None:
        """Run for the socket's life: write out what :meth:`send` had to queue."""
        while True:
            await self._has_queued.wait()
            self._has_queued = trio.Event()
            while self._queued:
                await trio.lowlevel.wait_writable(self._sock)
                try:
                    sent = self._sock.send(self._queued)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._fail(f"send: {exc}")
                    return
                del self._queued[:sent]

    async def receive(self) -> bytes | None:
        """The next frame body; None when the peer has closed (mid-frame is an error).

        A cancel point only before it takes anything: a frame taken is never lost."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            body = self._frames.next()
            if body is not None:
                await self._take_turns()
                return body
            try:
                data = self._sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                self._unbroken = 0
                try:
                    await trio.lowlevel.wait_readable(self._sock)
                except trio.ClosedResourceError:  # aborted meanwhile: say why
                    raise trio.BrokenResourceError(self.error) from None
                continue
            except OSError as exc:
                self._fail(f"receive: {exc}")
                raise trio.BrokenResourceError(self.error) from None
            if not data:
                if self._frames.buffered:
                    raise wire.WireError("connection closed inside a frame")
                return None
            self._frames.feed(data)
            await self._take_turns()

    def receive_ready(self, timeout_ms: int) -> list[bytes]:
        """The whole frames already here or arriving within ``timeout_ms`` (poll counts in
        milliseconds), waited for in place: blocking the thread, not in trio's loop. For a
        lone small read answered within a millisecond, the trip through trio's scheduler and
        a receiving task costs as much again. The work is bounded: one wait, then one
        receive of at most ``RECEIVE_BYTES``. Empty when nothing came, when this socket
        still holds queued bytes (the request is not out: nothing can come) or when the
        peer closed (:meth:`receive` sees the close too); a failure or a malformed frame
        ends the connection, and the task in :meth:`receive` gets its reason."""
        if self.error is not None or self._queued:
            return []
        try:
            bodies = self._whole_frames()
            if bodies:
                return bodies
            if self._poller is None:  # made once: this is a hot path
                self._poller = select.poll()
                self._poller.register(self._sock, select.POLLIN)
            if not self._poller.poll(timeout_ms):
                return []
            data = self._sock.recv(RECEIVE_BYTES)
            if not data:
                return []
            self._frames.feed(data)
            return self._whole_frames()
        except BlockingIOError:
            return []
        except (OSError, wire.WireError) as exc:
            # The replies taken before it are dropped with the connection: its end fails
            # every read still waiting.
            self.abort(f"receive: {exc}")
            return []

    def _whole_frames(self) -> list[bytes]:
        bodies = []
        while (body := self._frames.next()) is not None:
            bodies.append(body)
        return bodies

    async def _take_turns(self) -> None:
        # A peer that never pauses must not starve the other tasks, but a yield per frame
        # costs a trip round the scheduler per read: yield after a few steps without a wait.
        # Shielded, so a frame already taken is never dropped by a cancel.
        self._unbroken += 1
        if self._unbroken >= UNBROKEN_STEPS:
            self._unbroken = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why

    def abort(self, why: str) -> None:
        """Fail the connection for ``why`` and close it (what the other end broke)."""
        self._fail(why)
        self.close()

    def close(self) -> None:
        self._fail("closed")
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()


# -- the sidecar's side -------------------------------------------------------------------------

async def serve(sidecar: Sidecar, path: Path, *, mode: int = 0o600, gid: int | None = None,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the read socket at ``path`` until cancelled; removes the socket file on the way
    out."""
    listener = bind_unix(path, mode=mode, gid=gid, backlog=BACKLOG)
    numbers = itertools.count(1)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                except OSError as exc:  # out of descriptors: wait rather than spin
                    if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                         errno.ENOMEM):
                        raise
                    log.warning("read socket cannot accept", extra={"error": str(exc)})
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_serve_connection, sidecar, FramedSocket(sock),
                                   f"read-socket-{next(numbers)}")
    finally:
        trio.lowlevel.notify_closing(listener)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _serve_connection(sidecar: Sidecar, conn: FramedSocket, name: str) -> None:
    pool = sidecar.reader.pool
    account = pool.account_for(conn, lambda: name)
    problem: list[str] = []  # why the connection was cut, when it was the reader's fault

    async def recv() -> sidecar_pb.ReadRequest | None:
        # A malformed frame or a failed socket ends this reader's stream like a close does
        # (its reads in progress are cancelled, its loans come back below); nobody else's.
        try:
            body = await conn.receive()
            return None if body is None else wire.decode_read(body)
        except (wire.WireError, trio.BrokenResourceError) as exc:
            problem.append(str(exc))
            return None

    def send(reply: sidecar_pb.ReadReply) -> None:
        # A reader that went away mid-read: the loan comes back with its account below.
        with contextlib.suppress(trio.BrokenResourceError):
            conn.send(wire.encode_reply(reply))

    try:
        with contextlib.suppress(trio.BrokenResourceError):
            conn.send(wire.encode_hello(pool.share, str(pool.path)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.flush)
            await sidecar.serve_read_stream(recv, send, account=account,
                                            counter="read_socket_requests")
            nursery.cancel_scope.cancel()
    finally:
        pool.close_account(account)
        conn.close()
    if problem:
        log.warning("read socket client dropped", extra={"client": name, "error": problem[0]})


# -- the reader's side --------------------------------------------------------------------------

class ReadSocketStream:
    """The mount's end: ``send`` a ``ReadRequest`` (never blocks), ``recv`` the next
    ``ReadReply`` (None once the sidecar has closed). ``hello`` is what the sidecar said on
    connecting: the pool to map and this connection's share of it."""

    def __init__(self, conn: FramedSocket, hello: wire.Hello) -> None:
        self._conn = conn
        self.hello = hello
        # The most bytes a read may have copied into its reply: what the sidecar announced
        # (Capabilities.read_socket_copy_max), set by the reader; 0: every read is lent.
        self.copy_max = 0

    def send(self, message: sidecar_pb.ReadRequest, size: int = 0) -> None:
        self._conn.send(wire.encode_read(message, copy_max=self.copy_max))

    async def recv(self) -> sidecar_pb.ReadReply | None:
        body = await self._conn.receive()
        return None if body is None else wire.decode_reply(body, self.hello.pool_path)

    def recv_ready(self, timeout_ms: int) -> list[sidecar_pb.ReadReply]:
        """The replies here or arriving within ``timeout_ms``, waited for in place (see
        :meth:`FramedSocket.receive_ready`)."""
        replies = []
        for body in self._conn.receive_ready(timeout_ms):
            try:
                replies.append(wire.decode_reply(body, self.hello.pool_path))
            except wire.WireError as exc:
                # As if recv had met it: the connection ends, with this reason.
                self._conn.abort(f"malformed reply: {exc}")
                return []
        return replies


@contextlib.asynccontextmanager
async def connect(path: str) -> AsyncIterator[ReadSocketStream]:
    """A connection to the read socket at ``path``, closed (with its flusher) on exit."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:  # a full backlog: wait for the sidecar to accept
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error)) from None
    except BaseException:
        sock.close()
        raise
    conn = FramedSocket(sock)
    try:
        with trio.fail_after(5):
            body = await conn.receive()
        if body is None:
            raise wire.WireError("the sidecar closed the read socket before saying hello")
        stream = ReadSocketStream(conn, wire.decode_hello(body))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.flush)
            yield stream
            nursery.cancel_scope.cancel()
    finally:
        conn.close()
