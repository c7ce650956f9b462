"""Requests and progress: how trio waits for UCX (the base of `Worker`).

UCX makes progress only inside ``ucp_worker_progress``; completion callbacks, error callbacks
and incoming connections are all delivered from there. The worker's nursery runs one
*progress task*::

    loop:
        drain:   ucp_worker_progress() until it reports no more work
        arm:     ucp_worker_arm()  -> BUSY: more work appeared, go round again
                                   -> OK:   the event fd will fire on the next event
        sleep:   trio.lowlevel.wait_readable(event fd)

Draining before arming is UCX's rule; skipping it can sleep through an event that already
happened. A task that posts a request also progresses *inline* for a few rounds (shared memory
and cma finish their copy right there, saving a trip through the scheduler) and then wakes the
progress task, because a request posted after the worker was armed may need polling the event fd
will not announce. Each request is an `_Op` keyed by a token UCX hands back to the completion
callback; a task that has to wait for one waits on a `trio.Event` the callback sets.

Memory handed to an in-flight request stays referenced by its `_Op` until UCX completes the
request or the worker is destroyed, so cancelling a wait never frees memory UCX may still write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from rdma.ucx import _binding, errors
from rdma.ucx.errors import PeerError, UcxError, is_peer_status

if TYPE_CHECKING:
    from rdma.ucx.endpoint import Endpoint

log = logging.getLogger("kelp.ucx")

INLINE_PROGRESS_ROUNDS = 256  # bounded so one big transfer cannot starve other tasks for long
DRAIN_ROUNDS = 1024


class _Op:
    """One in-flight UCX request, keyed by the token passed as its ``user_data``."""

    __slots__ = ("done", "endpoint", "error", "event", "keep", "on_done", "request", "status",
                 "what")

    def __init__(
        self,
        what: str,
        endpoint: Endpoint | None,
        keep: Any,
        on_done: Callable[[int], None] | None = None,
    ) -> None:
        self.what = what
        self.endpoint = endpoint
        self.keep = keep  # buffers UCX reads or writes: alive until UCX completes the request
        self.request: Any = None  # the UCX request handle while in flight
        self.on_done = on_done
        self.status: int | None = None  # UCX's completion status
        self.error: UcxError | None = None  # set early when the endpoint fails
        self.done = False
        self.event: trio.Event | None = None  # made only if a task has to wait (rarely, for shm)


class Progress:
    """Request tracking and the progress loop; `Worker` builds on it and sets these up."""

    _binding: _binding.Binding
    _ffi: Any
    _lib: Any
    _c: Any
    _handle: Any  # ucp_worker_h
    _efd: int  # the worker's event fd
    _ops: dict[int, _Op]  # in flight, by token
    _tokens: Any  # an itertools.count of request tokens
    _params: Any  # one ucp_request_param_t, reused: UCX reads it only during the call
    _cb_send: Any  # the completion callback's C pointer
    _sleep: trio.CancelScope | None  # the progress task's wait, cancelled to wake it
    _fatal: BaseException | None  # why the progress loop died, if it did

    def _check_usable(self) -> None:
        """Raise unless the worker may still be used (`Worker` knows: closed, forked, failed)."""
        raise NotImplementedError

    def _close_scheduled(self) -> None:
        """Endpoint work deferred out of UCX callbacks; run after each progress round."""
        raise NotImplementedError

    # -- errors and small helpers -------------------------------------------------------------

    def _status_text(self, status: int) -> str:
        return self._ffi.string(self._lib.ucs_status_string(status)).decode()

    def _error(self, status: int, what: str, endpoint: Endpoint | None = None) -> UcxError:
        if endpoint is not None and endpoint.error is not None:
            return endpoint.error
        cls = PeerError if is_peer_status(status) else UcxError
        return cls(status, what, self._status_text(status))

    def _check(self, status: int, what: str) -> None:
        if status != self._c.UCS_OK:
            raise self._error(status, what)

    def _address_of(self, cdata: Any) -> int:
        return int(self._ffi.cast("uintptr_t", cdata))

    def _request_params(self, token: int, *, memh: Any = None, flags: int = 0) -> Any:
        c, p = self._c, self._params
        p.op_attr_mask = c.UCP_OP_ATTR_FIELD_CALLBACK | c.UCP_OP_ATTR_FIELD_USER_DATA
        p.cb.send = self._cb_send
        p.user_data = self._ffi.cast("void *", token)
        if memh is not None:
            p.op_attr_mask |= c.UCP_OP_ATTR_FIELD_MEMH
            p.memh = memh
        if flags:
            p.op_attr_mask |= c.UCP_OP_ATTR_FIELD_FLAGS
            p.flags = flags
        return p

    def _split(self, ret: Any) -> int | None:
        """A ``ucs_status_ptr_t``: None for a request handle, else the (immediate) status."""
        value = self._address_of(ret)
        if value == 0:
            return 0
        if value > _binding.UINTPTR_MAX + self._c.UCS_ERR_LAST:  # UCS_PTR_IS_ERR
            return value - _binding.UINTPTR_MAX - 1
        return None

    @property
    def pending(self) -> int:
        """Requests UCX has not completed yet (including abandoned ones)."""
        return len(self._ops)

    # -- requests -----------------------------------------------------------------------------

    def _track(
        self,
        ret: Any,
        token: int,
        what: str,
        endpoint: Endpoint | None,
        keep: Any,
        on_done: Callable[[int], None] | None = None,
    ) -> _Op:
        """Turn the return of an nbx call into an `_Op` (already done if it completed)."""
        op = _Op(what, endpoint, keep, on_done)
        status = self._split(ret)
        if status is None:
            op.request = ret
            self._ops[token] = op
            if endpoint is not None:
                endpoint._ops.add(token)
        else:
            self._resolve(op, status)
        return op

    def _resolve(self, op: _Op, status: int) -> None:
        op.status = status
        op.done = True
        if op.event is not None:
            op.event.set()
        if op.on_done is not None:
            op.on_done(status)

    async def _wait(self, op: _Op, *, schedule: bool = True) -> None:
        """Wait for ``op``; raise its error. A trio checkpoint either way (a loop of GETs that
        shared memory finishes inline must still let deadlines and other tasks run), unless
        the caller says it yields soon anyway (``schedule=False``: a read task about to end
        spares a trip round the scheduler)."""
        if not op.done and op.error is None:
            self._progress_inline(op)
        if op.done or op.error is not None:
            if schedule:
                await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            op.event = trio.Event()
            self._wake()
            await op.event.wait()  # cancellation leaves `op` tracked until UCX is done with it
        self._finished(op)

    def _fail_ops(self, tokens: Any, error: UcxError) -> None:
        for token in list(tokens):
            op = self._ops.get(token)
            if op is not None and not op.done and op.error is None:
                op.error = error
                if op.event is not None:
                    op.event.set()

    def _on_send_complete(self, request: Any, status: int, user_data: Any) -> None:
        """UCX's completion callback (inside ``ucp_worker_progress``: record and wake only)."""
        self._lib.ucp_request_free(request)
        token = self._address_of(user_data)
        op = self._ops.pop(token, None)
        if op is None:
            return
        if op.endpoint is not None:
            op.endpoint._ops.discard(token)
        self._resolve(op, status)

    # -- progress -----------------------------------------------------------------------------

    def _progress_inline(self, op: _Op) -> None:
        lib, handle = self._lib, self._handle
        for _ in range(INLINE_PROGRESS_ROUNDS):
            if op.done or op.error is not None or not lib.ucp_worker_progress(handle):
                break
        self._close_scheduled()

    def _wake(self) -> None:
        if self._sleep is not None:
            self._sleep.cancel()

    def _drain(self) -> None:
        lib, handle = self._lib, self._handle
        for _ in range(DRAIN_ROUNDS):
            if not lib.ucp_worker_progress(handle):
                break
        self._close_scheduled()

    async def _progress_loop(self) -> None:
        busy = self._c.UCS_ERR_BUSY
        try:
            while True:
                self._drain()
                status = self._lib.ucp_worker_arm(self._handle)
                if status == busy:
                    await trio.lowlevel.checkpoint()  # more work already queued: go round
                    continue
                self._check(status, "ucp_worker_arm")
                with trio.CancelScope() as self._sleep:
                    await trio.lowlevel.wait_readable(self._efd)
                self._sleep = None
        except Exception as exc:
            # Never let the nursery die with a half-working worker: record, fail every waiter.
            log.exception("UCX progress loop failed")
            self._fatal = exc
            error = UcxError(errors.IO_ERROR, "worker", f"progress failed: {exc!r}")
            self._fail_ops(list(self._ops), error)

    # -- operations (called by Endpoint) ------------------------------------------------------

    def _post_get(
        self,
        endpoint: Endpoint,
        cdata: Any,
        size: int,
        remote: int,
        rkey: Any,
        memh: Any,
        settled: Callable[[], None] | None = None,
    ) -> _Op:
        """Post a GET and progress inline (no schedule point): the op, done or in flight."""
        try:
            self._check_usable()
            handle = endpoint._live_handle()
        except BaseException:
            if settled is not None:  # never posted
                settled()
            raise
        token = next(self._tokens)
        params = self._request_params(token, memh=memh)
        ret = self._lib.ucp_get_nbx(handle, cdata, size, remote, rkey, params)
        on_done = None if settled is None else (lambda _status: settled())
        op = self._track(ret, token, "get", endpoint, cdata, on_done)
        if not op.done and op.error is None:
            self._progress_inline(op)
            if not op.done:
                self._wake()  # the progress task polls for it, whether or not anyone waits
        return op

    def _finished(self, op: _Op) -> bool:
        """True if ``op`` completed; raises its error if it failed; False while in flight."""
        if op.done and op.status == self._c.UCS_OK:
            return True  # completed, even if the endpoint failed right after
        if op.error is not None:
            raise op.error
        if op.done:
            assert op.status is not None
            raise self._error(op.status, op.what, op.endpoint)
        return False

    async def _run_flush(self, endpoint: Endpoint) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        handle = endpoint._live_handle()
        token = next(self._tokens)
        ret = self._lib.ucp_ep_flush_nbx(handle, self._request_params(token))
        await self._wait(self._track(ret, token, "flush", endpoint, None))
