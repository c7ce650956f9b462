"""Where the mount's bytes and listings come from.

Listings (topics, a partition's segments and chunk maps) come from the broker's HTTP API.
Chunk bytes come from the sidecar over one long-lived gRPC stream (ReadStream) on its Unix
socket, as zero-copy loans: the reply names a slot of the sidecar's shared-memory pool, which
the mount maps read-only once and hands to the kernel without copying; the slot is given back
inside a later request on the same stream (loans belong to the connection that took them; the
sidecar takes back a stream's loans when it ends). ``share`` is how many loans the sidecar lets
this connection hold at once. When the sidecar is unavailable (and ``fallback`` allows it) the mount
reads the same range straight from the broker's HTTP ``/read``, like SeaweedFS's
``-rdma.fallback``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import mmap
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

import trio

from kelp import grpc, httpd
from kelp.rpc.sidecar import v1 as sidecar_pb

log = logging.getLogger("kelp.mount")


class SourceError(Exception):
    """A read or listing that failed; ``status`` is HTTP's (404: gone, 5xx: unavailable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SourceConfig:
    sidecar: str | None = ".kelp/run/sidecar.sock"  # None: --no-sidecar (HTTP only)
    broker_http_host: str = "127.0.0.1"
    broker_http_port: int = 8082
    fallback: bool = True
    timeout_ms: int = 10_000


@dataclass
class Loan:
    """Bytes of a read: a view into the sidecar's pool (give back with ``release``) or plain
    bytes from the HTTP fallback."""

    data: memoryview
    handle: int = 0


class _Waiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: sidecar_pb.ReadReply | None = None
        self.error: str | None = None


class Source:
    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self._stream: grpc.ClientStream[Any, Any] | None = None
        self._connected = trio.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._to_release: list[int] = []
        self._pools: dict[str, mmap.mmap] = {}
        self.counters = {"sidecar_reads": 0, "fallback_reads": 0, "read_errors": 0}
        self.sidecar_problem: str | None = None if config.sidecar else "sidecar disabled"
        # Loans (plus reads in flight) the sidecar lets one connection hold; more reads would
        # wait for a release. Learned from Capabilities on each connect.
        self.share: int | None = None

    # -- the sidecar stream ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        if not self.config.sidecar:
            await trio.sleep_forever()
        channel = grpc.Channel(grpc.Address(path=self.config.sidecar))
        try:
            async with trio.open_nursery() as helpers:
                while True:
                    await self._serve_stream(channel, helpers)
                    await trio.sleep(0.5)
        finally:
            channel.close()
            for pool in self._pools.values():
                with contextlib.suppress(BufferError):  # a view still out: the exit frees it
                    pool.close()
            self._pools.clear()

    async def _serve_stream(self, channel: grpc.Channel, helpers: trio.Nursery) -> None:
        """One stream's life: route replies to their waiters until it ends."""
        try:
            async with channel.open_stream("/sidecar.v1.Sidecar/ReadStream",
                                           sidecar_pb.ReadRequest,
                                           sidecar_pb.ReadReply) as stream:
                self._stream, self.sidecar_problem = stream, None
                self._connected.set()
                helpers.start_soon(self._learn_share, channel)
                while (reply := await stream.recv()) is not None:
                    waiter = self._waiting.pop(reply.request_id, None)
                    if waiter is not None:
                        waiter.reply = reply
                        waiter.done.set()
                    elif reply.shared is not None and reply.shared.handle:
                        self._to_release.append(reply.shared.handle)  # abandoned
        except Exception as exc:
            self.sidecar_problem = f"sidecar {self.config.sidecar}: {exc}"
        finally:
            self._stream = None
            self._connected = trio.Event()
            self._to_release.clear()  # the sidecar takes back a dead stream's loans
            for waiter in self._waiting.values():
                waiter.error = self.sidecar_problem or "sidecar stream ended"
                waiter.done.set()
            self._waiting.clear()

    async def _learn_share(self, channel: grpc.Channel) -> None:
        """Ask how many buffers this connection may hold at once (the sidecar's
        ``--client-buffers``); reads do not wait for the answer."""
        try:
            reply = await channel.call("/sidecar.v1.Sidecar/Capabilities",
                                       sidecar_pb.CapabilitiesRequest(),
                                       sidecar_pb.CapabilitiesReply, timeout=5)
        except Exception:  # the stream fails too, or reads go on without a known share
            return
        self.share = reply.client_buffers or None

    def release(self, loan: Loan) -> None:
        """Give a loan back (a stream message costs tens of microseconds: send it now)."""
        loan.data.release()
        if loan.handle and self._stream is not None:
            self._to_release.append(loan.handle)
            self._send(sidecar_pb.ReadRequest(release=self._take_releases()))

    def _take_releases(self) -> list[int]:
        handles, self._to_release = self._to_release, []
        return handles

    def _send(self, request: sidecar_pb.ReadRequest) -> None:
        assert self._stream is not None
        self._stream.send(request)

    async def _sidecar_read(self, file_id: str, offset: int, size: int) -> Loan:
        if self._stream is None:
            with trio.move_on_after(0.2):  # just (re)connecting?
                await self._connected.wait()
        if self._stream is None:
            raise SourceError(503, self.sidecar_problem or "sidecar not connected")
        request_id = next(self._ids)
        waiter = self._waiting[request_id] = _Waiter()
        self._send(sidecar_pb.ReadRequest(file_id=file_id, offset=offset, size=size,
                                          zero_copy=True, request_id=request_id,
                                          release=self._take_releases()))
        try:
            await waiter.done.wait()
        finally:
            self._waiting.pop(request_id, None)
        if waiter.error is not None:
            raise SourceError(503, waiter.error)
        reply = waiter.reply
        assert reply is not None
        if reply.status != 200:
            raise SourceError(reply.status, f"sidecar: {reply.error}")
        shared = reply.shared
        pool = self._pools.get(shared.path)
        if pool is None:
            fd = os.open(shared.path, os.O_RDONLY)
            try:
                pool = self._pools[shared.path] = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        view = memoryview(pool)[shared.offset:shared.offset + shared.length]
        self.counters["sidecar_reads"] += 1
        return Loan(view, shared.handle)

    # -- reads ----------------------------------------------------------------------------------

    async def read(self, file_id: str, offset: int, size: int) -> Loan:
        sidecar_error = self.sidecar_problem
        try:
            with trio.fail_after(self.config.timeout_ms / 1000):
                if self.config.sidecar:
                    try:
                        return await self._sidecar_read(file_id, offset, size)
                    except SourceError as exc:
                        if exc.status < 500:
                            raise
                        sidecar_error = str(exc)
                if not self.config.fallback:
                    raise SourceError(503, f"{sidecar_error}; fallback disabled")
                data = await self._http_read(file_id, offset, size)
        except trio.TooSlowError:
            self.counters["read_errors"] += 1
            raise SourceError(504, f"read of {file_id} took over {self.config.timeout_ms} ms"
                              ) from None
        except SourceError:
            self.counters["read_errors"] += 1
            raise
        self.counters["fallback_reads"] += 1
        return Loan(memoryview(data))

    async def _http_read(self, file_id: str, offset: int, size: int) -> bytes:
        query = urllib.parse.urlencode({"file_id": file_id, "offset": offset, "size": size})
        reply = await self._http(f"/read?{query}", max_body=size)
        if len(reply) != size:
            raise SourceError(503, f"broker answered {len(reply)} bytes, not {size}")
        return reply

    async def _http(self, target: str, *, max_body: int = 16 * 1024 * 1024) -> bytes:
        try:
            reply = await httpd.http_get(self.config.broker_http_host,
                                         self.config.broker_http_port, target,
                                         timeout=self.config.timeout_ms / 1000,
                                         max_body_bytes=max_body)
        except httpd.HttpClientError as exc:
            raise SourceError(503, str(exc)) from None
        if reply.status != 200:
            raise SourceError(reply.status if reply.status < 500 else 503,
                              f"broker {target.split('?')[0]}: HTTP {reply.status} "
                              f"{reply.body[:200].decode('utf-8', 'replace')}")
        return reply.body

    # -- listings ---------------------------------------------------------------------------------

    async def topics(self) -> list[dict[str, Any]]:
        return list(json.loads(await self._http("/topics"))["topics"])

    async def listing(self, topic: str, partition: int) -> dict[str, Any]:
        query = urllib.parse.urlencode({"topic": topic, "partition": partition})
        return dict(json.loads(await self._http(f"/segments?{query}")))
