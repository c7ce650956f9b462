"""Registry work in worker threads that stop when their request does.

Parsing a schema or checking compatibility is CPU work that can take a while, so it runs in a
worker thread rather than on the event loop. A thread cannot be killed, and trio's handler
timeout (or a shutdown) cannot interrupt one, so each job carries a :class:`limits.Budget`: its
loops call ``limits.checkpoint()``, which raises once the request's time is spent or the
request was cancelled. When the waiting trio task is cancelled, :meth:`Workers.run` stops the
budget and waits (shielded, briefly) until the thread has noticed, so nothing of the request
keeps running — or holding memory — after it ended, and shutdown does not wait on a parser.

A few workers at most run at once (the limiter): with the GIL, more would only take turns and
starve the event loop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

from registry.limits import Budget, WorkStopped

T = TypeVar("T")

WORKERS = 2
# How long a cancelled request waits for its worker to reach a checkpoint. Checkpoints are
# microseconds apart except inside single library calls (json.loads, fastavro, protobuf's C
# code), which the size limits keep well under this.
STOP_GRACE_S = 2.0


class Workers:
    def __init__(self, threads: int = WORKERS) -> None:
        self.limiter = trio.CapacityLimiter(threads)

    async def run(self, budget: Budget, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread under ``budget``; raises what ``fn`` raises, or
        :class:`WorkStopped` ("timeout") when the budget runs out first."""
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        lock = threading.Lock()
        started = False

        def in_thread() -> T:
            nonlocal started
            with lock:
                if budget.stopped:  # cancelled while waiting for a worker
                    raise WorkStopped("cancelled")
                started = True
            try:
                with budget.active():
                    return fn(*args)
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(finished.set)

        try:
            return await trio.to_thread.run_sync(in_thread, limiter=self.limiter,
                                                 abandon_on_cancel=True)
        except trio.Cancelled:
            with lock:
                budget.stop()
                running = started
            if running:
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE_S):
                    await finished.wait()
            raise
