"""The broker's UCX side: segment files mapped into registered memory, read one-sidedly.

A sidecar asks (``OpenRead``, gRPC) for a chunk by file id. The broker maps the chunk's whole
segment read-only (``mmap`` of the segment's descriptor, so a segment deleted meanwhile stays
readable), registers it with UCX (``ucp_mem_map``) and answers with the mapping's descriptor
(address, length, packed rkey) under a *lease*. The sidecar then GETs any range of that segment
without the broker's CPU, until the lease ends. Mappings are shared by every lease on the same
segment and size; the active segment, which grows, gets a new mapping when a reader needs bytes
past the old one. A mapping is unregistered and unmapped only when its last lease ends
(expiry, ``CloseRead``, or shutdown), so retention and compaction never pull memory from under
a read.

Without UCX (``--no-ucx``, or libucp cannot load) every OpenRead answers 503 with the reason and
the sidecar reads through the broker's ``ReadChunk`` instead.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import mmap
from dataclasses import dataclass, field

import trio

from broker.exports import ExportError, Exports
from broker.log import Segment, held
from kelp.rpc.broker import v1 as pb

log = logging.getLogger("kelp.broker.ucx")

LEASE_MS = 60_000
MAX_IDLE_ENDPOINTS = 64  # accepted sidecar endpoints kept; the oldest go first


@dataclass
class _Mapping:
    segment: Segment
    size: int
    memory: mmap.mmap
    region: object  # rdma.ucx.MemoryRegion (imported lazily: UCX is optional)
    descriptor: bytes
    leases: int = 0
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def unregister(self) -> None:
        self.region.close()  # type: ignore[attr-defined]

    def release(self) -> None:
        self.memory.close()
        self.stack.close()  # lets the segment's descriptor close if it was deleted

    def close(self) -> None:
        self.unregister()
        self.release()


class _Stopped(Exception):
    """The export stopped (its worker is gone) while a mapping was being made."""


@dataclass
class _Lease:
    mapping: _Mapping
    deadline: float


class UcxExporter:
    def __init__(self, exports: Exports, host: str, port: int, *, enabled: bool = True,
                 lease_ms: int = LEASE_MS, advertise: str | None = None) -> None:
        self.exports = exports
        self.host, self.port = host, port
        self.enabled = enabled
        self.lease_ms = lease_ms
        self.unavailable: str | None = None if enabled else "UCX disabled (--no-ucx)"
        self.address: str | None = None  # HOST:PORT once listening
        self.advertise = advertise
        self.transports: list[str] = []
        self._worker: object | None = None
        self._current: dict[int, _Mapping] = {}  # segment serial -> newest mapping
        self._leases: dict[int, _Lease] = {}
        self._lease_opened = trio.Event()  # wakes the expiry loop of an export with none
        self._lease_ids = itertools.count(1)
        self._endpoints: list[object] = []
        self._scope = trio.CancelScope()
        self._lingering: list[_Mapping] = []
        self.counters = {"leases_opened": 0, "leases_expired": 0, "mappings": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if not self.enabled:
            task_status.started()
            return
        try:
            await self._run(task_status)
        finally:
            for mapping in self._lingering:  # shutting down: the process goes with them
                mapping.release()
            self._lingering.clear()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                from rdma import ucx

                # A restarted broker must get its port back while the connections of the
                # one before linger in TIME_WAIT (else: "Device is busy").
                worker = await stack.enter_async_context(
                    ucx.open_worker({"CM_REUSEADDR": "y"}))
                listener = worker.listen(self.host, self.port)
            except Exception as exc:  # UcxUnavailable, or UCX failing to start here
                self.unavailable = f"UCX unavailable: {exc}"
                log.warning("ucx export disabled", extra={"reason": self.unavailable})
                task_status.started()
                return
            stack.callback(self._shut)  # runs first: leases end before the worker closes
            self._worker = worker
            self.address = (self.advertise
                            or f"{listener.address[0]}:{listener.address[1]}")
            log.info("ucx export listening", extra={"address": self.address})
            task_status.started()
            with self._scope:
                await self._serve(listener)
            self.unavailable = "UCX export stopped"
            log.warning("ucx export stopped", extra={"address": self.address})
        # Stopped while the broker runs on. Sidecars may still hold leases and GET with their
        # old keys: the memory must stay mapped (never reused for other bytes) until the
        # leases end. Over cma a GET reads our address space directly; over others it fails.
        await trio.sleep(self.lease_ms / 1000)
        for mapping in self._lingering:
            mapping.release()
        self._lingering.clear()

    async def _serve(self, listener: object) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_leases)
            async for endpoint in listener:  # type: ignore[attr-defined]
                self._endpoints.append(endpoint)
                while len(self._endpoints) > MAX_IDLE_ENDPOINTS:
                    oldest = self._endpoints.pop(0)
                    await oldest.close(force=True)  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop exporting (a test knob: sidecars fall back to ReadChunk)."""
        self._scope.cancel()

    def _shut(self) -> None:
        """Before the worker closes: deregister everything; memory a lease still covers stays
        mapped (``_lingering``) until the lease would have ended."""
        self._worker = None
        live = {id(lease.mapping): lease.mapping for lease in self._leases.values()}
        live.update({id(m): m for m in self._current.values()})
        self._leases.clear()
        self._current.clear()
        for mapping in live.values():
            mapping.unregister()
            self._lingering.append(mapping)

    async def open_read(self, file_id: str) -> pb.OpenReadReply:
        if self._worker is None:
            return pb.OpenReadReply(status=503, error=self.unavailable or "UCX not started")
        try:
            chunk = self.exports.resolve(file_id)
        except ExportError as exc:
            return pb.OpenReadReply(status=exc.status, error=exc.message)
        if chunk.length == 0:
            return pb.OpenReadReply(status=416, error=f"chunk {file_id} is empty")
        try:
            mapping = await self._mapping_for(chunk.segment, chunk.position + chunk.length)
        except _Stopped:  # the export stopped while we mapped
            return pb.OpenReadReply(status=503, error=self.unavailable or "UCX stopped")
        lease_id = next(self._lease_ids)
        mapping.leases += 1
        self._leases[lease_id] = _Lease(mapping, trio.current_time() + self.lease_ms / 1000)
        self.counters["leases_opened"] += 1
        self._lease_opened.set()
        return pb.OpenReadReply(
            status=200, lease_id=lease_id, ucx_address=self.address or "",
            descriptor=mapping.descriptor, mapped_length=mapping.size,
            chunk_position=chunk.position, chunk_length=chunk.length,
            lease_ms=self.lease_ms, segment_serial=chunk.segment.serial)

    def close_read(self, lease_id: int) -> None:
        self._end_lease(lease_id)

    async def _mapping_for(self, segment: Segment, needed: int) -> _Mapping:
        current = self._current.get(segment.serial)
        if current is not None and current.size >= needed:
            return current
        stack = contextlib.ExitStack()
        stack.enter_context(held(segment))
        size = segment.size
        # MAP_POPULATE builds the page tables now (in a thread: ~50 ms a GiB): a cma GET
        # (process_vm_readv) of a page not yet mapped here would fault it in on the reader's
        # time, and halve the throughput.
        try:
            memory = await trio.to_thread.run_sync(functools.partial(
                mmap.mmap, segment.fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                prot=mmap.PROT_READ))
        except BaseException:
            stack.close()
            raise
        if self._worker is None:  # stopped while the thread mapped: nothing to register with
            memory.close()
            stack.close()
            raise _Stopped
        region = self._worker.register(memory)  # type: ignore[attr-defined]
        mapping = _Mapping(segment, size, memory, region, region.export(), stack=stack)
        self.counters["mappings"] += 1
        self._current[segment.serial] = mapping
        if current is not None and current.leases == 0:
            current.close()
        return mapping

    def _end_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        mapping = lease.mapping
        mapping.leases -= 1
        newest = self._current.get(mapping.segment.serial)
        stale = newest is not mapping or mapping.segment.retired
        if mapping.leases == 0 and (stale or self._worker is None):
            if newest is mapping:
                del self._current[mapping.segment.serial]
            mapping.close()

    async def _expire_leases(self) -> None:
        while True:
            if not self._leases and not self._current:
                # Nothing to expire: sleep until a read opens. An idle broker must not wake
                # each second (a wake-up is most of an idle process's CPU).
                await self._lease_opened.wait()
                self._lease_opened = trio.Event()
            await trio.sleep(1)
            now = trio.current_time()
            for lease_id in [i for i, lease in self._leases.items() if lease.deadline < now]:
                self.counters["leases_expired"] += 1
                self._end_lease(lease_id)
            # Mappings of segments nobody reads any more: drop them too.
            for serial, mapping in list(self._current.items()):
                if mapping.leases == 0:
                    del self._current[serial]
                    mapping.close()

    def health(self) -> dict[str, object]:
        return {"ucx_address": self.address, "ucx_unavailable": self.unavailable,
                "ucx_leases": len(self._leases), "ucx_mappings": len(self._current),
                **{f"ucx_{k}": v for k, v in self.counters.items()}}


class LeaseCalls:
    """A mixin of ``broker.service.BrokerService``: OpenRead and CloseRead, answered by
    ``exporter``."""

    exporter: UcxExporter

    async def open_read(self, request: pb.OpenReadRequest) -> pb.OpenReadReply:
        return await self.exporter.open_read(request.file_id)

    async def close_read(self, request: pb.CloseReadRequest) -> pb.CloseReadReply:
        self.exporter.close_read(request.lease_id)
        return pb.CloseReadReply()
