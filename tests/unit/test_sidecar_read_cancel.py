"""The sidecar's read path under trio, cancelled at every checkpoint.

The pool, the loans and their ownership and the reader (sessions, fallback, deadlines) are the
real code; only the far ends are stand-ins (``tests.unit.sidecar_rig``). A last group drives the
real libucp binding's ``settled`` hook that the reader relies on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rdma import ucx
from rdma.reader import ReadFailed
from tests.unit.sidecar_rig import CHUNK, SIZE, UCX_ADDRESS, file_id, let_ucx_finish, make_rig

pytestmark = pytest.mark.timeout(120)


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
        assert k >= 3  # the read really had checkpoints to cancel at (the HTTP path has 2)


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
