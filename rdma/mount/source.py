"""Where the mount's bytes and listings come from.

Listings (topics, a partition's segments and chunk maps) come from the broker's gRPC read API
(DescribeTopics, ListSegments). Chunk bytes come from the sidecar over one long-lived
connection to its read socket (:mod:`rdma.read_socket`, named by its Capabilities; gRPC
ReadStream on its gRPC socket when it serves none, or with ``read_socket=False``), as
zero-copy loans: the reply names a slot of the sidecar's shared-memory pool, which the mount
maps read-only once and hands to the kernel without copying; the slot is given back inside a
later request on the same stream (loans belong to the connection that took them; the sidecar
takes back a stream's loans when it ends). A small read asked with ``copy`` comes back as
bytes in the reply instead, when the read socket allows it (its ``copy_max``): no loan,
so no release follows. ``share`` is how many loans the sidecar lets this connection hold at
once. When the sidecar is unavailable (and ``fallback`` allows it) the mount has the broker
copy the same range (ReadChunk), like SeaweedFS's ``-rdma.fallback``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from kelp import grpc
from kelp.mux import Multiplexed, Stream
from kelp.routes import BROKER, SIDECAR
from kelp.rpc.broker import v1 as broker_pb
from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma import read_socket, wire
from rdma.read_socket import ReadSocketStream

if TYPE_CHECKING:
    from rdma.brokers import Brokers

log = logging.getLogger("kelp.mount")

# Reads on the sidecar stream at once; the mount's own --max-concurrent keeps far fewer.
MAX_OUTSTANDING_READS = 256
# The longest a lone small read waits for its reply in place, its loop blocked (see
# Source._wait_in_place): a sidecar that copies inline answers well within it.
WAIT_IN_PLACE_MS = 1


class SourceError(Exception):
    """A read or listing that failed; ``status`` is HTTP's (404: gone, 5xx: unavailable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SourceConfig:
    sidecar: str | None = ".kelp/run/sidecar.sock"  # None: --no-sidecar (broker only)
    broker: str = "127.0.0.1:17777"  # gRPC: listings and the fallback read path
    fallback: bool = True
    timeout_ms: int = 10_000
    broker_token: str | None = None  # the cluster token, when the broker requires one
    # A cluster's etcd: each partition listed by its leader, each chunk read (on the fallback)
    # from the broker its file id names (rdma.brokers).
    etcd: str | None = None
    # The sidecar's read socket when it has one; False: always gRPC ReadStream (to compare).
    read_socket: bool = True


@dataclass
class Loan:
    """Bytes of a read: a view into the sidecar's pool (give back with ``release``) or plain
    bytes from the broker's fallback."""

    data: memoryview
    handle: int = 0


class Source:
    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self._broker_address = grpc.Address.parse(config.broker)
        self._broker: grpc.Channel | None = None  # opened on first use, inside the loop
        self._reads: Multiplexed[sidecar_pb.ReadRequest, sidecar_pb.ReadReply] = Multiplexed(
            max_outstanding=MAX_OUTSTANDING_READS, unclaimed=self._abandoned)
        self._connected = trio.Event()
        self._to_release: list[int] = []
        self._releases_waiting = trio.Event()
        self._pools: dict[str, mmap.mmap] = {}
        self.counters = {"sidecar_reads": 0, "fallback_reads": 0, "read_errors": 0,
                         "replies_in_place": 0}
        self.sidecar_problem: str | None = None if config.sidecar else "sidecar disabled"
        # Loans (plus reads in flight) the sidecar lets one connection hold; more reads would
        # wait for a release. Learned from Capabilities on each connect.
        self.share: int | None = None
        self.brokers: Brokers | None = None
        self.transport = ""  # how reads reach the sidecar now: "read socket" or "grpc"

    # -- the sidecar stream ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if self.config.etcd is not None:
            async with trio.open_nursery() as nursery:
                from rdma.brokers import Brokers  # only a cluster's mount loads etcd's client

                self.brokers = Brokers(self.config.etcd, self.config.broker_token)
                await nursery.start(self.brokers.run)
                await nursery.start(self._run)
                task_status.started()
            return
        await self._run(task_status=task_status)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        task_status.started()
        try:
            if not self.config.sidecar:
                await trio.sleep_forever()
            channel = grpc.Channel(grpc.Address(path=self.config.sidecar))
            try:
                while True:
                    await self._serve_stream(channel)
                    await trio.sleep(0.5)
            finally:
                channel.close()
                for pool in self._pools.values():
                    with contextlib.suppress(BufferError):  # a view still out: exit frees it
                        pool.close()
                self._pools.clear()
        finally:
            if self._broker is not None:
                self._broker.close()

    async def _serve_stream(self, channel: grpc.Channel) -> None:
        """One stream's life: route replies to their waiters until it ends."""
        try:
            # How many buffers this connection may hold at once (the sidecar's
            # --client-buffers), and where its read socket is.
            capabilities = await channel.call(SIDECAR.capabilities,
                                              sidecar_pb.CapabilitiesRequest(), timeout=5)
            self.share = capabilities.client_buffers or None
            if capabilities.read_socket and self.config.read_socket:
                async with read_socket.connect(capabilities.read_socket) as fast:
                    self.share = fast.hello.client_buffers or None
                    fast.copy_max = min(capabilities.read_socket_copy_max, wire.MAX_COPY)
                    await self._deliver(fast)
            else:
                async with channel.open_stream(SIDECAR.read_stream) as stream:
                    await self._deliver(stream)
        except Exception as exc:
            self.sidecar_problem = f"sidecar {self.config.sidecar}: {exc}"
        finally:
            self._reads.stream = None
            self._connected = trio.Event()
            self._to_release.clear()  # the sidecar takes back a dead stream's loans
            self._reads.fail(SourceError(503, self.sidecar_problem or "sidecar stream ended"))

    def _abandoned(self, reply: sidecar_pb.ReadReply) -> None:
        """A reply to a read nobody waits for any more: give its loan back."""
        if reply.shared is not None and reply.shared.handle:
            self._to_release.append(reply.shared.handle)

    async def _deliver(self, stream: Stream[sidecar_pb.ReadRequest, sidecar_pb.ReadReply]
                       ) -> None:
        self._reads.stream, self.sidecar_problem = stream, None
        self.transport = "read socket" if isinstance(stream, ReadSocketStream) else "grpc"
        self._connected.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_releases)
            await self._reads.deliver_replies(stream)
            nursery.cancel_scope.cancel()

    async def wait_connected(self, timeout_s: float) -> bool:
        """Until reads go to the sidecar (True), or ``timeout_s`` has passed or there is no
        sidecar to wait for (False)."""
        if not self.config.sidecar:
            return False
        with trio.move_on_after(timeout_s):
            await self._connected.wait()
        return self._reads.stream is not None

    def release(self, loan: Loan) -> None:
        """Give a loan back. The handle rides in the next read's request when one is made in
        the same scheduler step (the mount evicts, then reads: one frame, one wake-up of the
        sidecar instead of two); otherwise ``_send_releases`` sends it alone right after."""
        loan.data.release()
        if loan.handle and self._reads.stream is not None:
            self._to_release.append(loan.handle)
            self._releases_waiting.set()

    async def _send_releases(self) -> None:
        """Send the releases no read has carried (runs while connected)."""
        while True:
            await self._releases_waiting.wait()
            self._releases_waiting = trio.Event()
            await trio.lowlevel.checkpoint()  # let a read made in this step take them along
            if self._to_release and self._reads.stream is not None:
                self._reads.send_untracked(sidecar_pb.ReadRequest(
                    release=self._take_releases()))

    def _take_releases(self) -> list[int]:
        handles, self._to_release = self._to_release, []
        return handles

    async def _sidecar_read(self, file_id: str, offset: int, size: int, copy: bool = False
                           ) -> Loan:
        if self._reads.stream is None:
            with trio.move_on_after(0.2):  # just (re)connecting?
                await self._connected.wait()
        if self._reads.stream is None:
            raise SourceError(503, self.sidecar_problem or "sidecar not connected")
        try:
            # Room first, then the releases: a read cancelled while waiting for room must
            # leave them to be sent, or the sidecar would hold those buffers for nothing.
            await self._reads.wait_for_room()
            stream = self._reads.stream
            zero_copy = (not copy or not isinstance(stream, ReadSocketStream)
                         or size > stream.copy_max)
            reply = await self._reads.call(sidecar_pb.ReadRequest(
                file_id=file_id, offset=offset, size=size, zero_copy=zero_copy,
                release=self._take_releases()), sent=None if zero_copy else self._wait_in_place)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise SourceError(503, self.sidecar_problem or f"sidecar stream: {exc}") from None
        if reply.status != 200:
            raise SourceError(reply.status, f"sidecar: {reply.error}")
        # Taken for what it is, whatever was asked: a loan is given back even where a copy
        # was wanted.
        shared = reply.shared
        if shared is None or not shared.handle:
            if len(reply.data) != size:
                raise SourceError(502, f"sidecar answered {len(reply.data)} bytes, not {size}")
            self.counters["sidecar_reads"] += 1
            return Loan(memoryview(reply.data))
        if shared.length != size:
            self.release(Loan(memoryview(b""), shared.handle))
            raise SourceError(502, f"sidecar lent {shared.length} bytes, not {size}")
        self.counters["sidecar_reads"] += 1
        pool = self._pools.get(shared.path)
        if pool is None:
            fd = os.open(shared.path, os.O_RDONLY)
            try:
                pool = self._pools[shared.path] = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        view = memoryview(pool)[shared.offset:shared.offset + shared.length]
        return Loan(view, shared.handle)

    def _wait_in_place(self) -> None:
        """A lone small read (no other read outstanding): wait for its reply here, in a
        blocking poll of the read socket, and hand it over ourselves. That saves two trips
        round trio's loop (the receiving task's, then this task's): 15-25 % of a random
        4 KiB read through the mount on a slow VM. The mount's other tasks (the next FUSE
        request) wait meanwhile, at most ``WAIT_IN_PLACE_MS`` and never past trio's next
        deadline; a reply that takes longer is waited for the usual way."""
        stream = self._reads.stream
        if not isinstance(stream, ReadSocketStream) or self._reads.outstanding != 1:
            return
        # poll waits in whole milliseconds: a deadline due sooner gets no wait here.
        if trio.lowlevel.current_statistics().seconds_to_next_deadline < WAIT_IN_PLACE_MS / 1e3:
            return
        for reply in stream.recv_ready(WAIT_IN_PLACE_MS):
            self.counters["replies_in_place"] += 1
            self._reads.deliver(reply)

    # -- reads ----------------------------------------------------------------------------------

    async def read(self, file_id: str, offset: int, size: int, *, copy: bool = False
                   ) -> Loan:
        """``size`` bytes of chunk ``file_id`` from ``offset``: a loan to ``release``. With
        ``copy``, a small read's bytes are copied into the reply when the sidecar allows it
        (its loan then has no handle: the release costs nothing)."""
        sidecar_error = self.sidecar_problem
        try:
            with trio.fail_after(self.config.timeout_ms / 1000):
                if self.config.sidecar:
                    try:
                        return await self._sidecar_read(file_id, offset, size, copy)
                    except SourceError as exc:
                        if exc.status < 500:
                            raise
                        sidecar_error = str(exc)
                if not self.config.fallback:
                    raise SourceError(503, f"{sidecar_error}; fallback disabled")
                data = await self._broker_read(file_id, offset, size)
        except trio.TooSlowError:
            self.counters["read_errors"] += 1
            raise SourceError(504, f"read of {file_id} took over {self.config.timeout_ms} ms"
                              ) from None
        except SourceError:
            self.counters["read_errors"] += 1
            raise
        self.counters["fallback_reads"] += 1
        return Loan(memoryview(data))

    async def _broker_read(self, file_id: str, offset: int, size: int) -> bytes:
        where = self.brokers.for_file(file_id) if self.brokers is not None else None
        reply = await self._broker_call(BROKER.read_chunk, broker_pb.ReadChunkRequest(
            file_id=file_id, offset=offset, size=size), where)
        if len(reply.data) != size:
            raise SourceError(503, f"broker answered {len(reply.data)} bytes, not {size}")
        return bytes(reply.data)

    async def _broker_call(self, route: grpc.Route[Any, Any], request: Any,
                           where: tuple[grpc.Channel, str] | None = None) -> Any:
        """A call of the broker's read API (of ``where``'s broker, else ``--broker``); a
        status other than 200 is a ``SourceError``."""
        if where is None:
            if self._broker is None:
                self._broker = grpc.Channel(self._broker_address,
                                            token=self.config.broker_token)
            where = self._broker, self.config.broker
        channel, address = where
        try:
            reply = await channel.call(route, request, timeout=self.config.timeout_ms / 1000)
        except Exception as exc:  # refused, reset, timed out: the broker is not reachable
            raise SourceError(503, f"broker {address} {route.name}: "
                              f"{grpc.describe_failure(exc)}") from None
        status = getattr(reply, "status", 200)
        if status != 200:
            raise SourceError(status if status < 500 else 503,
                              f"broker {route.name}: {status} {reply.error}")
        return reply

    # -- listings ---------------------------------------------------------------------------------

    async def topics(self) -> list[dict[str, Any]]:
        reply = await self._broker_call(BROKER.describe_topics,
                                        broker_pb.DescribeTopicsRequest())
        return [{"name": t.name, "partitions": t.partitions} for t in reply.topics]

    async def listing(self, topic: str, partition: int) -> dict[str, Any]:
        """A partition's segments and chunk maps, as the broker's HTTP /segments shows them
        (the tree is built from that shape)."""
        where = (self.brokers.for_partition(topic, partition) if self.brokers is not None
                 else None)
        reply = await self._broker_call(BROKER.list_segments, broker_pb.ListSegmentsRequest(
            topic=topic, partition=partition), where)
        return {
            "topic": reply.topic, "partition": reply.partition, "volume": reply.volume,
            "chunk_bytes": reply.chunk_bytes, "log_start_offset": reply.log_start_offset,
            "high_watermark": reply.high_watermark, "segments": [{
                "base_offset": s.base_offset, "next_offset": s.next_offset, "size": s.size,
                "sealed": s.sealed, "mtime_ms": s.mtime_ms,
                "chunks": [{"file_id": c.file_id, "offset": c.offset, "size": c.size}
                           for c in s.chunks]} for s in reply.segments]}
