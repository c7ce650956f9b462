"""Endpoints (connections to one peer worker), listeners and remote keys.

An `Endpoint` is made by `Worker.connect` (client side, to a listener's ``host:port``) or by a
`Listener` (server side). `Endpoint.get` is an ``async`` method that returns when UCX reports
the GET complete; it is a trio checkpoint, and cancelling it abandons the wait — never the
memory, which stays referenced until UCX lets go of it.

Failure model: when the peer dies or resets the connection, UCX calls the endpoint's error
callback. From then on the endpoint is *failed*: operations waiting on it raise `PeerError` at
once (UCX itself does not always complete them — over tcp with error mode NONE it leaves them
pending for ever), new operations raise immediately, and the worker force-closes the handle.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from rdma.ucx import errors
from rdma.ucx.errors import PeerError, UcxError
from rdma.ucx.memory import Descriptor, MemoryRegion

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from rdma.ucx._connections import Connections


@dataclass(frozen=True)
class Lane:
    """One lane from ``ucp_ep_print_info``: transport, device and what UCX uses it for.

    ``uses`` holds UCX's lane tags: ``am``, ``wireup``, ``rma``, ``rma_bw``, ``amo``, ``cm``…
    A GET is carried by the lane tagged ``rma_bw`` (bulk) or ``rma`` (short).
    """

    transport: str
    device: str
    uses: tuple[str, ...]


_LANE = re.compile(r"lane\[\d+\]:\s+\d+:(?P<tl>[\w-]+)/(?P<dev>\S+?)\.\d+\s(?P<rest>.*)$")
_CM_LANE = re.compile(r"lane\[\d+\]:\s+cm\s+(?P<tl>\S+)")


def parse_lanes(info: str) -> list[Lane]:
    """Lanes from the text of ``ucp_ep_print_info`` (format of UCX 1.13 … 1.22)."""
    lanes = []
    for line in info.splitlines():
        if m := _CM_LANE.search(line):
            lanes.append(Lane(m["tl"], "", ("cm",)))
        elif m := _LANE.search(line):
            # The tail is "md[..] -> md[..]/tl/sysdev[..] seg N rma_bw#0 am wireup"; keep the tags.
            rest = m["rest"].split(" seg ", 1)[-1].split()[1:]
            uses = tuple(tag.split("#", 1)[0] for tag in rest)
            lanes.append(Lane(m["tl"], m["dev"], uses))
    return lanes


def encode_sockaddr(host: str, port: int) -> bytes:
    """A ``struct sockaddr_in``/``sockaddr_in6`` for a numeric host, as bytes."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, packed)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        raise ValueError(f"{host!r} is not a numeric IPv4/IPv6 address") from None
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", port, 0, packed, 0)


def decode_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """``(host, port)`` from the bytes of a ``sockaddr_storage``; None if not IPv4/IPv6."""
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET:
        port, addr = struct.unpack_from("!H4s", raw, 2)
        return socket.inet_ntop(socket.AF_INET, addr), port
    if family == socket.AF_INET6:
        port, _flow, addr = struct.unpack_from("!HI16s", raw, 2)
        return socket.inet_ntop(socket.AF_INET6, addr), port
    return None


class RemoteKey:
    """Remote memory reachable through one endpoint: an unpacked rkey plus the region bounds.

    Made by `Endpoint.import_key`. Offsets given to `Endpoint.get`/`put` are relative to the
    exported region and checked against its length before UCX sees them.
    """

    def __init__(self, endpoint: Endpoint, handle: Any, address: int, length: int) -> None:
        self.endpoint = endpoint
        self._handle = handle
        self.address = address
        self.length = length

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _checked(self, offset: int, size: int) -> int:
        if self._handle is None:
            raise UcxError(errors.INVALID_PARAM, "remote key", "remote key is closed")
        if offset < 0 or size < 0 or offset + size > self.length:
            raise ValueError(
                f"range {offset}+{size} is outside the remote region of {self.length} bytes"
            )
        return self.address + offset

    def close(self) -> None:
        """Destroy the unpacked key (``ucp_rkey_destroy``). Idempotent."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self.endpoint._worker._binding.lib.ucp_rkey_destroy(handle)
            self.endpoint._rkeys.discard(self)

    def __repr__(self) -> str:
        return f"<RemoteKey {self.length} bytes at {self.address:#x}>"


class Endpoint:
    """A connection to one peer worker. See the module docstring for the failure model."""

    def __init__(self, worker: Connections, handle: Any, ident: int, *, error_mode: str) -> None:
        self._worker = worker
        self._handle: Any = handle  # None once ucp_ep_close_nbx was called
        self.ident = ident
        self.error_mode = error_mode
        self.error: UcxError | None = None
        self._ops: set[int] = set()  # tokens of in-flight requests
        self._rkeys: set[RemoteKey] = set()
        self._closed = trio.Event()

    # -- state --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _live_handle(self) -> Any:
        if self.error is not None:
            raise self.error
        if self._handle is None:
            raise UcxError(errors.NOT_CONNECTED, "endpoint", "endpoint is closed")
        return self._handle

    def _fail(self, status: int) -> None:
        """Called from UCX's error callback: record, wake waiters, schedule a force close."""
        if self.error is None:
            self.error = PeerError(status, "endpoint", self._worker._status_text(status))
        self._worker._fail_ops(self._ops, self.error)
        self._worker._schedule_close(self)

    # -- introspection ------------------------------------------------------------------------

    def info(self) -> str:
        """UCX's description of the endpoint: lanes and protocol choices (``ucp_ep_print_info``)."""
        handle = self._live_handle()
        b = self._worker._binding
        return b.capture(lambda stream: b.lib.ucp_ep_print_info(handle, stream))

    def lanes(self) -> list[Lane]:
        return parse_lanes(self.info())

    def rma_transports(self) -> list[str]:
        """``transport/device`` of the lanes that carry GET/PUT, e.g. ``["cma/memory"]``.

        This is the proof of which transport moves the bytes: a silent fallback to tcp shows up
        here as ``tcp/lo``.
        """
        return [
            f"{lane.transport}/{lane.device}"
            for lane in self.lanes()
            if any(use in ("rma", "rma_bw") for use in lane.uses)
        ]

    # -- remote memory ------------------------------------------------------------------------

    def import_key(self, descriptor: bytes | bytearray | memoryview) -> RemoteKey:
        """Unpack a peer's `MemoryRegion.export()` descriptor for use on this endpoint."""
        desc = Descriptor.decode(descriptor)
        lib, ffi = self._worker._binding.lib, self._worker._binding.ffi
        handle_p = ffi.new("ucp_rkey_h *")
        status = lib.ucp_ep_rkey_unpack(self._live_handle(), desc.rkey, handle_p)
        self._worker._check(status, "ucp_ep_rkey_unpack")
        handle = handle_p[0]
        key = RemoteKey(self, handle, desc.address, desc.length)
        self._rkeys.add(key)
        return key

    async def get(
        self,
        key: RemoteKey,
        offset: int,
        dest: Buffer,
        *,
        local: MemoryRegion | None = None,
        settled: Callable[[], None] | None = None,
        schedule: bool = True,
    ) -> None:
        """Read ``len(dest)`` bytes at ``offset`` of the remote region into ``dest``.

        ``dest`` is any writable contiguous buffer. Passing the registered ``local`` region that
        contains it saves UCX a registration lookup (it matters on verbs, not over shm/tcp).

        ``settled``, if given, is called exactly once, synchronously, as soon as UCX will not
        touch ``dest`` any more: when the GET completes or fails, at once if it was never
        posted, and also when the caller stopped waiting first (cancelled, or the endpoint
        failed) and UCX finishes or cancels the request later. A buffer pool uses it to reuse
        ``dest`` only when that is safe.

        Like every trio operation it is a schedule point, even when shared memory finished
        the copy inline; ``schedule=False`` skips that yield (it still checks for
        cancellation) for a caller that yields soon anyway, never for one looping on GETs.
        """
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            if settled is not None:  # never posted: UCX never saw the buffer
                settled()
            raise
        await self.start_get(key, offset, dest, local=local, settled=settled).wait(
            schedule=schedule)

    def start_get(
        self,
        key: RemoteKey,
        offset: int,
        dest: Buffer,
        *,
        local: MemoryRegion | None = None,
        settled: Callable[[], None] | None = None,
    ) -> Get:
        """`get` without a schedule point: post the GET, progress the worker inline (shared
        memory and cma copy right there) and return it, finished or not (`Get.done`). For a
        server that answers a request in the task that read it when nothing has to wait.
        Raises at once what `get` would raise before posting; ``settled`` as for `get`."""
        worker = self._worker
        try:
            if key.endpoint is not self:
                raise ValueError("remote key was imported on another endpoint")
            self._live_handle()  # a failed endpoint raises its PeerError before "key is closed"
            cdata = worker._binding.ffi.from_buffer("char[]", dest, require_writable=True)
            size = len(cdata)
            remote = key._checked(offset, size)
            memh = None
            if local is not None:
                if not local.contains(worker._address_of(cdata), size):
                    raise ValueError("buffer is not inside the given local region")
                memh = local.handle
        except BaseException:
            if settled is not None:  # never posted: UCX never saw the buffer
                settled()
            raise
        return Get(worker, worker._post_get(self, cdata, size, remote, key._handle, memh,
                                            settled))

    # -- closing ------------------------------------------------------------------------------

    async def close(self, *, force: bool = False, timeout: float = 5.0) -> None:
        """Close the endpoint (``ucp_ep_close_nbx``). Idempotent.

        The default flushes outstanding operations and tells the peer. ``force`` (and every
        failed endpoint) releases it at once, completing outstanding requests with
        ``UCS_ERR_CANCELED``. After ``timeout`` seconds the wait is abandoned and the worker
        releases the handle when it is destroyed.
        """
        if self._handle is not None:
            self._worker._begin_close(self, force=force or self.error is not None)
        with trio.move_on_after(timeout):
            await self._closed.wait()

    def __repr__(self) -> str:
        state = "failed" if self.error else "closed" if self.closed else "open"
        return f"<Endpoint #{self.ident} {state} error_mode={self.error_mode}>"


class Listener:
    """A sockaddr listener (``ucp_listener_create``). Incoming connections become endpoints
    as soon as they arrive and wait, at most ``backlog`` of them, for `accept`; more are
    rejected. ``address`` is the bound ``(host, port)`` — with port 0 the kernel picks one.
    """

    def __init__(
        self,
        worker: Connections,
        handle: Any,
        ident: int,
        address: tuple[str, int],
        backlog: int,
        error_mode: str,
    ) -> None:
        self._worker = worker
        self._handle: Any = handle
        self.ident = ident
        self.address = address
        self.error_mode = error_mode
        self._send, self._receive = trio.open_memory_channel[Endpoint](backlog)

    @property
    def closed(self) -> bool:
        return self._handle is None

    async def accept(self) -> Endpoint:
        """Wait for the next incoming endpoint."""
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise UcxError(errors.NOT_CONNECTED, "accept", "listener is closed") from None

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Endpoint:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def _offer(self, endpoint: Endpoint) -> bool:
        try:
            self._send.send_nowait(endpoint)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    def close(self) -> None:
        """Stop listening (``ucp_listener_destroy``). Endpoints not yet accepted are closed."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        self._worker._destroy_listener(self, handle)
        self._send.close()
        while True:
            try:
                endpoint = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._worker._begin_close(endpoint, force=False)

    def __repr__(self) -> str:
        return f"<Listener {self.address[0]}:{self.address[1]}{' closed' if self.closed else ''}>"


class Get:
    """A posted GET (`Endpoint.start_get`). Dropping it without waiting abandons only the
    wait: the destination stays referenced until UCX is done with it (``settled`` says when).
    """

    __slots__ = ("_op", "_worker")

    def __init__(self, worker: Any, op: Any) -> None:
        self._worker = worker
        self._op = op

    @property
    def done(self) -> bool:
        """True once the bytes are in place; False while UCX still works on it. Raises the
        GET's error if it failed."""
        return bool(self._worker._finished(self._op))

    async def wait(self, *, schedule: bool = True) -> None:
        """Until the GET is done (raises its error); ``schedule`` as for `Endpoint.get`."""
        await self._worker._wait(self._op, schedule=schedule)
