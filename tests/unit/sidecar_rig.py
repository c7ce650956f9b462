"""Stand-ins for the sidecar's far ends, and a rig that wires them to the real pool and reader.

The broker's OpenRead / CloseRead / ReadChunk (the fallback) calls and the UCX endpoint are fakes;
the UCX fake behaves like UCX where it matters: a GET whose waiter is cancelled keeps writing into
its buffer until "UCX" completes it. Everything else (the pool, the loans, the reader) is real.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from kelp import grpc
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as broker_pb
from rdma import ucx
from rdma.pool import BufferPool
from rdma.reader import Reader, ReaderConfig

SIZE = 64 * 1024
CHUNK = random.Random(7).randbytes(256 * 1024)
UCX_ADDRESS = "127.0.0.1:1"


def file_id(n: int) -> str:
    return f"3,{n:02x}637037d6"


# -- stand-ins for the far ends ------------------------------------------------------------------


@dataclass(eq=False)
class FakeOp:
    dest: memoryview
    offset: int
    settled: Callable[[], None] | None
    done: trio.Event = field(default_factory=trio.Event)


class FakeGet:
    def __init__(self, op: FakeOp) -> None:
        self.op = op

    @property
    def done(self) -> bool:
        return self.op.done.is_set()

    async def wait(self, *, schedule: bool = True) -> None:
        await self.op.done.wait()  # cancelling abandons the wait, not the op


class FakeKey:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeEndpoint:
    """A UCX endpoint as the reader sees it. GETs are posted to the fake worker, which
    completes them (copying the bytes, then calling ``settled``) on its own schedule, also
    when the waiter is gone."""

    def __init__(self, worker: FakeWorker) -> None:
        self.worker = worker
        self.error: Exception | None = None
        self.closed = False
        self.keys: list[FakeKey] = []

    def import_key(self, descriptor: bytes) -> FakeKey:
        key = FakeKey()
        self.keys.append(key)
        return key

    def rma_transports(self) -> list[str]:
        return ["fake/memory"]

    async def get(self, key: FakeKey, offset: int, dest: memoryview, *, local: Any = None,
                  settled: Callable[[], None] | None = None, schedule: bool = True) -> None:
        # ``schedule`` makes no difference here: the fake always waits for its op.
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            if settled is not None:
                settled()
            raise
        await self.start_get(key, offset, dest, settled=settled).wait()

    def start_get(self, key: FakeKey, offset: int, dest: memoryview, *, local: Any = None,
                  settled: Callable[[], None] | None = None) -> FakeGet:
        """Posts the op; with ``worker.inline`` (and not paused) it is done at once, as a
        cma or shared-memory GET is."""
        try:
            if key.closed or self.closed:
                raise ucx.UcxError(ucx.errors.INVALID_PARAM, "get", "key or endpoint closed")
            if self.worker.fail_gets:
                raise ucx.UcxError(ucx.errors.IO_ERROR, "get", "injected failure")
        except BaseException:
            if settled is not None:
                settled()
            raise
        op = FakeOp(dest, offset, settled)
        if self.worker.inline and not self.worker.paused:
            self.worker.finish(op)
        else:
            self.worker.post(op)
        return FakeGet(op)

    async def close(self, *, force: bool = False, timeout: float = 5.0) -> None:
        self.closed = True
        for op in list(self.worker.inflight):  # cancelled: UCX lets go without writing
            self.worker.inflight.remove(op)
            self.worker.finish(op, write=False)
        await trio.lowlevel.checkpoint()


class FakeWorker:
    def __init__(self) -> None:
        self.inflight: list[FakeOp] = []
        self._paused = False
        self.fail_gets = False
        self.inline = False  # True: GETs complete during start_get (cma, shared memory)
        self.endpoints: list[FakeEndpoint] = []
        self._work = trio.lowlevel.ParkingLot()

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value
        self._work.unpark_all()

    def post(self, op: FakeOp) -> None:
        self.inflight.append(op)
        self._work.unpark_all()

    async def connect(self, host: str, port: int) -> FakeEndpoint:
        await trio.lowlevel.checkpoint()
        endpoint = FakeEndpoint(self)
        self.endpoints.append(endpoint)
        return endpoint

    def finish(self, op: FakeOp, *, write: bool = True) -> None:
        if write:
            op.dest[:] = CHUNK[op.offset:op.offset + len(op.dest)]
        if op.settled is not None:
            op.settled()
        op.done.set()

    async def progress(self) -> None:
        """Completes posted GETs one scheduling round later (never while paused)."""
        while True:
            if self.inflight and not self._paused:
                await trio.lowlevel.checkpoint()
                while self.inflight and not self._paused:
                    self.finish(self.inflight.pop(0))
            else:
                await self._work.park()


class FakeBroker:
    """The broker's OpenRead/CloseRead, as the reader's gRPC channel would answer them."""

    def __init__(self) -> None:
        self.leases = 0
        self.open: set[int] = set()

    async def call(self, route: grpc.Route[Any, Any], request: Any, *,
                   timeout: float = 10.0) -> Any:
        await trio.lowlevel.checkpoint()
        if route is BROKER.open_read:
            self.leases += 1
            self.open.add(self.leases)
            return broker_pb.OpenReadReply(
                status=200, lease_id=self.leases, ucx_address=UCX_ADDRESS,
                descriptor=b"rkey", chunk_position=0, chunk_length=len(CHUNK),
                lease_ms=60_000)
        if route is BROKER.close_read:
            self.open.discard(request.lease_id)
            return broker_pb.CloseReadReply()
        if route is BROKER.read_chunk:  # the fallback: the broker's copy of the range
            data = CHUNK[request.offset:request.offset + request.size]
            return broker_pb.ReadChunkReply(status=200, data=data)
        raise AssertionError(route)

    def close(self) -> None:
        pass


@dataclass
class Rig:
    reader: Reader
    worker: FakeWorker
    broker: FakeBroker
    nursery: trio.Nursery
    baseline_tasks: int

    @property
    def pool(self) -> BufferPool:
        return self.reader.pool

    def use_ucx(self, on: bool) -> None:
        self.reader.worker = self.worker if on else None

    def assert_whole(self) -> None:
        """Every slot free, nobody holding or waiting, no GET pending, no stray task."""
        pool = self.pool
        assert pool.free == pool.count, pool.stats()
        assert pool.lent == 0 and pool.waiting == 0
        assert all(slot.holder is None and not slot.orphaned and not slot.ucx_pending
                   for slot in pool.slots)
        assert pool.http.held == 0
        assert all(a.held == 0 for a in pool._accounts.values())
        for peer in self.reader._peers.values():
            for session in peer.sessions.values():
                assert session.in_use == 0
        assert not self.worker.inflight
        assert len(self.nursery.child_tasks) == self.baseline_tasks


@contextlib.asynccontextmanager
async def make_rig(tmp_path: Path, **config: Any) -> AsyncIterator[Rig]:
    async with trio.open_nursery() as nursery:
        settings = {"ucx": False, "buffers": 4, "buffer_bytes": SIZE, "timeout_ms": 5_000,
                    **config}
        reader = Reader(ReaderConfig(**settings))
        reader.broker.close()
        broker = FakeBroker()
        reader.broker = broker  # type: ignore[assignment]
        worker = FakeWorker()
        nursery.start_soon(worker.progress)
        await nursery.start(reader.run)
        reader.worker = worker
        try:
            yield Rig(reader, worker, broker, nursery, len(nursery.child_tasks))
        finally:
            nursery.cancel_scope.cancel()


async def let_ucx_finish() -> None:
    """Abandoned GETs complete in the background, as UCX's would."""
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()
