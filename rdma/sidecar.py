"""The RDMA sidecar: the read API for the mount (gRPC on a Unix socket) and for people (HTTP).

What exists today is the process and its contracts: Health and Stats over gRPC; ``/health``,
``/stats``, ``/ping`` (is the broker's HTTP endpoint reachable, and how fast), ``/capabilities``
and ``/read`` over HTTP. The data path (UCX GETs from the broker's export, with the broker's
HTTP read as fallback) is not built yet, so ``/capabilities`` says so and ``/read`` validates its
parameters exactly as it will once reads exist, then answers 501. Nothing is faked: a client
never gets bytes that did not come from the broker.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kelp import __version__, grpc, httpd
from kelp.reads import MAX_READ_BYTES, BadReadRequest, parse_read_request
from kelp.rpc.sidecar import v1 as sidecar_pb

log = logging.getLogger("kelp.sidecar")

PING_TIMEOUT_S = 2.0
# The largest single /read; a bigger range is the caller's to split (the mount reads chunks).
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

COUNTERS = (
    "http_requests",
    "grpc_requests",
    "read_requests",        # every /read
    "read_rejected",        # invalid parameters (400)
    "read_unavailable",     # valid, but no data path can serve it (501 today)
    "reads",                # served
    "read_bytes",
    "rdma_reads",
    "fallback_reads",       # served over the broker's HTTP read endpoint
    "pings",
    "ping_failures",
)


@dataclass(frozen=True)
class SidecarConfig:
    socket: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8083
    broker: str = "127.0.0.1:17777"
    broker_http_host: str = "127.0.0.1"
    broker_http_port: int = 8082

    @property
    def broker_http(self) -> str:
        return f"{self.broker_http_host}:{self.broker_http_port}"


class SidecarError(Exception):
    """The sidecar cannot start; the message says why and what to do."""


class Sidecar:
    """The sidecar's state (start time, counters) and its request handlers."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.http_port: int | None = None

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    # --- gRPC (the mount's path) ----------------------------------------------------------

    def grpc_mapping(self) -> dict[str, Any]:
        return {
            "/sidecar.v1.Sidecar/Health": grpc.unary_handler(
                self.grpc_health, sidecar_pb.HealthRequest, sidecar_pb.HealthReply),
            "/sidecar.v1.Sidecar/Stats": grpc.unary_handler(
                self.grpc_stats, sidecar_pb.StatsRequest, sidecar_pb.StatsReply),
        }

    async def grpc_health(self, request: sidecar_pb.HealthRequest) -> sidecar_pb.HealthReply:
        self.counters["grpc_requests"] += 1
        return sidecar_pb.HealthReply(status="ok", version=__version__,
                                      broker=self.config.broker)

    async def grpc_stats(self, request: sidecar_pb.StatsRequest) -> sidecar_pb.StatsReply:
        self.counters["grpc_requests"] += 1
        return sidecar_pb.StatsReply(uptime_ms=self.uptime_ms(), counters=dict(self.counters))

    # --- HTTP (people and scripts) --------------------------------------------------------

    def http_routes(self) -> dict[str, httpd.Handler]:
        routes: Mapping[str, httpd.Handler] = {
            "/health": self.health, "/stats": self.stats, "/ping": self.ping,
            "/capabilities": self.capabilities, "/read": self.read,
        }
        return {path: self._counted(handler) for path, handler in routes.items()}

    def _counted(self, handler: httpd.Handler) -> httpd.Handler:
        async def counted(request: httpd.Request) -> httpd.Response:
            self.counters["http_requests"] += 1
            return await handler(request)
        return counted

    async def health(self, request: httpd.Request) -> httpd.Response:
        return httpd.Response.json({"status": "ok", "version": __version__,
                                    "broker": self.config.broker,
                                    "broker_http": self.config.broker_http})

    async def stats(self, request: httpd.Request) -> httpd.Response:
        return httpd.Response.json({"uptime_ms": self.uptime_ms(), "counters": self.counters})

    async def capabilities(self, request: httpd.Request) -> httpd.Response:
        # Say exactly what exists. Every flag turns true only in the change that builds it.
        return httpd.Response.json({
            "version": __version__,
            "transports": [],
            "ucx": False,
            "read": False,
            "http_fallback": False,
            "zero_copy": False,
            "grpc_socket": str(self.config.socket),
            "grpc_methods": ["Health", "Stats"],
            "http_endpoints": ["/capabilities", "/health", "/ping", "/read", "/stats"],
            "file_id_format": "<volume>,<needle hex><cookie 8 hex>",
            "max_read_bytes": MAX_READ_BYTES,
        })

    async def ping(self, request: httpd.Request) -> httpd.Response:
        """Can we reach the broker's HTTP endpoint (the read fallback's path), and how fast?"""
        self.counters["pings"] += 1
        target = f"http://{self.config.broker_http}/health"
        start = time.perf_counter()
        try:
            reply = await httpd.http_get(self.config.broker_http_host,
                                         self.config.broker_http_port, "/health",
                                         timeout=PING_TIMEOUT_S)
        except httpd.HttpClientError as exc:
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

    async def read(self, request: httpd.Request) -> httpd.Response:
        self.counters["read_requests"] += 1
        try:
            read = parse_read_request(request.query_items)
        except BadReadRequest as exc:
            self.counters["read_rejected"] += 1
            return httpd.Response.error(400, str(exc))
        self.counters["read_unavailable"] += 1
        return httpd.Response.error(
            501, "reads are not implemented yet: neither the UCX data path nor the broker HTTP "
            "fallback exists in this build (see /capabilities)", request=read.describe())


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
    async with trio.open_nursery() as nursery:
        await nursery.start(grpc.serve, sidecar.grpc_mapping(),
                            grpc.Address(path=str(config.socket)))
        sidecar.http_port = await nursery.start(
            httpd.serve_http, sidecar.http_routes(), config.http_host, config.http_port)
        log.info("ready", extra={"socket": str(config.socket),
                                 "http": f"{config.http_host}:{sidecar.http_port}",
                                 "broker": config.broker, "broker_http": config.broker_http})
        task_status.started(sidecar)

