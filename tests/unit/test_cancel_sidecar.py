"""The sidecar's buffer pool and read stream cancelled at every checkpoint give every slot back.

The pool, the reader and the stream handler are real; the far ends (the broker's OpenRead and
CloseRead, the UCX endpoint) are the stand-ins of ``test_sidecar_pool``, whose rig this reuses:
a fake UCX that keeps writing into a slot after its reader gave up, as UCX does.
(``test_sidecar_pool`` cancels a single read at every checkpoint; here it is a waiter for a
slot, and a whole stream of zero-copy and copying reads with releases.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpclib.const
import pytest
import trio
import trio.testing
import trio_asyncio

from kelp import grpc
from kelp.routes import SIDECAR
from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma.pool import BufferPool, Slot
from rdma.sidecar import Sidecar, SidecarConfig
from tests.unit.cancel_points import cancel_at_every_point
from tests.unit.test_sidecar_pool import CHUNK, file_id, let_ucx_finish, make_rig


async def test_a_slot_waiter_cancelled_at_every_point_leaves_the_pool_whole(
        tmp_path: Path) -> None:
    """A client over its share waits for a slot another client gives back; cancelled anywhere
    — also just as the slot is handed to it — it holds nothing afterwards and nobody waits."""
    pool = BufferPool(4, 4096, share=2, reserve=1, directory=tmp_path)
    a, b = pool.account_for("a", lambda: "a"), pool.account_for("b", lambda: "b")
    held: dict[str, list[Slot]] = {}

    async def take_shares() -> None:
        held["a"] = [await pool.acquire(a), await pool.acquire(a)]
        held["b"] = [await pool.acquire(b)]  # only the HTTP reserve is free now

    try:
        async def wait_for_a_slot() -> None:
            async def a_gives_back_later() -> None:
                for _ in range(2):
                    await trio.lowlevel.checkpoint()
                pool.give_back(held["a"].pop())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(a_gives_back_later)
                slot = await pool.acquire(b)
                try:
                    await trio.lowlevel.checkpoint()  # reading into it
                finally:
                    pool.give_back(slot)

        async def check(completed: bool, outcome: Any) -> None:
            assert outcome is None, outcome
            assert pool.waiting == 0
            assert a.held == len(held["a"]) and b.held == 1  # b's waiter holds nothing
            for slot in held.pop("a") + held.pop("b"):
                pool.give_back(slot)
            assert pool.free == pool.count, pool.stats()
            assert all(slot.holder is None for slot in pool.slots)
            await take_shares()  # the next run starts from full shares again

        await take_shares()
        assert await cancel_at_every_point(wait_for_a_slot, check, subtree=True) >= 4
    finally:
        pool.close()


@pytest.mark.parametrize("ucx", ["inline", "posted", "off"])
async def test_a_read_stream_cancelled_at_every_point_gives_back_its_loans(
        tmp_path: Path, ucx: str) -> None:
    """Two zero-copy reads (each lends its slot to the stream), a copying read, then a
    release of the first loan with a read of its chunk again (its UCX session cached: served
    in the stream's own task when the GET finishes inline, else abandoned and read again): a
    stream cancelled anywhere — the consumer gone — gives back every slot it lent or was
    reading into."""
    async with make_rig(tmp_path, buffers=8) as rig:  # a share of 4: room for all three
        rig.use_ucx(ucx != "off")
        rig.worker.inline = ucx == "inline"
        sidecar = Sidecar(SidecarConfig(socket=tmp_path / "s.sock"), rig.reader)
        account = rig.pool.account_for("consumer", lambda: "consumer")
        state: dict[str, Any] = {}

        async def one_stream() -> None:
            replies: list[sidecar_pb.ReadReply] = []
            state["replies"] = replies
            answered, reread = trio.Event(), trio.Event()
            script = [sidecar_pb.ReadRequest(file_id=file_id(n), offset=n, size=1000,
                                             zero_copy=n < 3, request_id=n) for n in (1, 2, 3)]

            def send(reply: sidecar_pb.ReadReply) -> None:
                replies.append(reply)
                if len(replies) == 3:
                    answered.set()
                elif len(replies) == 4:
                    state["fast"] = rig.reader.counters["inline_reads"]
                    reread.set()

            async def recv() -> sidecar_pb.ReadRequest | None:
                await trio.lowlevel.checkpoint()
                if script:
                    return script.pop(0)
                if "released" not in state:
                    await answered.wait()
                    first = next(r for r in replies if r.request_id == 1)
                    state["released"] = True
                    return sidecar_pb.ReadRequest(file_id=file_id(1), offset=5, size=1000,
                                                  release=[first.shared.handle], request_id=4)
                await reread.wait()  # a stream that ends cancels the reads still in flight
                return None

            state.pop("released", None)
            rig.reader.counters["inline_reads"] = 0
            await sidecar.serve_read_stream(recv, send, account=account)

        async def check(completed: bool, outcome: Any) -> None:
            assert outcome is None, outcome
            await let_ucx_finish()
            rig.assert_whole()  # every slot free, nothing lent or pending, no stray task
            assert account.held == 0
            if completed:
                replies = sorted(state["replies"], key=lambda r: r.request_id)
                assert [r.status for r in replies] == [200, 200, 200, 200]
                assert replies[2].data == CHUNK[3:1003]
                assert replies[3].data == CHUNK[5:1005] and not replies[3].release_refused
                # Inline, at least the read of a chunk whose session is cached (earlier runs
                # left the others' cached too).
                assert state["fast"] >= 1 if ucx == "inline" else state["fast"] == 0

        points = await cancel_at_every_point(one_stream, check, subtree=True)
        assert points > 5


async def test_a_read_cancelled_at_every_point_leaves_no_lease_behind(tmp_path: Path) -> None:
    """Every lease the broker granted for a read is either held by a session the reader keeps
    (and will close) or handed back: a read cancelled anywhere — opening its session,
    connecting its endpoint — does not leave the broker holding a mapping for nobody.

    Found by this test: ``Reader._session`` closed the fresh lease only on ReadFailed, so a
    read cancelled while it waited for the endpoint lock or the connect forgot a lease the
    broker then kept (segment mapped and registered) until it expired, 60 s later."""
    async with make_rig(tmp_path) as rig:
        rig.use_ucx(True)
        account = rig.pool.account_for("client", lambda: "client")
        runs = {"n": 0}

        async def read_on_a_new_endpoint() -> Any:
            runs["n"] += 1  # a new chunk: OpenRead, then connect, then GET
            return await rig.reader.fetch(account, file_id(runs["n"]), 0, 100)

        async def check(completed: bool, outcome: Any) -> None:
            assert not isinstance(outcome, Exception), outcome
            await let_ucx_finish()
            rig.assert_whole()
            cached = {session.lease_id for peer in rig.reader._peers.values()
                      for session in peer.sessions.values()}
            assert rig.broker.open == cached, (
                f"read {runs['n']}: the broker holds leases {rig.broker.open - cached} "
                "that no session of the reader knows of")
            for address in list(rig.reader._peers):  # the next read connects anew
                await rig.reader._drop_peer(address)
            assert rig.broker.open == set()

        assert await cancel_at_every_point(read_on_a_new_endpoint, check) >= 3


async def test_a_unary_zero_copy_read_cancelled_by_its_caller_lends_nothing(
        tmp_path: Path) -> None:
    """A zero-copy ``Read`` over a real gRPC connection, cancelled by its caller at every
    point: a loan whose handle never reached the caller cannot be released by it, so it must
    not stay lent (the caller's connection stays open, so only ``--lend-ms`` would end it).

    Found by this test: the unary Read lent the slot (``zero_copy``) and then sent the reply;
    a caller that reset the call in between (a timeout, an interrupted read) lost the only copy
    of the handle and the slot counted against its share until ``--lend-ms`` (30 s). Now a
    reply made but never sent gives its loan back (``grpc.on_unsent``)."""
    async with trio_asyncio.open_loop(), make_rig(tmp_path, buffers=8) as rig:
        rig.use_ucx(True)
        sidecar = Sidecar(SidecarConfig(socket=tmp_path / "s.sock"), rig.reader)
        mapping = sidecar.grpc_mapping()
        read_path = SIDECAR.read.path
        # A reply written to the socket may still be lost to a caller cancelled just then:
        # nothing the sidecar can know (--lend-ms ends those loans). Note which replies went
        # out whole; a loan whose reply never did is the sidecar's to take back.
        written: set[int] = set()
        serve_read = mapping[read_path]

        async def noting_written(stream: Any) -> None:
            send_message = stream.send_message

            async def send_and_note(message: Any, **kwargs: Any) -> None:
                await send_message(message, **kwargs)
                if message.shared is not None and message.shared.handle:
                    written.add(message.shared.handle)

            stream.send_message = send_and_note
            await serve_read.func(stream)

        mapping[read_path] = grpclib.const.Handler(noting_written, serve_read.cardinality,
                                                   serve_read.request_type,
                                                   serve_read.reply_type)
        address = grpc.Address(path=str(tmp_path / "s.sock"))
        async with trio.open_nursery() as server:
            await server.start(grpc.serve, mapping, address)
            channel = grpc.Channel(address)
            runs = {"n": 0}

            async def read() -> sidecar_pb.ReadReply:
                runs["n"] += 1
                return await channel.call(SIDECAR.read, sidecar_pb.ReadRequest(
                    file_id=file_id(1), offset=runs["n"], size=100, zero_copy=True))

            async def check(completed: bool, outcome: Any) -> None:
                assert not isinstance(outcome, Exception), outcome
                await let_ucx_finish()
                await trio.sleep(0.05)  # the server hears of the caller's reset
                (account,) = rig.pool._accounts.values()
                if isinstance(outcome, sidecar_pb.ReadReply):
                    assert outcome.status == 200, outcome.error
                for handle in written & set(account.loans):  # the caller's to release
                    rig.pool.release(handle, account)
                assert rig.pool.lent == 0, (
                    f"read {runs['n']}: a buffer stays lent whose handle was never sent")
                rig.assert_whole()

            await read()  # connected: the caller's account exists
            rig.pool.release(next(iter(written)), *rig.pool._accounts.values())
            assert await cancel_at_every_point(read, check, every_task=True) >= 3
            channel.close()
            server.cancel_scope.cancel()
