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

from registry.core import Job, NotReady, ParsedCache
from registry.errors import RegistryError
from registry.limits import WORK_TIMEOUT_S, Budget, WorkStopped, too_slow

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


class Jobs:
    """Runs the work a registry rule turns out to need, then the rule again.

    The rules of ``core.py`` are synchronous and read parsed schemas and verdicts from the
    cache; a miss raises :class:`NotReady` with the job that fills it. A job runs in a worker,
    its result goes into the cache, and the rule is tried again."""

    def __init__(self, workers: Workers, cache: ParsedCache) -> None:
        self.workers = workers
        self.cache = cache

    async def ready(self, attempt: Callable[[], T],
                     budget: Budget | None = None) -> T:
        """``attempt()``, after running in workers whatever work it needs first.

        ``attempt`` reads parsed schemas and verdicts from the cache; each miss raises
        :class:`NotReady` with the job that fills it, which runs in a worker before ``attempt``
        runs again. All the jobs of one request share one time budget."""
        while True:
            try:
                return attempt()
            except NotReady as need:
                budget = budget or Budget(WORK_TIMEOUT_S)
                await self.do(need.job, budget)

    async def prepare(self, attempt: Callable[[], object], budget: Budget) -> None:
        """As :meth:`ready` for the work alone: what ``attempt`` itself raises is ignored
        (errors of the work still raise)."""
        while True:
            try:
                attempt()
                return
            except NotReady as need:
                await self.do(need.job, budget)
            except RegistryError:
                return

    async def do(self, job: Job, budget: Budget) -> None:
        try:
            result = await self.workers.run(budget, job.run)
        except WorkStopped:  # out of time (a cancelled request raises Cancelled)
            raise too_slow(budget.seconds, job.what) from None
        self.cache.store(job, result)
