"""The sidecar's buffer pool and read path under trio, cancelled at every checkpoint.

The pool, the loans and their ownership, the reader (sessions, fallback, deadlines) and the
stream handler are the real code. Only the far ends are stand-ins: the broker's OpenRead /
CloseRead / ReadChunk (the fallback) calls and the UCX endpoint (a fake that behaves like UCX
where it matters: a GET whose waiter is cancelled keeps writing into its buffer until "UCX"
completes it). A last group drives the real libucp binding's
``settled`` hook that the reader relies on.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kelp import grpc
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as broker_pb
from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma import ucx
from rdma.pool import BufferPool, PoolConfigError, ReleaseRefused, resolve_shares
from rdma.reader import Reader, ReaderConfig, ReadFailed
from rdma.sidecar import Sidecar, SidecarConfig

pytestmark = pytest.mark.timeout(120)

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
                  settled: Callable[[], None] | None = None) -> None:
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if key.closed or self.closed:
                raise ucx.UcxError(ucx.errors.INVALID_PARAM, "get", "key or endpoint closed")
            if self.worker.fail_gets:
                raise ucx.UcxError(ucx.errors.IO_ERROR, "get", "injected failure")
        except BaseException:
            if settled is not None:
                settled()
            raise
        op = FakeOp(dest, offset, settled)
        self.worker.post(op)
        await op.done.wait()  # cancelling abandons the wait, not the op

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


# -- cancelling at the k-th checkpoint -----------------------------------------------------------


class _CancelAfterSteps(trio.abc.Instrument):
    """Cancels ``scope`` when ``task`` has run ``steps`` scheduling steps: each step ends at a
    checkpoint, so this cancels a call at exactly its k-th await."""

    def __init__(self, scope: trio.CancelScope, steps: int) -> None:
        self.scope, self.steps = scope, steps
        self.task: trio.lowlevel.Task | None = None
        self.seen = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.seen += 1
            if self.seen == self.steps:
                self.scope.cancel()


async def run_cancelled_at(steps: int, call: Callable[[], Awaitable[Any]]
                           ) -> tuple[bool, Any]:
    """Run ``call()`` in its own task, cancelled at its ``steps``-th checkpoint (0: before it
    starts). Returns (finished uncancelled, result or exception)."""
    scope = trio.CancelScope()
    instrument = _CancelAfterSteps(scope, steps)
    result: list[Any] = []
    if steps == 0:
        scope.cancel()

    async def target() -> None:
        instrument.task = trio.lowlevel.current_task()
        with scope:
            try:
                result.append((True, await call()))
            except Exception as exc:
                result.append((True, exc))

    trio.lowlevel.add_instrument(instrument)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(target)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    return result[0] if result else (False, None)


async def let_ucx_finish() -> None:
    """Abandoned GETs complete in the background, as UCX's would."""
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("path", ["ucx", "ucx-new-endpoint", "http", "ucx-fails-then-http"])
@pytest.mark.parametrize("zero_copy", [False, True])
async def test_a_read_cancelled_at_every_checkpoint_gives_everything_back(
        tmp_path: Path, path: str, zero_copy: bool) -> None:
    async with make_rig(tmp_path) as rig:
        rig.use_ucx(path != "http")
        rig.worker.fail_gets = path == "ucx-fails-then-http"
        account = rig.pool.account_for(object(), lambda: "client")
        scope = object()
        k, finished = 0, False
        while not finished:
            if path == "ucx-new-endpoint":
                for address in list(rig.reader._peers):
                    await rig.reader._drop_peer(address)
            offset = (k * 4099) % (len(CHUNK) - 5000)
            fid = file_id(k % 250 + 1)  # a new chunk each time: the session is opened anew

            async def read(fid: str = fid, offset: int = offset) -> Any:
                return await rig.reader.fetch(account, fid, offset, 5000,
                                              lend_to=scope if zero_copy else None)

            finished, outcome = await run_cancelled_at(k, read)
            if finished:
                assert not isinstance(outcome, Exception), outcome
                expected = CHUNK[offset:offset + 5000]
                if zero_copy:
                    assert outcome.loan is not None and rig.pool.lent == 1
                    assert bytes(outcome.loan.slot.view[:5000]) == expected
                    rig.pool.release(outcome.loan.handle, account)
                else:
                    assert outcome.data == expected
                assert outcome.transport == ("http" if path in ("http", "ucx-fails-then-http")
                                             else "ucx")
            await let_ucx_finish()
            rig.assert_whole()
            k += 1
        assert k > 3  # the read really had checkpoints to cancel at


async def test_an_abandoned_get_keeps_its_slot_out_of_the_pool_until_ucx_is_done(
        tmp_path: Path) -> None:
    async with make_rig(tmp_path, buffers=2) as rig:
        rig.use_ucx(True)
        account = rig.pool.account_for(object(), lambda: "client")
        await rig.reader.fetch(account, file_id(1), 0, 100)  # session and endpoint exist
        rig.worker.paused = True
        with trio.move_on_after(0.05):
            await rig.reader.fetch(account, file_id(1), 0, SIZE // 2)
        # The reader gave up, so its share is back at once — but UCX may still write into
        # the slot, so nobody else may get it yet.
        assert account.held == 0
        assert rig.pool.free == 1 and rig.pool.stats()["buffers_ucx_pending"] == 1
        session = rig.reader._peers[UCX_ADDRESS].sessions[file_id(1)]
        assert session.in_use == 1 and session.abandoned_at is not None
        rig.worker.paused = False
        await let_ucx_finish()
        rig.assert_whole()


async def test_a_stuck_get_closes_its_endpoint_after_the_read_timeout(tmp_path: Path) -> None:
    async with make_rig(tmp_path, timeout_ms=200) as rig:
        rig.use_ucx(True)
        account = rig.pool.account_for(object(), lambda: "client")
        await rig.reader.fetch(account, file_id(1), 0, 100)
        rig.worker.paused = True
        with pytest.raises(ReadFailed) as failed:
            await rig.reader.fetch(account, file_id(1), 0, 100)
        assert failed.value.status == 504
        with trio.fail_after(3):
            while rig.reader.counters["endpoints_dropped_stuck"] == 0:
                await trio.sleep(0.05)
        rig.worker.paused = False
        await let_ucx_finish()
        rig.assert_whole()
        assert rig.broker.open == set()  # its lease was handed back too


async def test_a_waiter_handed_a_slot_as_it_is_cancelled_still_gives_it_back(
        tmp_path: Path) -> None:
    async with make_rig(tmp_path, buffers=3, client_buffers=2, http_reserve=1) as rig:
        rig.use_ucx(False)
        a = rig.pool.account_for("a", lambda: "a")
        b = rig.pool.account_for("b", lambda: "b")
        held = [await rig.pool.acquire(a), await rig.pool.acquire(b)]  # gRPC's two
        got: list[Any] = []
        scope = trio.CancelScope()

        async def waiting() -> None:
            with scope:
                got.append(await rig.reader.fetch(b, file_id(1), 0, 10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            assert rig.pool.waiting == 1
            rig.pool.give_back(held.pop(0))  # handed straight to the waiter...
            scope.cancel()  # ...which is cancelled in the same breath
        assert not got
        rig.pool.give_back(held.pop())
        rig.assert_whole()


# -- fairness ------------------------------------------------------------------------------------


def test_share_and_reserve_defaults_and_limits() -> None:
    assert resolve_shares(8, 1, None, None) == (4, 1)
    assert resolve_shares(1, 1, None, None) == (1, 0)
    assert resolve_shares(3, 1, None, None) == (1, 1)
    for args in ((8, 1, 0, None), (8, 1, 9, None), (8, 1, None, 8), (8, 1, None, -1),
                 (0, 1, None, None)):
        with pytest.raises(PoolConfigError):
            resolve_shares(*args)


@pytest.fixture
def pool(tmp_path: Path) -> Any:
    made = BufferPool(8, 4096, directory=tmp_path)
    yield made
    made.close()


async def test_one_client_gets_at_most_its_share(pool: BufferPool) -> None:
    greedy, other = pool.account_for("g", lambda: "g"), pool.account_for("o", lambda: "o")
    slots = [await pool.acquire(greedy) for _ in range(pool.share)]
    with trio.move_on_after(0.1) as waited:
        await pool.acquire(greedy)
    assert waited.cancelled_caught and pool.waiting == 0
    with trio.fail_after(1):
        theirs = await pool.acquire(other)  # another client is not held up
    pool.give_back(theirs)
    for slot in slots:
        pool.give_back(slot)
    assert pool.free == pool.count


async def test_grpc_never_takes_the_http_reserve(pool: BufferPool) -> None:
    clients = [pool.account_for(i, lambda: "c") for i in range(4)]
    held = []
    for client in clients:
        with trio.move_on_after(0.05):
            while True:
                held.append(await pool.acquire(client))
    assert len(held) == pool.count - pool.reserve
    with trio.fail_after(1):
        slot = await pool.acquire(pool.http)  # the reserve is HTTP's
    pool.give_back(slot)
    for slot in held:
        pool.give_back(slot)
    assert pool.free == pool.count


async def test_waiters_are_served_first_come_first_served(pool: BufferPool) -> None:
    clients = [pool.account_for(i, lambda: "c") for i in range(3)]
    held = [await pool.acquire(clients[0]) for _ in range(4)]
    held += [await pool.acquire(clients[1]) for _ in range(3)]  # 7: only the reserve is left
    order: list[int] = []

    async def wait(index: int) -> None:
        slot = await pool.acquire(clients[index])
        order.append(index)
        pool.give_back(slot)

    async with trio.open_nursery() as nursery:
        for index in (2, 1):
            nursery.start_soon(wait, index)
            await trio.testing.wait_all_tasks_blocked()
        assert pool.waiting == 2
        pool.give_back(held.pop())  # client 1's: client 2 waited first
    assert order == [2, 1]
    for slot in held:
        pool.give_back(slot)
    assert pool.free == pool.count and pool.waiting == 0


# -- loans ---------------------------------------------------------------------------------------


async def test_loans_are_owned_and_unguessable(pool: BufferPool) -> None:
    owner, stranger = pool.account_for("o", lambda: "o"), pool.account_for("s", lambda: "s")
    slot = await pool.acquire(owner)
    slot.view[:5] = b"owned"
    loan = pool.lend(slot, owner, 30)
    with pytest.raises(ReleaseRefused) as refused:
        pool.release(loan.handle, stranger)
    assert refused.value.status == 403
    assert pool.lent == 1 and slot.holder is owner and bytes(slot.view[:5]) == b"owned"
    with pytest.raises(ReleaseRefused) as unknown:
        pool.release(loan.handle ^ 1, owner)
    assert unknown.value.status == 404
    pool.release(loan.handle, owner)
    with pytest.raises(ReleaseRefused):
        pool.release(loan.handle, owner)  # once only
    assert pool.free == pool.count and pool.counters["releases_refused"] == 1

    handles = []
    for _ in range(50):
        slot = await pool.acquire(owner)
        handle = pool.lend(slot, owner, 30).handle
        handles.append(handle)
        pool.release(handle, owner)
    assert all(0 < h < 2**63 for h in handles) and len(set(handles)) == 50
    assert sum(abs(a - b) <= 1000 for a, b in itertools.pairwise(handles)) == 0
    assert max(handles).bit_length() > 50


async def test_loans_come_back_with_their_scope_their_client_or_their_deadline(
        pool: BufferPool, autojump_clock: trio.testing.MockClock) -> None:
    alive = {"c": True}
    client = pool.account_for("c", lambda: "c", alive=lambda: alive["c"])
    stream_a, stream_b = object(), object()
    for scope in (stream_a, stream_a, stream_b):
        pool.lend(await pool.acquire(client), scope, 30)
    assert pool.end_scope(client, stream_a) == 2 and pool.lent == 1
    held = await pool.acquire(client)  # a read still in progress as the client goes
    alive["c"] = False
    assert pool.reap() == 1 and pool.lent == 0 and client.closed
    pool.lend(held, client, 30)  # ...which finishes and lends to the closed client
    assert pool.reap() == 1 and pool.lent == 0
    assert pool.free == pool.count

    late = pool.account_for("late", lambda: "late")
    pool.lend(await pool.acquire(late), late, 5)
    await trio.sleep(4)
    assert pool.reap() == 0
    await trio.sleep(2)
    assert pool.reap() == 1 and pool.counters["buffers_reclaimed"] == 1
    assert pool.free == pool.count and late.held == 0


async def test_never_released_loans_starve_nobody(tmp_path: Path) -> None:
    async with make_rig(tmp_path, buffers=8, timeout_ms=300) as rig:
        rig.use_ucx(True)
        hoarder = rig.pool.account_for("h", lambda: "hoarder")
        loans = []
        results = []
        for i in range(8):
            try:
                loans.append(await rig.reader.fetch(hoarder, file_id(1), i, 10,
                                                    lend_to=hoarder))
            except ReadFailed as exc:
                results.append(exc)
        assert len(loans) == rig.pool.share == 4
        assert all(exc.status == 503 and "holds 4 of its 4" in exc.message for exc in results)
        other = rig.pool.account_for("o", lambda: "other")
        with trio.fail_after(1):
            assert (await rig.reader.fetch(other, file_id(2), 0, 10)).data == CHUNK[:10]
            assert (await rig.reader.fetch(rig.pool.http, file_id(2), 0, 10)).data == CHUNK[:10]
        rig.pool.close_account(hoarder)
        await let_ucx_finish()
        rig.assert_whole()


# -- the stream handler --------------------------------------------------------------------------


async def test_a_stream_gives_back_its_loans_and_refuses_foreign_releases(
        tmp_path: Path) -> None:
    async with make_rig(tmp_path) as rig:
        rig.use_ucx(True)
        sidecar = Sidecar(SidecarConfig(socket=tmp_path / "s.sock"), rig.reader)
        mine, theirs = (rig.pool.account_for(k, lambda k=k: k) for k in ("mine", "theirs"))
        foreign = await rig.reader.fetch(theirs, file_id(9), 0, 10, lend_to=theirs)

        requests_in, requests = trio.open_memory_channel[Any](10)
        replies: list[sidecar_pb.ReadReply] = []

        async def recv() -> Any:
            try:
                return await requests.receive()
            except trio.EndOfChannel:
                return None

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: sidecar.serve_read_stream(recv, replies.append,
                                                                 account=mine))
            for n in (1, 2):
                await requests_in.send(sidecar_pb.ReadRequest(
                    file_id=file_id(1), offset=n, size=10, zero_copy=True, request_id=n))
            await let_ucx_finish()
            assert [r.status for r in replies] == [200, 200] and rig.pool.lent == 3
            handle = replies[0].shared.handle
            await requests_in.send(sidecar_pb.ReadRequest(release=[handle], request_id=3))
            await requests_in.send(sidecar_pb.ReadRequest(release=[foreign.loan.handle],
                                                          request_id=4))
            await let_ucx_finish()
            assert replies[-1].request_id == 4 and replies[-1].status == 403
            assert list(replies[-1].release_refused) == [foreign.loan.handle]
            assert len(replies) == 3  # the good release needed no answer
            assert rig.pool.lent == 2  # the stream's second loan and the foreign one
            await requests_in.aclose()  # the consumer goes away holding a loan
        assert rig.pool.lent == 1 and foreign.loan.handle in rig.pool._loans
        rig.pool.release(foreign.loan.handle, theirs)
        await let_ucx_finish()
        rig.assert_whole()


# -- the real binding's settled hook -------------------------------------------------------------


async def test_ucx_settled_fires_once_after_ucx_is_done_even_when_the_wait_is_cancelled(
        ) -> None:
    try:
        worker_cm = ucx.open_worker({"TLS": "tcp"})  # tcp: a big GET takes a while
        worker = await worker_cm.__aenter__()
    except ucx.UcxUnavailable as exc:  # pragma: no cover - no libucp here
        pytest.skip(str(exc))
    try:
        exported = bytearray(os.urandom(32 << 20))
        region = worker.register(exported)
        listener = worker.listen("127.0.0.1", 0)
        with trio.fail_after(10):
            client = await worker.connect("127.0.0.1", listener.address[1])
            await listener.accept()
        key = client.import_key(region.export())
        calls: list[str] = []

        small = bytearray(1000)
        await client.get(key, 0, small, settled=lambda: calls.append("done"))
        assert calls == ["done"] and small == exported[:1000]
        with pytest.raises(ValueError):
            await client.get(key, len(exported), bytearray(1),
                             settled=lambda: calls.append("never posted"))
        assert calls == ["done", "never posted"]
        calls.clear()

        dest = bytearray(len(exported))

        def settled() -> None:  # whenever it comes, the GET has landed whole
            calls.append("whole" if dest == exported else "partial")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(client.get, key, 0, dest, settled=settled))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # the reader stops waiting, UCX goes on
        with trio.fail_after(10):
            while not calls:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert calls == ["whole"]
        key.close()
        await client.close()
        region.close()
    finally:
        await worker_cm.__aexit__(None, None, None)
