"""The UCP context and worker: creating them, registering memory, and tearing them down.

There is one `Worker` per process (it owns the UCP context too), opened with::

    async with open_worker() as worker:
        ...

Its parts live in three modules, one concern each: ``_progress`` (requests and the progress
task that drives UCX from trio), ``_connections`` (endpoints and listeners: `Worker.connect`,
`Worker.listen`) and this one (lifecycle and memory: `Worker.register`).

**Threading.** The worker is created in ``UCS_THREAD_MODE_SINGLE``: UCX takes no locks and every
call must come from the thread that runs trio. Nothing here ever goes to ``trio.to_thread``.

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
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from rdma.ucx import _binding, errors
from rdma.ucx._connections import Connections
from rdma.ucx.errors import UcxError
from rdma.ucx.memory import MemoryRegion

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger("kelp.ucx")

# Settings kelp applies unless the caller's ``config`` or a ``UCX_*`` variable says otherwise.
# NET_DEVICES=lo keeps tcp lanes on loopback: with "all", UCX would also connect the peer's
# non-loopback interface addresses. Set UCX_NET_DEVICES (e.g. mlx5_0:1) on RDMA hardware.
DEFAULT_CONFIG: dict[str, str] = {"NET_DEVICES": "lo"}

CLOSE_TIMEOUT = 5.0

_active: Worker | None = None  # the process's one worker
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    if _active is not None:
        _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _tls_allows_tcp(tls: str) -> bool:
    names = {name.strip() for name in tls.lstrip("^").split(",")}
    if tls.startswith("^"):
        return "tcp" not in names
    return bool(names & {"all", "tcp"})


class Worker(Connections):
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
            params.features = c.UCP_FEATURE_RMA | c.UCP_FEATURE_WAKEUP
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

        self._ops = {}
        self._tokens = itertools.count(1)
        self._idents = itertools.count(1)
        self._endpoints = {}
        self._listeners = {}
        self._regions: set[MemoryRegion] = set()
        self._to_close = []
        self._to_finish = []
        self._sleep = None
        self._fatal = None
        self._closed = False
        self._params = ffi.new("ucp_request_param_t *")
        self._cb_send = b.callback("kelp_ucx_send_cb", self._on_send_complete)
        self._cb_err = b.callback("kelp_ucx_err_cb", self._on_ep_error)
        self._cb_conn = b.callback("kelp_ucx_conn_cb", self._on_conn_request)
        _active = self

    @property
    def binding(self) -> _binding.Binding:
        return self._binding

    def _check_usable(self) -> None:
        if _forked:
            raise RuntimeError("UCX cannot be used in a process forked after UCX was initialised")
        if self._closed:
            raise UcxError(errors.NOT_CONNECTED, "worker", "worker is closed")
        if self._fatal is not None:
            raise UcxError(errors.IO_ERROR, "worker", f"progress failed: {self._fatal!r}")

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

    def _unregister(self, region: MemoryRegion, memh: Any) -> None:
        self._regions.discard(region)
        status = self._lib.ucp_mem_unmap(self._context, memh)
        if status != self._c.UCS_OK:
            log.warning("ucp_mem_unmap: %s", self._status_text(status))

    # -- shutdown -----------------------------------------------------------------------------

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
    # The progress task is shielded from the cancellation that ends the block: closing
    # endpoints gracefully needs the worker progressed (the peer's acknowledgement has to be
    # read), so it stops only once the closes are done or have timed out.
    progress_scope = trio.CancelScope(shield=True)

    async def progress() -> None:
        with progress_scope:
            await worker._progress_loop()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress, name="ucx-progress")
            try:
                yield worker
            except BaseException as exc:
                body_error = exc  # re-raised below, outside the nursery, so it stays unwrapped
            finally:
                try:
                    with trio.CancelScope(shield=True):
                        await worker._close_all(close_timeout)
                finally:
                    progress_scope.cancel()  # shielded: nothing else would ever end it
                    nursery.cancel_scope.cancel()
    finally:
        worker._destroy()
    if body_error is not None:
        raise body_error
