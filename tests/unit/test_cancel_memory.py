"""gateway.memory under cancellation: a cancelled wait takes nothing and holds nobody up."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from gateway.memory import BytePool, Output
from tests.unit.cancel_points import cancel_at_every_point, settle


async def test_a_reserve_cancelled_at_every_point_takes_nothing() -> None:
    """A reserve that must wait for another holder's bytes, cancelled anywhere: the pool holds
    what the other holder still holds and nothing of the cancelled reserve's."""
    state: dict[str, Any] = {}

    async def reserve_while_full() -> int:
        pool = state["pool"] = BytePool(100)
        state["released"] = False
        held = await pool.reserve(80)

        async def give_back_later() -> None:
            for _ in range(3):
                await trio.lowlevel.checkpoint()
            pool.release(held)
            state["released"] = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(give_back_later)
            return await pool.reserve(50)

    async def check(completed: bool, outcome: Any) -> None:
        pool: BytePool = state["pool"]
        other = 0 if state["released"] else 80
        took = outcome if isinstance(outcome, int) else 0  # the reserve returned
        assert took == (50 if completed else took)
        assert pool.used == other + took, (completed, pool.used)
        # The pool still works: what is free can be reserved at once.
        with trio.fail_after(1):
            pool.release(await pool.reserve(pool.free))

    assert await cancel_at_every_point(reserve_while_full, check, subtree=True) >= 3


async def test_cancelled_waiters_do_not_hold_up_the_others() -> None:
    pool = BytePool(100)
    held = await pool.reserve(100)
    got: list[int] = []

    async def waiter(size: int) -> None:
        got.append(await pool.reserve(size))

    async with trio.open_nursery() as nursery:
        doomed = trio.CancelScope()

        async def doomed_waiter() -> None:
            with doomed:
                await pool.reserve(1000)  # larger than the pool: waits for it to be empty

        nursery.start_soon(doomed_waiter)
        nursery.start_soon(waiter, 60)
        await settle()
        doomed.cancel()
        await settle()
        assert pool.used == 100 and got == []
        pool.release(held)
        with trio.fail_after(1):
            await settle()
    assert got == [60] and pool.used == 60
    pool.release(60)
    assert pool.used == 0 and pool.free == 100


async def test_waiting_for_output_to_drain_cancelled_leaves_the_count_and_the_turn() -> None:
    """A fetch waits for its connection's output to drain, then takes the connection's fetch
    turn; cancelled anywhere, the unsent count is the client's alone and the turn is free."""
    state: dict[str, Any] = {}

    async def drain_then_take_turn() -> None:
        output = state["output"] = Output(drained_below=10)
        output.queued(25)

        async def client_reads() -> None:
            for _ in range(2):
                await trio.lowlevel.checkpoint()
            output.written(20)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_reads)
            await output.wait_drained()
            async with output.fetch_turn:
                await trio.lowlevel.checkpoint()

    async def check(completed: bool, outcome: Any) -> None:
        output: Output = state["output"]
        assert output.unsent in (5, 25) and (output.unsent == 5 or not completed)
        assert not output.fetch_turn.locked()  # a cancelled turn is given back
        output.written(output.unsent)
        with trio.fail_after(1):
            await output.wait_drained()  # and the next fetch is not held up

    assert await cancel_at_every_point(drain_then_take_turn, check, subtree=True) >= 3
