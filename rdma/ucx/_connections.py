"""Endpoints and listeners as the worker sees them: creating, failing and closing them.

`Worker.connect` and `Worker.listen` are here, with the two UCX callbacks that concern
connections: a connection request arriving at a listener, and an endpoint's error (the peer
died). Callbacks run inside ``ucp_worker_progress``, where UCX forbids closing endpoints, so
closing is deferred: ``_to_close`` (failed endpoints to force-close) and ``_to_finish``
(endpoints whose handle UCX has released) are worked off after each progress round.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import trio

from rdma.ucx import errors
from rdma.ucx._progress import Progress
from rdma.ucx.endpoint import Endpoint, Listener, decode_sockaddr, encode_sockaddr
from rdma.ucx.errors import UcxError

log = logging.getLogger("kelp.ucx")

ERROR_MODES = ("none", "peer")


class Connections(Progress):
    """The endpoint and listener half of `Worker` (which sets these up)."""

    sockaddr_ok: bool  # UCX_TLS includes tcp, which the sockaddr connection manager needs
    _idents: itertools.count[int]  # endpoint and listener ids, passed to UCX as callback args
    _endpoints: dict[int, Endpoint]
    _listeners: dict[int, Listener]
    _to_close: list[Endpoint]  # failed: force-close them
    _to_finish: list[Endpoint]  # UCX released the handle: drop keys, wake waiters
    _cb_err: Any
    _cb_conn: Any

    # -- callbacks (run inside ucp_worker_progress: record and wake, never block or progress) --

    def _on_ep_error(self, arg: Any, ep_handle: Any, status: int) -> None:
        endpoint = self._endpoints.get(self._address_of(arg))
        if endpoint is not None:
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
        endpoint = self._create_endpoint(params, error_mode)
        # Creating an endpoint returns at once; the connection is made in the background.
        # A flush completes once it is usable, or fails if the peer cannot be reached.
        try:
            await self._run_flush(endpoint)
        except BaseException:
            self._begin_close(endpoint, force=True)
            raise
        return endpoint

    def _require_sockaddr(self) -> None:
        if not self.sockaddr_ok:
            raise UcxError(
                errors.UNSUPPORTED,
                "sockaddr",
                "UCX_TLS must include tcp: the connection manager runs over it",
            )

    # -- listeners ----------------------------------------------------------------------------

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
        listener = Listener(self, listener_p[0], ident, bound or (host, port), backlog,
                            error_mode)
        self._listeners[ident] = listener
        return listener

    def _destroy_listener(self, listener: Listener, handle: Any) -> None:
        self._listeners.pop(listener.ident, None)
        self._lib.ucp_listener_destroy(handle)

    # -- closing ------------------------------------------------------------------------------

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

    async def _close_all(self, timeout: float) -> None:
        """Close listeners, then endpoints (healthy ones flushed), waiting at most ``timeout``."""
        for listener in list(self._listeners.values()):
            listener.close()
        endpoints = list(self._endpoints.values())
        for endpoint in endpoints:
            self._begin_close(endpoint, force=endpoint.error is not None)
        with trio.move_on_after(timeout):
            for endpoint in endpoints:
                await endpoint._closed.wait()
