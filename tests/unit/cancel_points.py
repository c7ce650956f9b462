"""Cancel an operation at its k-th checkpoint, for every k, and check what it left behind.

A trio task only loses control at a checkpoint, so "cancelled at every await point" is
"cancelled after its k-th scheduling step, for k = 0, 1, 2, … until it completes". An
instrument counts the steps of the task running the operation (and, with ``subtree``, of every
task it starts in its own nurseries: a connection's request tasks, a stream's pump) and cancels
the operation's scope right after step k. With ``every_task`` every task's steps count: for
work the operation hands to tasks it does not own (trio-asyncio runs an asyncio callback's
trio half in a task of its loop). A checkpoint that only yields (no cancellation
delivered there) passes the cancellation on to the next one, so no await is skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

# An operation that never completes would loop forever: no test here needs anywhere near this.
MAX_POINTS = 5000


def _descends_from(task: trio.lowlevel.Task, root: trio.lowlevel.Task) -> bool:
    while task is not root:
        nursery = task.parent_nursery
        if nursery is None or nursery.parent_task is None:
            return False
        task = nursery.parent_task
    return True


class _CancelAfterSteps(trio.abc.Instrument):
    def __init__(self, scope: trio.CancelScope, steps: int, subtree: bool,
                 every_task: bool) -> None:
        self.scope, self.steps = scope, steps
        self.subtree, self.every_task = subtree, every_task
        self.root: trio.lowlevel.Task | None = None
        self.seen = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        root = self.root
        if root is None or self.seen >= self.steps:
            return
        if (task is root or self.every_task
                or (self.subtree and _descends_from(task, root))):
            self.seen += 1
            if self.seen == self.steps:
                self.scope.cancel()


async def run_cancelled_at(point: int, call: Callable[[], Awaitable[Any]], *,
                           subtree: bool = False, every_task: bool = False
                           ) -> tuple[bool, Any]:
    """Run ``call()`` in a task of its own, cancelled after its ``point``-th step (0: before
    it starts). Returns (completed, its result or the exception it raised); completed is False
    when the cancellation stopped it."""
    scope = trio.CancelScope()
    instrument = _CancelAfterSteps(scope, point, subtree, every_task)
    result: list[tuple[bool, Any]] = []
    if point == 0:
        scope.cancel()

    async def target() -> None:
        instrument.root = trio.lowlevel.current_task()
        try:
            with scope:  # strips the Cancelled out of a group that also holds errors
                result.append((True, await call()))
        except Exception as exc:  # a failure is an outcome too; Cancelled is not caught
            result.append((True, exc))

    trio.lowlevel.add_instrument(instrument)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(target)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    if not result:
        return False, None
    # A cancelled operation may end in an error rather than in Cancelled: that run did not
    # complete either (the caller judges the error).
    return not scope.cancel_called, result[0][1]


async def cancel_at_every_point(
        call: Callable[[], Awaitable[Any]],
        check: Callable[[bool, Any], Awaitable[None]], *,
        subtree: bool = False, every_task: bool = False, min_points: int = 2) -> int:
    """Run ``call`` cancelled at point 0, 1, 2, … until a run completes uncancelled, awaiting
    ``check(completed, outcome)`` after each run (it asserts nothing leaked). Returns how many
    points were cancelled; fails if that is below ``min_points`` (then the operation had
    nothing to cancel and the test proved nothing)."""
    for point in range(MAX_POINTS):
        completed, outcome = await run_cancelled_at(point, call, subtree=subtree,
                                                    every_task=every_task)
        await check(completed, outcome)
        if completed:
            assert point >= min_points, f"only {point} checkpoints were cancelled"
            return point
    raise AssertionError(f"still not complete after {MAX_POINTS} cancellation points")


async def settle() -> None:
    """Let everything woken by a cancellation run to where it blocks again."""
    await trio.testing.wait_all_tasks_blocked()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Until ``condition()`` holds (work in threads does not count as blocked tasks)."""
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.001)
