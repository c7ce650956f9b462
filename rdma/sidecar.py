"""The RDMA sidecar: the read API for the mount (gRPC on a Unix socket) and for people (HTTP).

gRPC: Read (bytes, or a lent shared-memory buffer for zero-copy consumers), Release, Stat,
Capabilities, Health, Stats. The read socket (:mod:`rdma.read_socket`, next to the gRPC one):
ReadStream's reads in plain frames, the local readers' fast path. HTTP: ``/read`` (the
bytes), ``/health``, ``/stats``, ``/ping`` (is the broker's HTTP endpoint reachable, and how
fast) and ``/capabilities``. The data path itself (UCX GETs from the broker's export, the
broker's copy, ReadChunk, as fallback) is :mod:`rdma.reader`; this module is the front doors
and their validation.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from kelp import __version__, grpc, http, httpd, metrics, process
from kelp.reads import MAX_READ_BYTES, BadReadRequest, parse_read_request
from kelp.routes import SIDECAR
from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma import read_socket, wire
from rdma.pool import Account, ReleaseRefused
from rdma.reader import Fetched, Reader, ReaderConfig, ReadFailed

log = logging.getLogger("kelp.sidecar")

# The buffer pool's figures that are its state now, not counts (Prometheus gauges).
POOL_GAUGES = frozenset({"buffers", "buffers_free", "buffers_lent", "buffers_ucx_pending",
                         "buffer_waiters", "clients"})

PING_TIMEOUT_S = 2.0
# Reads one stream (a gRPC ReadStream or a read socket connection) may have under way; past
# it a read is refused at once (429) instead of becoming one more waiting task. The mount keeps
# at most 256 outstanding (rdma.mount.source.MAX_OUTSTANDING_READS).
MAX_READS_IN_FLIGHT = 1024
# The largest single /read; a bigger range is the caller's to split (the mount reads chunks).
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

COUNTERS = (
    "http_requests",
    "grpc_requests",
    "read_socket_requests",  # reads on the read socket
    "read_requests",        # every /read
    "read_rejected",        # invalid parameters (400)
    "read_failed",          # valid, but neither path could serve it
    "reads_over_limit",     # refused: over MAX_READS_IN_FLIGHT on their stream
    "reads",                # served
    "read_bytes",
    "pings",
    "ping_failures",
)


@dataclass(frozen=True)
class SidecarConfig:
    socket: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8083
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    socket_mode: int = 0o600  # set explicitly on the socket, never left to the umask
    socket_gid: int | None = None
    # A cluster's etcd: each read goes to the broker its file id names (rdma.brokers).
    etcd: str | None = None
    # The read socket (rdma.read_socket), same mode and group as the gRPC one; None: none.
    read_socket: Path | None = None

    @property
    def broker(self) -> str:
        return self.reader.broker

    @property
    def broker_http_host(self) -> str:
        return self.reader.broker_http_host

    @property
    def broker_http_port(self) -> int:
        return self.reader.broker_http_port

    @property
    def broker_http(self) -> str:
        return f"{self.broker_http_host}:{self.broker_http_port}"


class SidecarError(Exception):
    """The sidecar cannot start; the message says why and what to do."""


class _StreamScope:
    """One ReadStream: the loans taken on it come back when it ends."""


class Sidecar(sidecar_pb.SidecarBase):
    """The sidecar's state (start time, counters) and its request handlers: the generated
    service's methods (gRPC, the mount's path) and ``http_*`` (HTTP, people and scripts)."""

    def __init__(self, config: SidecarConfig, reader: Reader | None = None) -> None:
        self.config = config
        self.started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.http_port: int | None = None
        self.http_client: http.Client | None = None  # for /ping; run_sidecar owns it
        self.reader = reader if reader is not None else Reader(config.reader)
        self._client_numbers = itertools.count(1)

    def all_counters(self) -> dict[str, int]:
        return {**self.counters, **self.reader.counters, **self.reader.pool.stats()}

    def read_socket_path(self) -> str:
        """The read socket, absolute (readers may run elsewhere); empty: none is served."""
        socket = self.config.read_socket
        return os.path.abspath(socket) if socket is not None else ""

    def read_socket_copy_max(self) -> int:
        """The most bytes a read on the read socket may have copied into its reply."""
        return wire.MAX_COPY if self.config.read_socket is not None else 0

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    # --- gRPC (the mount's path) ----------------------------------------------------------

    def grpc_mapping(self) -> dict[str, Any]:
        return grpc.service_mapping(self)

    # A gRPC client is its connection: its loans are released only through it and come back
    # when it closes, and it holds at most its share of the pool across all its calls.

    def account_of(self, connection: Any) -> Account:
        return self.reader.pool.account_for(
            connection, lambda: f"grpc-connection-{next(self._client_numbers)}",
            alive=lambda: not connection.is_closing())

    async def health(self, request: sidecar_pb.HealthRequest) -> sidecar_pb.HealthReply:
        self.counters["grpc_requests"] += 1
        return sidecar_pb.HealthReply(status="ok", version=__version__,
                                      broker=self.config.broker)

    async def stats(self, request: sidecar_pb.StatsRequest) -> sidecar_pb.StatsReply:
        self.counters["grpc_requests"] += 1
        return sidecar_pb.StatsReply(uptime_ms=self.uptime_ms(), counters=self.all_counters())

    async def capabilities(self, request: sidecar_pb.CapabilitiesRequest
                           ) -> sidecar_pb.CapabilitiesReply:
        self.counters["grpc_requests"] += 1
        return sidecar_pb.CapabilitiesReply(**self.reader.capabilities(),
                                            read_socket=self.read_socket_path(),
                                            read_socket_copy_max=self.read_socket_copy_max())

    @grpc.per_connection
    @grpc.on_unsent("take_back_loan")
    async def read(self, request: sidecar_pb.ReadRequest, *, connection: Any
                   ) -> sidecar_pb.ReadReply:
        return await self.grpc_read(request, self.account_of(connection))

    def take_back_loan(self, reply: sidecar_pb.ReadReply, connection: Any) -> None:
        """A zero-copy Read whose reply never left: its caller cannot know the handle, so the
        slot would stay lent (against that client's share) until ``--lend-ms``."""
        if reply.shared is None or not reply.shared.handle:
            return
        # Only an open account: a connection already gone had its loans taken back when it
        # closed, and making it a new account here would leak one per closed connection.
        account = self.reader.pool.existing_account(connection)
        if account is not None:
            with contextlib.suppress(ReleaseRefused):
                self.reader.pool.release(reply.shared.handle, account)

    @grpc.per_connection
    async def read_stream(self, recv: Callable[[], Awaitable[sidecar_pb.ReadRequest | None]],
                          send: Callable[[sidecar_pb.ReadReply], None], *, connection: Any
                          ) -> None:
        await self.serve_read_stream(recv, send, account=self.account_of(connection))

    @grpc.per_connection
    async def release(self, request: sidecar_pb.ReleaseRequest, *, connection: Any
                      ) -> sidecar_pb.ReleaseReply:
        return await self.grpc_release(request, self.account_of(connection))

    async def stat(self, request: sidecar_pb.StatRequest) -> sidecar_pb.StatReply:
        self.counters["grpc_requests"] += 1
        try:
            size = await self.reader.stat(request.file_id)
        except ReadFailed as exc:
            return sidecar_pb.StatReply(status=exc.status, error=exc.message)
        return sidecar_pb.StatReply(status=200, size=size)

    async def grpc_read(self, request: sidecar_pb.ReadRequest, account: Account, *,
                        scope: object | None = None, counter: str = "grpc_requests"
                        ) -> sidecar_pb.ReadReply:
        """One read for ``account``; a zero-copy one lends its buffer to ``scope`` (the stream
        it came on; by default the connection itself). ``counter``: the front door's."""
        reply = self.read_now(request, account, scope=scope, counter=counter)
        if reply is not None:
            return reply
        self._count_request(counter)
        try:
            fetched = await self._fetch(account, request.file_id, request.offset,
                                        request.size, lend_to=self._lend_to(request, account,
                                                                            scope))
        except ReadFailed as exc:
            return sidecar_pb.ReadReply(status=exc.status, error=exc.message)
        return self._reply(fetched, request.size)

    def read_now(self, request: sidecar_pb.ReadRequest, account: Account, *,
                 scope: object | None = None, counter: str = "grpc_requests"
                 ) -> sidecar_pb.ReadReply | None:
        """:meth:`grpc_read` answered without a schedule point when it needs no wait (see
        :meth:`Reader.fetch_now`), refusals included; None (nothing counted or taken): await
        :meth:`grpc_read`."""
        try:
            if request.size < 1 or request.size > MAX_READ_BYTES:
                raise ReadFailed(400, f"size must be in 1..{MAX_READ_BYTES}")
            fetched = self.reader.fetch_now(account, request.file_id, request.offset,
                                            request.size,
                                            lend_to=self._lend_to(request, account, scope))
        except ReadFailed as exc:
            self._count_request(counter)
            self._count_failure(exc)
            return sidecar_pb.ReadReply(status=exc.status, error=exc.message)
        if fetched is None:
            return None
        self._count_request(counter)
        self._count_read(request.size)
        return self._reply(fetched, request.size)

    @staticmethod
    def _lend_to(request: sidecar_pb.ReadRequest, account: Account, scope: object | None
                 ) -> object | None:
        return (scope if scope is not None else account) if request.zero_copy else None

    def _reply(self, fetched: Fetched, size: int) -> sidecar_pb.ReadReply:
        if fetched.loan is None:
            return sidecar_pb.ReadReply(status=200, transport=fetched.transport,
                                        data=fetched.data)
        pool = self.reader.pool
        return sidecar_pb.ReadReply(status=200, transport=fetched.transport,
                                    shared=sidecar_pb.SharedBuffer(
                                        path=str(pool.path),
                                        offset=fetched.loan.slot.index * pool.size,
                                        length=size, handle=fetched.loan.handle))

    async def serve_read_stream(
            self, recv: Callable[[], Awaitable[sidecar_pb.ReadRequest | None]],
            send: Callable[[sidecar_pb.ReadReply], None], *, account: Account,
            counter: str = "grpc_requests") -> None:
        """Reads on one stream (gRPC ReadStream, or a read socket connection: ``counter``
        counts its reads), each in its own task. Releases travel in the requests; what
        the stream still has lent when it ends (the consumer went away) goes back to the
        pool."""
        pool = self.reader.pool
        scope = _StreamScope()
        in_flight = 0

        async def one(request: sidecar_pb.ReadRequest, refused: list[int]) -> None:
            nonlocal in_flight
            try:
                reply = await self.grpc_read(request, account, scope=scope, counter=counter)
            finally:
                in_flight -= 1
            reply.request_id = request.request_id
            reply.release_refused = refused
            send(reply)

        try:
            async with trio.open_nursery() as nursery:
                while (request := await recv()) is not None:
                    refused, worst = [], None
                    for handle in request.release:
                        try:
                            pool.release(handle, account)
                        except ReleaseRefused as exc:
                            refused.append(handle)
                            if worst is None or exc.status < worst.status:
                                worst = exc  # 403 (someone else's) before 404
                    if request.size and in_flight >= MAX_READS_IN_FLIGHT:
                        # Still read (its releases above count): only the read is refused.
                        self.counters["reads_over_limit"] += 1
                        send(sidecar_pb.ReadReply(
                            status=429, request_id=request.request_id,
                            release_refused=refused,
                            error=f"over {MAX_READS_IN_FLIGHT} reads in flight on this stream"))
                    elif request.size:
                        reply = self.read_now(request, account, scope=scope, counter=counter)
                        if reply is None:  # it has to wait: in a task of its own
                            in_flight += 1
                            nursery.start_soon(one, request, refused)
                        else:
                            reply.request_id = request.request_id
                            reply.release_refused = refused
                            send(reply)
                    elif worst is not None:
                        send(sidecar_pb.ReadReply(status=worst.status, error=worst.message,
                                                  request_id=request.request_id,
                                                  release_refused=refused))
                nursery.cancel_scope.cancel()  # the client closed its side
        finally:
            pool.end_scope(account, scope)

    async def grpc_release(self, request: sidecar_pb.ReleaseRequest, account: Account
                           ) -> sidecar_pb.ReleaseReply:
        self.counters["grpc_requests"] += 1
        try:
            self.reader.pool.release(request.handle, account)
        except ReleaseRefused as exc:
            return sidecar_pb.ReleaseReply(released=False, status=exc.status,
                                           error=exc.message)
        return sidecar_pb.ReleaseReply(released=True, status=200)

    async def _fetch(self, account: Account, file_id: str, offset: int, size: int, *,
                     lend_to: object | None = None) -> Fetched:
        try:
            fetched = await self.reader.fetch(account, file_id, offset, size, lend_to=lend_to)
        except ReadFailed as exc:
            self._count_failure(exc)
            raise
        self._count_read(size)
        return fetched

    def _count_request(self, counter: str) -> None:
        self.counters[counter] += 1  # the front door's (gRPC, read socket)
        self.counters["read_requests"] += 1

    def _count_failure(self, exc: ReadFailed) -> None:
        self.counters["read_rejected" if exc.status < 500 else "read_failed"] += 1

    def _count_read(self, size: int) -> None:
        self.counters["reads"] += 1
        self.counters["read_bytes"] += size

    # --- HTTP (people and scripts) --------------------------------------------------------

    def http_routes(self) -> dict[str, httpd.Handler]:
        routes: Mapping[str, httpd.Handler] = {
            "/health": self.http_health, "/stats": self.http_stats, "/ping": self.http_ping,
            "/capabilities": self.http_capabilities, "/read": self.http_read,
            "/metrics": metrics.route(self.metrics_state),
        }
        return {path: self._counted(handler) for path, handler in routes.items()}

    def metrics_state(self) -> metrics.Gauges:
        """The sidecar's counters for Prometheus: cumulative ones as counters, the buffer
        pool's occupancy as gauges."""
        gauges: metrics.Gauges = {}
        for name, value in self.all_counters().items():
            if name in POOL_GAUGES:
                gauges[f"kelp_sidecar_{name}"] = (f"Now: {name.replace('_', ' ')}.", (),
                                                  [((), value)])
            else:
                gauges[f"kelp_sidecar_{name}_total"] = (f"Count of {name.replace('_', ' ')}.",
                                                        (), [((), value)])
        return gauges

    def _counted(self, handler: httpd.Handler) -> httpd.Handler:
        async def counted(request: httpd.Request) -> httpd.Response:
            self.counters["http_requests"] += 1
            return await handler(request)
        return counted

    async def http_health(self, request: httpd.Request) -> httpd.Response:
        return httpd.Response.json({"status": "ok", "version": __version__,
                                    "broker": self.config.broker,
                                    "broker_http": self.config.broker_http})

    async def http_stats(self, request: httpd.Request) -> httpd.Response:
        return httpd.Response.json({"uptime_ms": self.uptime_ms(),
                                    "counters": self.all_counters()})

    async def http_capabilities(self, request: httpd.Request) -> httpd.Response:
        return httpd.Response.json({
            "version": __version__,
            **self.reader.capabilities(),
            "zero_copy": True,
            "grpc_socket": str(self.config.socket),
            "read_socket": self.read_socket_path(),
            "read_socket_copy_max": self.read_socket_copy_max(),
            "grpc_methods": sorted(route.path.rsplit("/", 1)[1] for route in SIDECAR),
            "http_endpoints": ["/capabilities", "/health", "/metrics", "/ping", "/read",
                               "/stats"],
            "file_id_format": "<volume>,<needle hex><cookie 8 hex>",
        })

    async def http_ping(self, request: httpd.Request) -> httpd.Response:
        """Can we reach the broker's HTTP endpoint, and how fast?"""
        self.counters["pings"] += 1
        target = f"http://{self.config.broker_http}/health"
        start = time.perf_counter()
        try:
            assert self.http_client is not None, "run_sidecar opens the HTTP client"
            reply = await self.http_client.get(self.config.broker_http_host,
                                               self.config.broker_http_port, "/health",
                                               timeout=PING_TIMEOUT_S)
        except http.HttpClientError as exc:
            self.counters["ping_failures"] += 1
            return httpd.Response.json({"status": "error", "target": target,
                                        "error": str(exc)}, 502)
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        if reply.status != 200:
            self.counters["ping_failures"] += 1
            return httpd.Response.json({
                "status": "error", "target": target, "latency_ms": latency_ms,
                "error": f"broker answered HTTP {reply.status}",
                "body": reply.body[:500].decode("utf-8", "replace")}, 502)
        return httpd.Response.json({"status": "ok", "target": target, "latency_ms": latency_ms})

    async def http_read(self, request: httpd.Request) -> httpd.Response:
        self.counters["read_requests"] += 1
        try:
            wanted = parse_read_request(request.query_items)
        except BadReadRequest as exc:
            self.counters["read_rejected"] += 1
            return httpd.Response.error(400, str(exc))
        try:
            fetched = await self._fetch(self.reader.pool.http, str(wanted.file_id),
                                        wanted.offset, wanted.size)
        except ReadFailed as exc:
            return httpd.Response.error(exc.status, exc.message, request=wanted.describe())
        return httpd.Response(200, fetched.data,
                              headers={"x-kelp-transport": fetched.transport})


async def _check_socket_path(path: Path) -> None:
    """Refuse to start on a path that is not ours to take.

    The gRPC server unlinks whatever is at its path before binding. That is right for a stale
    socket left by a crash, wrong for a regular file, and wrong for a socket another sidecar
    is still serving.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SidecarError(f"socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes, "
                           "the limit for a Unix socket; choose a shorter --socket")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SidecarError(f"{path} exists and is not a socket; refusing to replace it")
    try:
        with trio.fail_after(1):
            stream = await trio.open_unix_socket(str(path))
    except (OSError, trio.TooSlowError):
        return  # nobody is listening: a stale socket from an earlier run
    await stream.aclose()
    raise SidecarError(f"another process is serving {path}; stop it or choose another --socket")


async def run_sidecar(
    config: SidecarConfig,
    *,
    task_status: trio.TaskStatus[Sidecar] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve gRPC on ``config.socket`` and HTTP on ``config.http_host:http_port`` until cancelled.

    Needs a trio-asyncio loop (grpclib). Reports the :class:`Sidecar` once both listeners are
    up, with ``http_port`` set to the bound port (``http_port=0`` picks a free one). Cancelling
    stops both servers; the gRPC server removes its socket file on the way out.
    """
    sidecar = Sidecar(config)
    config.socket.parent.mkdir(parents=True, exist_ok=True)
    await _check_socket_path(config.socket)
    if config.read_socket is not None:
        if config.read_socket == config.socket:
            raise SidecarError(f"--read-socket {config.read_socket} is the gRPC socket too")
        config.read_socket.parent.mkdir(parents=True, exist_ok=True)
        await _check_socket_path(config.read_socket)
    async with http.Client(max_connections=2) as sidecar.http_client, \
            trio.open_nursery() as nursery:
        if config.etcd is not None:
            from rdma.brokers import Brokers  # a lone broker's sidecar loads no etcd client

            brokers = Brokers(config.etcd, config.reader.broker_token)
            await nursery.start(brokers.run)
            sidecar.reader.brokers = brokers
        await nursery.start(sidecar.reader.run)
        await nursery.start(partial(grpc.serve, sidecar.grpc_mapping(),
                                    grpc.Address(path=str(config.socket)),
                                    socket_mode=config.socket_mode,
                                    socket_gid=config.socket_gid))
        if config.read_socket is not None:
            await nursery.start(partial(read_socket.serve, sidecar, config.read_socket,
                                        mode=config.socket_mode, gid=config.socket_gid))
        sidecar.http_port = await nursery.start(
            httpd.serve_http, sidecar.http_routes(), config.http_host, config.http_port)
        process.ready(log, socket=str(config.socket), read_socket=str(config.read_socket),
                      http=f"{config.http_host}:{sidecar.http_port}",
                      broker=config.broker, broker_http=config.broker_http)
        task_status.started(sidecar)

