"""The sidecar's buffer pool under trio: fair shares, loans and the stream handler.

The pool, the loans and their ownership, the reader and the stream handler are the real code;
only the far ends are stand-ins (``tests.unit.sidecar_rig``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma import sidecar as sidecar_module
from rdma.pool import BufferPool, PoolConfigError, ReleaseRefused, resolve_shares
from rdma.reader import ReadFailed
from rdma.sidecar import Sidecar, SidecarConfig
from tests.unit.sidecar_rig import CHUNK, file_id, let_ucx_finish, make_rig

pytestmark = pytest.mark.timeout(120)


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


class ConsumerEnd:
    """A read stream's consumer end: ``requests_in`` takes what the test sends (closing it
    ends the stream), ``replies`` collects what the handler answered."""

    def __init__(self, sidecar: Sidecar, account: Any) -> None:
        self.requests_in, self._requests = trio.open_memory_channel[Any](10)
        self.replies: list[sidecar_pb.ReadReply] = []
        self._sidecar, self._account = sidecar, account

    async def _recv(self) -> Any:
        try:
            return await self._requests.receive()
        except trio.EndOfChannel:
            return None

    async def serve(self) -> None:
        await self._sidecar.serve_read_stream(self._recv, self.replies.append,
                                              account=self._account)


async def test_a_stream_gives_back_its_loans_and_refuses_foreign_releases(
        tmp_path: Path) -> None:
    async with make_rig(tmp_path) as rig:
        rig.use_ucx(True)
        sidecar = Sidecar(SidecarConfig(socket=tmp_path / "s.sock"), rig.reader)
        mine, theirs = (rig.pool.account_for(k, lambda k=k: k) for k in ("mine", "theirs"))
        foreign = await rig.reader.fetch(theirs, file_id(9), 0, 10, lend_to=theirs)
        consumer = ConsumerEnd(sidecar, mine)
        requests_in, replies = consumer.requests_in, consumer.replies

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer.serve)
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


async def test_a_stream_over_its_reads_in_flight_is_refused_and_still_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_READS_IN_FLIGHT a read is answered 429 at once rather than becoming one more
    waiting task, and the stream is still read: its releases keep working."""
    monkeypatch.setattr(sidecar_module, "MAX_READS_IN_FLIGHT", 2)
    async with make_rig(tmp_path, buffers=8) as rig:
        rig.use_ucx(True)
        rig.worker.paused = True  # the GETs stay under way
        sidecar = Sidecar(SidecarConfig(socket=tmp_path / "s.sock"), rig.reader)
        consumer = ConsumerEnd(sidecar, rig.pool.account_for("c", lambda: "c"))
        requests_in, replies = consumer.requests_in, consumer.replies

        def read(n: int) -> sidecar_pb.ReadRequest:
            return sidecar_pb.ReadRequest(file_id=file_id(1), offset=n, size=10, request_id=n)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer.serve)
            for n in (1, 2, 3):
                await requests_in.send(read(n))
            await trio.testing.wait_all_tasks_blocked()
            assert [(r.request_id, r.status) for r in replies] == [(3, 429)]
            assert "over 2 reads in flight" in replies[0].error
            assert sidecar.counters["reads_over_limit"] == 1
            # A release (of nothing: 404) is still read and answered meanwhile.
            await requests_in.send(sidecar_pb.ReadRequest(release=[12345], request_id=4))
            await trio.testing.wait_all_tasks_blocked()
            assert (replies[-1].request_id, replies[-1].status) == (4, 404)
            rig.worker.paused = False
            await let_ucx_finish()
            assert sorted(r.request_id for r in replies if r.status == 200) == [1, 2]
            await requests_in.send(read(5))  # room again
            await let_ucx_finish()
            assert (replies[-1].request_id, replies[-1].status) == (5, 200)
            await requests_in.aclose()
        await let_ucx_finish()
        rig.assert_whole()


def test_an_account_is_looked_up_without_being_made() -> None:
    """A reply that never left, for a connection that has closed meanwhile: taking its loan
    back must not make that connection a new, empty account (one leaked per connection)."""
    pool = BufferPool(2, 4096)
    connection = object()
    assert pool.existing_account(connection) is None
    account = pool.account_for(connection, lambda: "c")
    assert pool.existing_account(connection) is account
    pool.close_account(account)
    assert pool.existing_account(connection) is None
    assert pool.stats()["clients"] == 0
