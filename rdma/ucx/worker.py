"""The UCP context and worker, and how trio drives them.

There is one `Worker` per process (it owns the UCP context too), opened with::

    async with open_worker() as worker:
        ...

**Threading.** The worker is created in ``UCS_THREAD_MODE_SINGLE``: UCX takes no locks and every
call must come from the thread that runs trio. Nothing here ever goes to ``trio.to_thread``.

**Progress.** UCX makes progress only inside ``ucp_worker_progress``; completion callbacks, error
callbacks, incoming connections and active messages are all delivered from there. The worker's
nursery runs one *progress task*::

    loop:
        drain:   ucp_worker_progress() until it reports no more work
        arm:     ucp_worker_arm()  -> BUSY: more work appeared, go round again
                                   -> OK:   the event fd will fire on the next event
        sleep:   trio.lowlevel.wait_readable(event fd)

Draining before arming is UCX's rule; skipping it can sleep through an event that already
happened. A task that posts a request also progresses *inline* for a few rounds (shared memory
and cma finish their copy right there, saving a trip through the scheduler) and then wakes the
progress task, because a request posted after the worker was armed may need polling the event fd
will not announce. Each request's completion callback sets a `trio.Event` its task waits on.

**Lifetime.** Leaving ``open_worker`` closes listeners, endpoints (flushing healthy ones,
forcing failed ones, bounded by a timeout), stops the progress task, unregisters memory and
destroys the worker and context, in that order. Memory handed to an in-flight request stays
referenced until UCX completes the request or the worker is destroyed, so cancelling a wait
never frees memory UCX may still write.

**Fork.** UCX does not survive ``fork()`` (registered memory, its async thread). A child forked
after the worker exists gets `RuntimeError` on any use; starting programs with ``subprocess`` /
``trio.run_process`` (fork+exec) is fine.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from rdma.ucx import _binding, errors
from rdma.ucx.am import AmInbox, AmMessage
from rdma.ucx.endpoint import (
    Endpoint,
    Listener,
    decode_sockaddr,
    encode_sockaddr,
)
from rdma.ucx.errors import PeerError, UcxError, is_peer_status
from rdma.ucx.memory import MemoryRegion, map_file_range

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger("kelp.ucx")

# Settings kelp applies unless the caller's ``config`` or a ``UCX_*`` variable says otherwise.
# NET_DEVICES=lo keeps tcp lanes on loopback: with "all", UCX would also connect the peer's
# non-loopback interface addresses. Set UCX_NET_DEVICES (e.g. mlx5_0:1) on RDMA hardware.
DEFAULT_CONFIG: dict[str, str] = {"NET_DEVICES": "lo"}

INLINE_PROGRESS_ROUNDS = 256  # bounded so one big transfer cannot starve other tasks for long
DRAIN_ROUNDS = 1024
CLOSE_TIMEOUT = 5.0
ERROR_MODES = ("none", "peer")

_active: Worker | None = None  # the process's one worker
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    if _active is not None:
        _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Op:
    """One in-flight UCX request, keyed by the token passed as its ``user_data``."""

    __slots__ = (
        "done",
        "endpoint",
        "error",
        "event",
        "keep",
        "on_done",
        "request",
        "status",
        "what",
    )

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


def _tls_allows_tcp(tls: str) -> bool:
    names = {name.strip() for name in tls.lstrip("^").split(",")}
    if tls.startswith("^"):
        return "tcp" not in names
    return bool(names & {"all", "tcp"})


class Worker:
    """The process's UCP worker. Use `open_worker`; do not construct directly."""

    def __init__(self, config: Mapping[str, str] | None = None) -> None:
        global _active
        if _forked:
            raise RuntimeError("UCX cannot be used in a process forked after UCX was initialised")
        if _active is not None:
            raise RuntimeError("one UCX worker per process: close the existing one first")
        self._binding = b = _binding.load()
        ffi, lib, c = b.ffi, b.lib, b.c
        self._ffi, self._lib, self._c = ffi, lib, c

        settings = {k.removeprefix("UCX_"): str(v) for k, v in (config or {}).items()}
        for name, value in DEFAULT_CONFIG.items():
            if name not in settings and f"UCX_{name}" not in os.environ:
                settings[name] = value
        self.config = settings
        tls = settings.get("TLS") or os.environ.get("UCX_TLS") or "all"
        self.sockaddr_ok = _tls_allows_tcp(tls)

        config_p = ffi.new("ucp_config_t **")
        self._check(lib.ucp_config_read(ffi.NULL, ffi.NULL, config_p), "ucp_config_read")
        try:
            for name, value in settings.items():
                self._check(
                    lib.ucp_config_modify(config_p[0], name.encode(), value.encode()),
                    f"UCX config {name}={value}",
                )
            params = ffi.new("ucp_params_t *")
            params.field_mask = c.UCP_PARAM_FIELD_FEATURES
            params.features = c.UCP_FEATURE_RMA | c.UCP_FEATURE_AM | c.UCP_FEATURE_WAKEUP
            context_p = ffi.new("ucp_context_h *")
            # Ask for the API level both sides know: ours (1.22) or the library's if older.
            minor = min(22, b.version[1])
            self._check(lib.ucp_init_version(1, minor, params, config_p[0], context_p), "ucp_init")
        finally:
            lib.ucp_config_release(config_p[0])
        self._context = context_p[0]

        wparams = ffi.new("ucp_worker_params_t *")
        wparams.field_mask = (
            c.UCP_WORKER_PARAM_FIELD_THREAD_MODE
            | c.UCP_WORKER_PARAM_FIELD_EVENTS
            | c.UCP_WORKER_PARAM_FIELD_FLAGS
        )
        wparams.thread_mode = c.UCS_THREAD_MODE_SINGLE
        wparams.events = c.UCP_WAKEUP_RMA | c.UCP_WAKEUP_TX | c.UCP_WAKEUP_RX
        # Requests of a failed endpoint that UCX never completes are expected (see `_destroy`,
        # which reports them itself); without this flag UCX also warns about each one.
        wparams.flags = c.UCP_WORKER_FLAG_IGNORE_REQUEST_LEAK
        worker_p = ffi.new("ucp_worker_h *")
        status = lib.ucp_worker_create(self._context, wparams, worker_p)
        if status != c.UCS_OK:
            lib.ucp_cleanup(self._context)
            raise self._error(status, "ucp_worker_create")
        self._handle = worker_p[0]
        efd = ffi.new("int *")
        status = lib.ucp_worker_get_efd(self._handle, efd)
        if status != c.UCS_OK:
            lib.ucp_worker_destroy(self._handle)
            lib.ucp_cleanup(self._context)
            raise self._error(status, "ucp_worker_get_efd")
        self._efd = efd[0]

        self._ops: dict[int, _Op] = {}
        self._tokens = itertools.count(1)
        self._idents = itertools.count(1)
        self._endpoints: dict[int, Endpoint] = {}
        self._by_handle: dict[int, Endpoint] = {}  # ucp_ep_h address -> Endpoint (AM replies)
        self._listeners: dict[int, Listener] = {}
        self._regions: set[MemoryRegion] = set()
        self._inboxes: dict[int, AmInbox] = {}
        # Endpoint work that must not run inside UCX callbacks, done after each progress round.
        self._to_close: list[Endpoint] = []  # failed: force-close them
        self._to_finish: list[Endpoint] = []  # UCX released the handle: drop keys, wake waiters
        self._sleep: trio.CancelScope | None = None
        self._fatal: BaseException | None = None
        self._closed = False
        self._params = ffi.new("ucp_request_param_t *")  # UCX reads it only during the call
        self.stats: dict[str, int] = dict.fromkeys(
            ("gets", "get_bytes", "puts", "put_bytes", "am_sent", "am_received", "peer_failures"),
            0,
        )
        self._cb_send = b.callback("kelp_ucx_send_cb", self._on_send_complete)
        self._cb_am_data = b.callback("kelp_ucx_am_data_cb", self._on_am_data_complete)
        self._cb_err = b.callback("kelp_ucx_err_cb", self._on_ep_error)
        self._cb_conn = b.callback("kelp_ucx_conn_cb", self._on_conn_request)
        self._cb_am = b.callback("kelp_ucx_am_recv_cb", self._on_am)
        _active = self

    # -- small helpers ------------------------------------------------------------------------

    @property
    def binding(self) -> _binding.Binding:
        return self._binding

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

    def _check_usable(self) -> None:
        if _forked:
            raise RuntimeError("UCX cannot be used in a process forked after UCX was initialised")
        if self._closed:
            raise UcxError(errors.NOT_CONNECTED, "worker", "worker is closed")
        if self._fatal is not None:
            raise UcxError(errors.IO_ERROR, "worker", f"progress failed: {self._fatal!r}")

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

    # -- requests and progress ----------------------------------------------------------------

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

    async def _wait(self, op: _Op) -> None:
        """Wait for ``op``; raise its error. A trio checkpoint either way."""
        if not op.done and op.error is None:
            self._progress_inline(op)
        if op.done or op.error is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            op.event = trio.Event()
            self._wake()
            await op.event.wait()  # cancellation leaves `op` tracked until UCX is done with it
        if op.done and op.status == self._c.UCS_OK:
            return  # completed, even if the endpoint failed right after
        if op.error is not None:
            raise op.error
        assert op.status is not None
        raise self._error(op.status, op.what, op.endpoint)

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

    def _fail_ops(self, tokens: Any, error: UcxError) -> None:
        for token in list(tokens):
            op = self._ops.get(token)
            if op is not None and not op.done and op.error is None:
                op.error = error
                if op.event is not None:
                    op.event.set()

    # -- callbacks (run inside ucp_worker_progress: record and wake, never block or progress) --

    def _on_send_complete(self, request: Any, status: int, user_data: Any) -> None:
        self._lib.ucp_request_free(request)
        token = self._address_of(user_data)
        op = self._ops.pop(token, None)
        if op is None:
            return
        if op.endpoint is not None:
            op.endpoint._ops.discard(token)
        self._resolve(op, status)

    def _on_am_data_complete(self, request: Any, status: int, length: int, user_data: Any) -> None:
        self._on_send_complete(request, status, user_data)

    def _on_ep_error(self, arg: Any, ep_handle: Any, status: int) -> None:
        endpoint = self._endpoints.get(self._address_of(arg))
        if endpoint is not None:
            self.stats["peer_failures"] += 1
            log.debug("UCX endpoint #%d failed: %s", endpoint.ident, self._status_text(status))
            endpoint._fail(status)

    def _on_conn_request(self, conn_request: Any, arg: Any) -> None:
        listener = self._listeners.get(self._address_of(arg))
        if listener is None or listener.closed:
            return  # UCX rejects requests to a destroyed listener itself
        stats = listener._send.statistics()
        if stats.current_buffer_used >= stats.max_buffer_size:
            log.warning("UCX listener %s: backlog full, rejecting a connection", listener.address)
            self._lib.ucp_listener_reject(listener._handle, conn_request)
            return
        params = self._ffi.new("ucp_ep_params_t *")
        params.field_mask = self._c.UCP_EP_PARAM_FIELD_CONN_REQUEST
        params.conn_request = conn_request
        try:
            endpoint = self._create_endpoint(params, listener.error_mode)
        except UcxError as exc:
            log.warning("UCX listener %s: accepting failed: %s", listener.address, exc)
            return
        listener._offer(endpoint)

    def _on_am(
        self, arg: Any, header: Any, header_length: int, data: Any, length: int, param: Any
    ) -> int:
        ffi, c = self._ffi, self._c
        inbox = self._inboxes.get(self._address_of(arg))
        if inbox is None:
            return c.UCS_OK
        attr = param.recv_attr
        reply_to = None
        if attr & c.UCP_AM_RECV_ATTR_FIELD_REPLY_EP:
            reply_to = self._by_handle.get(self._address_of(param.reply_ep))
        head = bytes(ffi.buffer(header, header_length)) if header_length else b""
        if not attr & c.UCP_AM_RECV_ATTR_FLAG_RNDV:
            inbox._deliver(AmMessage(inbox.am_id, head, bytes(ffi.buffer(data, length)), reply_to))
            self.stats["am_received"] += 1
            return c.UCS_OK
        # Rendezvous: the payload is still on the sender; fetch it into our own buffer.
        if inbox._full():
            inbox.dropped += 1
            return c.UCS_ERR_NO_RESOURCE  # the sender's am_send completes with this error
        payload = bytearray(length)
        cdata = ffi.from_buffer("char[]", payload, require_writable=True)
        token = next(self._tokens)
        params = ffi.new("ucp_request_param_t *")
        params.op_attr_mask = c.UCP_OP_ATTR_FIELD_CALLBACK | c.UCP_OP_ATTR_FIELD_USER_DATA
        params.cb.recv_am = self._cb_am_data
        params.user_data = ffi.cast("void *", token)

        def delivered(status: int) -> None:
            if status == c.UCS_OK:
                self.stats["am_received"] += 1
                inbox._deliver(AmMessage(inbox.am_id, head, payload, reply_to))

        ret = self._lib.ucp_am_recv_data_nbx(self._handle, data, cdata, length, params)
        self._track(ret, token, "am receive", None, cdata, delivered)
        return c.UCS_INPROGRESS  # UCX owns the descriptor now (ucp_am_recv_data_nbx took it)

    # -- endpoints ----------------------------------------------------------------------------

    def _create_endpoint(self, params: Any, error_mode: str) -> Endpoint:
        c = self._c
        if error_mode not in ERROR_MODES:
            raise ValueError(f"error_mode must be one of {ERROR_MODES}")
        ident = next(self._idents)
        params.field_mask |= (
            c.UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | c.UCP_EP_PARAM_FIELD_ERR_HANDLER
        )
        # PEER makes UCX detect failures itself but drops shared memory and cma; NONE keeps
        # them, and the connection manager still reports a dead peer through the callback.
        params.err_mode = (
            c.UCP_ERR_HANDLING_MODE_PEER if error_mode == "peer" else c.UCP_ERR_HANDLING_MODE_NONE
        )
        params.err_handler.cb = self._cb_err
        params.err_handler.arg = self._ffi.cast("void *", ident)
        ep_p = self._ffi.new("ucp_ep_h *")
        self._check(self._lib.ucp_ep_create(self._handle, params, ep_p), "ucp_ep_create")
        endpoint = Endpoint(self, ep_p[0], ident, error_mode=error_mode)
        self._endpoints[ident] = endpoint
        self._by_handle[self._address_of(ep_p[0])] = endpoint
        return endpoint

    async def _connected(self, endpoint: Endpoint) -> Endpoint:
        # Creating an endpoint returns at once; the connection is made in the background.
        # A flush completes once it is usable, or fails if the peer cannot be reached.
        try:
            await self._run_flush(endpoint)
        except BaseException:
            self._begin_close(endpoint, force=True)
            raise
        return endpoint

    async def connect(self, host: str, port: int, *, error_mode: str = "none") -> Endpoint:
        """Connect to a `Listener` at ``host:port`` (numeric IPv4/IPv6) and wait until usable.

        Raises `PeerError` if nobody listens there. Bound the wait with a trio deadline.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        self._require_sockaddr()
        raw = self._ffi.new("char[]", encode_sockaddr(host, port))
        params = self._ffi.new("ucp_ep_params_t *")
        c = self._c
        params.field_mask = c.UCP_EP_PARAM_FIELD_SOCK_ADDR | c.UCP_EP_PARAM_FIELD_FLAGS
        params.flags = c.UCP_EP_PARAMS_FLAGS_CLIENT_SERVER
        params.sockaddr.addr = self._ffi.cast("struct sockaddr *", raw)
        params.sockaddr.addrlen = len(raw) - 1  # char[] from bytes has a trailing NUL
        return await self._connected(self._create_endpoint(params, error_mode))

    async def connect_to_worker(self, address: bytes, *, error_mode: str = "none") -> Endpoint:
        """Connect to a peer worker by its `address` (exchanged out of band)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        raw = self._ffi.from_buffer("char[]", address)
        params = self._ffi.new("ucp_ep_params_t *")
        params.field_mask = self._c.UCP_EP_PARAM_FIELD_REMOTE_ADDRESS
        params.address = self._ffi.cast("ucp_address_t *", raw)
        endpoint = self._create_endpoint(params, error_mode)
        self._ffi.release(raw)
        return await self._connected(endpoint)

    def _require_sockaddr(self) -> None:
        if not self.sockaddr_ok:
            raise UcxError(
                errors.UNSUPPORTED,
                "sockaddr",
                "UCX_TLS must include tcp: the connection manager runs over it",
            )

    def listen(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        backlog: int = 16,
        error_mode: str = "none",
    ) -> Listener:
        """Listen for `connect` on ``host:port``; accepted endpoints use ``error_mode``."""
        self._check_usable()
        self._require_sockaddr()
        if error_mode not in ERROR_MODES:
            raise ValueError(f"error_mode must be one of {ERROR_MODES}")
        ffi, c = self._ffi, self._c
        raw = ffi.new("char[]", encode_sockaddr(host, port))
        ident = next(self._idents)
        params = ffi.new("ucp_listener_params_t *")
        params.field_mask = (
            c.UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | c.UCP_LISTENER_PARAM_FIELD_CONN_HANDLER
        )
        params.sockaddr.addr = ffi.cast("struct sockaddr *", raw)
        params.sockaddr.addrlen = len(raw) - 1
        params.conn_handler.cb = self._cb_conn
        params.conn_handler.arg = ffi.cast("void *", ident)
        listener_p = ffi.new("ucp_listener_h *")
        self._check(
            self._lib.ucp_listener_create(self._handle, params, listener_p), "ucp_listener_create"
        )
        attr = ffi.new("ucp_listener_attr_t *")
        attr.field_mask = c.UCP_LISTENER_ATTR_FIELD_SOCKADDR
        status = self._lib.ucp_listener_query(listener_p[0], attr)
        if status != c.UCS_OK:
            self._lib.ucp_listener_destroy(listener_p[0])
            raise self._error(status, "ucp_listener_query")
        bound = decode_sockaddr(bytes(ffi.buffer(ffi.addressof(attr.sockaddr))))
        listener = Listener(self, listener_p[0], ident, bound or (host, port), backlog, error_mode)
        self._listeners[ident] = listener
        return listener

    def _destroy_listener(self, listener: Listener, handle: Any) -> None:
        self._listeners.pop(listener.ident, None)
        self._lib.ucp_listener_destroy(handle)

    def _schedule_close(self, endpoint: Endpoint) -> None:
        if endpoint._handle is not None and endpoint not in self._to_close:
            self._to_close.append(endpoint)

    def _closed_eps(self, endpoint: Endpoint) -> None:
        # Often called from UCX's completion callback: finish outside it, on the next round.
        self._to_finish.append(endpoint)
        self._wake()

    def _close_scheduled(self) -> None:
        while self._to_close:
            self._begin_close(self._to_close.pop(), force=True)
        while self._to_finish:
            self._finish_close(self._to_finish.pop())

    def _begin_close(self, endpoint: Endpoint, *, force: bool) -> None:
        """Start ``ucp_ep_close_nbx``; `_finish_close` runs when UCX is done with the handle."""
        handle = endpoint._handle
        if handle is None:
            return
        endpoint._handle = None  # UCX forbids any use of the handle from here on
        token = next(self._tokens)
        params = self._request_params(token, flags=self._c.UCP_EP_CLOSE_FLAG_FORCE if force else 0)
        ret = self._lib.ucp_ep_close_nbx(handle, params)
        self._track(ret, token, "close", None, None, lambda _status: self._closed_eps(endpoint))
        self._by_handle.pop(self._address_of(handle), None)

    def _finish_close(self, endpoint: Endpoint) -> None:
        for key in list(endpoint._rkeys):
            key.close()
        closed = UcxError(errors.NOT_CONNECTED, "endpoint", "endpoint is closed")
        self._fail_ops(endpoint._ops, endpoint.error or closed)
        # UCX may never complete requests of a failed NONE-mode endpoint (tcp): ask it to.
        for token in list(endpoint._ops):
            op = self._ops.get(token)
            if op is not None and not op.done:
                self._lib.ucp_request_cancel(self._handle, op.request)
        self._endpoints.pop(endpoint.ident, None)
        endpoint._closed.set()

    # -- operations (called by Endpoint) ------------------------------------------------------

    async def _run_rma(
        self,
        op: str,
        endpoint: Endpoint,
        cdata: Any,
        size: int,
        remote: int,
        rkey: Any,
        memh: Any,
        settled: Callable[[], None] | None = None,
    ) -> None:
        try:
            self._check_usable()
            handle = endpoint._live_handle()
        except BaseException:
            if settled is not None:  # never posted
                settled()
            raise
        token = next(self._tokens)
        params = self._request_params(token, memh=memh)
        post = self._lib.ucp_get_nbx if op == "get" else self._lib.ucp_put_nbx
        ret = post(handle, cdata, size, remote, rkey, params)
        if op == "get":
            self.stats["gets"] += 1
            self.stats["get_bytes"] += size
        else:
            self.stats["puts"] += 1
            self.stats["put_bytes"] += size
        on_done = None if settled is None else (lambda _status: settled())
        await self._wait(self._track(ret, token, op, endpoint, cdata, on_done))

    async def _run_flush(self, endpoint: Endpoint) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        handle = endpoint._live_handle()
        token = next(self._tokens)
        ret = self._lib.ucp_ep_flush_nbx(handle, self._request_params(token))
        await self._wait(self._track(ret, token, "flush", endpoint, None))

    async def _run_am_send(
        self, endpoint: Endpoint, am_id: int, header: bytes, data: Buffer, reply: bool
    ) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        handle = endpoint._live_handle()
        ffi, c = self._ffi, self._c
        if len(header) > self.max_am_header:
            raise ValueError(f"AM header of {len(header)} bytes > {self.max_am_header}")
        head = ffi.from_buffer("char[]", header) if header else ffi.NULL
        body = ffi.from_buffer("char[]", data)
        flags = c.UCP_AM_SEND_FLAG_COPY_HEADER | (c.UCP_AM_SEND_FLAG_REPLY if reply else 0)
        token = next(self._tokens)
        params = self._request_params(token, flags=flags)
        ret = self._lib.ucp_am_send_nbx(handle, am_id, head, len(header), body, len(body), params)
        self.stats["am_sent"] += 1
        await self._wait(self._track(ret, token, "am send", endpoint, body))

    # -- memory -------------------------------------------------------------------------------

    def _map(self, cdata: Any, length: int, writable: bool, remote_write: bool) -> Any:
        ffi, c = self._ffi, self._c
        params = ffi.new("ucp_mem_map_params_t *")
        params.field_mask = (
            c.UCP_MEM_MAP_PARAM_FIELD_ADDRESS
            | c.UCP_MEM_MAP_PARAM_FIELD_LENGTH
            | c.UCP_MEM_MAP_PARAM_FIELD_PROT
        )
        params.address = cdata
        params.length = length
        params.prot = c.UCP_MEM_MAP_PROT_LOCAL_READ | c.UCP_MEM_MAP_PROT_REMOTE_READ
        if writable:
            params.prot |= c.UCP_MEM_MAP_PROT_LOCAL_WRITE
        if remote_write:
            params.prot |= c.UCP_MEM_MAP_PROT_REMOTE_WRITE
        memh = ffi.new("ucp_mem_h *")
        self._check(self._lib.ucp_mem_map(self._context, params, memh), "ucp_mem_map")
        return memh[0]

    def register(self, buffer: Buffer, *, remote_write: bool = False) -> MemoryRegion:
        """Register a buffer the caller owns (bytearray, mmap, ...) and keep it pinned.

        Read-only buffers can be exported for GET; ``remote_write`` allows peers to PUT.
        """
        self._check_usable()
        view = memoryview(buffer).cast("B")
        if view.nbytes == 0:
            raise ValueError("cannot register an empty buffer")
        if remote_write and view.readonly:
            raise ValueError("remote_write needs a writable buffer")
        cdata = self._ffi.from_buffer("char[]", view)
        memh = self._map(cdata, view.nbytes, not view.readonly, remote_write)
        region = MemoryRegion(self, memh, cdata, self._address_of(cdata), view.nbytes, view=view)
        self._regions.add(region)
        return region

    def register_file(
        self, path: str | os.PathLike[str], offset: int = 0, length: int | None = None
    ) -> MemoryRegion:
        """mmap ``[offset, offset+length)`` of a file read-only and register it for export.

        The default length is the rest of the file. The file's bytes at the time of each GET
        are what the peer reads (the mapping is shared), so export only immutable ranges.
        """
        self._check_usable()
        mapped, start, length = map_file_range(path, offset, length)
        whole = memoryview(mapped)
        view = whole[start : start + length]
        cdata = self._ffi.from_buffer("char[]", view)
        try:
            memh = self._map(cdata, length, False, False)
        except BaseException:
            self._ffi.release(cdata)
            view.release()
            whole.release()
            mapped.close()
            raise
        region = MemoryRegion(
            self,
            memh,
            cdata,
            self._address_of(cdata),
            length,
            view=view,
            parents=(whole,),
            owned_mmap=mapped,
        )
        self._regions.add(region)
        return region

    def _unregister(self, region: MemoryRegion, memh: Any) -> None:
        self._regions.discard(region)
        status = self._lib.ucp_mem_unmap(self._context, memh)
        if status != self._c.UCS_OK:
            log.warning("ucp_mem_unmap: %s", self._status_text(status))

    # -- active messages ----------------------------------------------------------------------

    @property
    def max_am_header(self) -> int:
        attr = self._ffi.new("ucp_worker_attr_t *")
        attr.field_mask = self._c.UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER
        self._check(self._lib.ucp_worker_query(self._handle, attr), "ucp_worker_query")
        return int(attr.max_am_header)

    def am_inbox(self, am_id: int, *, capacity: int = 64) -> AmInbox:
        """Receive active messages sent with ``am_id`` (one inbox per id)."""
        self._check_usable()
        if am_id in self._inboxes:
            raise ValueError(f"active message id {am_id} already has an inbox")
        inbox = AmInbox(self, am_id, capacity)
        self._set_am_handler(am_id, enabled=True)
        self._inboxes[am_id] = inbox
        return inbox

    def _set_am_handler(self, am_id: int, *, enabled: bool) -> None:
        ffi, c = self._ffi, self._c
        params = ffi.new("ucp_am_handler_param_t *")
        params.field_mask = (
            c.UCP_AM_HANDLER_PARAM_FIELD_ID
            | c.UCP_AM_HANDLER_PARAM_FIELD_FLAGS
            | c.UCP_AM_HANDLER_PARAM_FIELD_CB
            | c.UCP_AM_HANDLER_PARAM_FIELD_ARG
        )
        params.id = am_id
        params.flags = c.UCP_AM_FLAG_WHOLE_MSG
        params.cb = self._cb_am if enabled else ffi.NULL
        params.arg = ffi.cast("void *", am_id)
        self._check(
            self._lib.ucp_worker_set_am_recv_handler(self._handle, params),
            "ucp_worker_set_am_recv_handler",
        )

    # -- introspection ------------------------------------------------------------------------

    @property
    def address(self) -> bytes:
        """This worker's address, for a peer's `connect_to_worker`."""
        ffi, lib = self._ffi, self._lib
        attr = ffi.new("ucp_worker_attr_t *")
        attr.field_mask = self._c.UCP_WORKER_ATTR_FIELD_ADDRESS
        self._check(lib.ucp_worker_query(self._handle, attr), "ucp_worker_query")
        try:
            return bytes(ffi.buffer(attr.address, attr.address_length))
        finally:
            lib.ucp_worker_release_address(self._handle, attr.address)

    def info(self) -> str:
        """``ucp_worker_print_info``: the worker's interfaces and transports."""
        return self._binding.capture(lambda s: self._lib.ucp_worker_print_info(self._handle, s))

    def context_info(self) -> str:
        """``ucp_context_print_info``: memory domains and transport resources."""
        return self._binding.capture(lambda s: self._lib.ucp_context_print_info(self._context, s))

    @property
    def pending(self) -> int:
        """Requests UCX has not completed yet (including abandoned ones)."""
        return len(self._ops)

    # -- shutdown -----------------------------------------------------------------------------

    async def _close_all(self, timeout: float) -> None:
        for listener in list(self._listeners.values()):
            listener.close()
        for inbox in list(self._inboxes.values()):
            inbox.close()
        endpoints = list(self._endpoints.values())
        for endpoint in endpoints:
            self._begin_close(endpoint, force=endpoint.error is not None)
        with trio.move_on_after(timeout):
            for endpoint in endpoints:
                await endpoint._closed.wait()

    def _destroy(self) -> None:
        global _active
        if self._closed:
            return
        self._closed = True
        try:
            if _forked:
                return  # the parent owns these resources; touching them here corrupts both
            for endpoint in list(self._endpoints.values()):
                for key in list(endpoint._rkeys):
                    key.close()
            for region in list(self._regions):
                region.close()
            leftover = [op for op in self._ops.values() if not op.done]
            if leftover:
                log.debug("UCX left %d request(s) of failed endpoints incomplete", len(leftover))
            self._fail_ops(list(self._ops), UcxError(errors.CANCELED, "worker", "worker closed"))
            self._lib.ucp_worker_destroy(self._handle)  # frees endpoints and requests left over
            self._lib.ucp_cleanup(self._context)
            self._ops.clear()  # only now may the memory of abandoned requests go
            for endpoint in self._endpoints.values():  # closes that outlived close_timeout
                endpoint._handle = None
                endpoint._closed.set()
            self._endpoints.clear()
            self._by_handle.clear()
        finally:
            _active = None


@asynccontextmanager
async def open_worker(
    config: Mapping[str, str] | None = None, *, close_timeout: float = CLOSE_TIMEOUT
) -> AsyncIterator[Worker]:
    """Create the process's UCX context and worker and progress it until the block exits.

    ``config`` holds UCX settings by name without the ``UCX_`` prefix (``{"TLS": "tcp"}``);
    they override the environment, which overrides `DEFAULT_CONFIG`. Exceptions from the block
    propagate unchanged (not wrapped in an exception group).
    """
    worker = Worker(config)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker._progress_loop, name="ucx-progress")
            try:
                yield worker
            except BaseException as exc:
                body_error = exc  # re-raised below, outside the nursery, so it stays unwrapped
            finally:
                with trio.CancelScope(shield=True):
                    await worker._close_all(close_timeout)
                nursery.cancel_scope.cancel()
    finally:
        worker._destroy()
    if body_error is not None:
        raise body_error
