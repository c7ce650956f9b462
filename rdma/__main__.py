"""``python -m rdma``: the kelp RDMA sidecar.

Serves the read API to the mount over gRPC on a Unix socket, in plain frames on a second
Unix socket (the read socket: the same reads at a fraction of gRPC's cost) and to people over
HTTP (/health, /stats, /ping, /capabilities, /read). Reads go over UCX (one-sided GETs of the
broker's registered segment memory: shared memory/cma or tcp here, verbs where the hardware
has them) and fall back to a copy by the broker (gRPC ReadChunk).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kelp import cluster_token, grpc, logs, process
from kelp.address import parse_host_port
from rdma.pool import PoolConfigError, resolve_shares
from rdma.reader import ReaderConfig
from rdma.sidecar import SidecarConfig, SidecarError, run_sidecar

log = logging.getLogger("kelp.sidecar")


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0600") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: only permission bits (at most 0777)")
    return mode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rdma", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, default=Path(".kelp/run/sidecar.sock"),
                        metavar="PATH",
                        help="Unix socket for the gRPC API (the mount's path); its directory is "
                        "created if missing (default: .kelp/run/sidecar.sock)")
    parser.add_argument("--read-socket", type=Path, default=None, metavar="PATH",
                        help="Unix socket for the framed read protocol, the mount's fast path "
                        "(default: next to --socket, its name ending .reads.sock)")
    parser.add_argument("--no-read-socket", action="store_true",
                        help="serve no read socket (readers use gRPC ReadStream)")
    parser.add_argument("--http", type=_host_port, default="127.0.0.1:8083", metavar="HOST:PORT",
                        help="HTTP API address; port 0 picks a free port "
                        "(default: 127.0.0.1:8083)")
    parser.add_argument("--broker", default="127.0.0.1:17777", metavar="HOST:PORT",
                        help="broker gRPC address, HOST:PORT or unix:PATH "
                        "(default: 127.0.0.1:17777)")
    parser.add_argument("--broker-http", type=_host_port, default="127.0.0.1:8082",
                        metavar="HOST:PORT",
                        help="broker HTTP address, probed by /ping (reads, the fallback "
                        "included, go over gRPC: --broker) (default: 127.0.0.1:8082)")
    parser.add_argument("--broker-token-file", type=Path, default=None, metavar="FILE",
                        help="the cluster token the broker requires (its --cluster-token-file); "
                        "without it a broker that has one grants no UCX lease and no read")
    parser.add_argument("--socket-mode", type=_mode, default=0o600, metavar="OCTAL",
                        help="permissions of the gRPC and read sockets, set explicitly rather than "
                        "from the umask (default: 0600: only this user's mount reads)")
    parser.add_argument("--socket-group", default=None, metavar="GROUP",
                        help="group of the gRPC and read sockets (with --socket-mode 0660, that "
                        "group's members may read)")
    data = parser.add_argument_group("data path")
    data.add_argument("--no-ucx", action="store_true",
                      help="read through the broker's copy (ReadChunk) only")
    data.add_argument("--ucx-transports", default=None, metavar="TLS",
                      help="UCX transports (UCX_TLS), e.g. 'sm,cma,tcp' or 'rc,tcp' "
                      "(default: UCX's own choice, which uses verbs when present)")
    data.add_argument("--no-fallback", action="store_true",
                      help="fail reads that UCX cannot serve instead of asking the broker")
    data.add_argument("--buffers", type=int, default=8,
                      help="registered read buffers (default: 8)")
    data.add_argument("--buffer-bytes", type=int, default=16 * 1024 * 1024,
                      help="size of each buffer, the largest single read (default: 16 MiB)")
    data.add_argument("--client-buffers", type=int, default=None, metavar="N",
                      help="most buffers one client (a gRPC connection, or the HTTP API) holds "
                      "at once, reading into them or lent; its further reads wait "
                      "(default: half of --buffers)")
    data.add_argument("--http-reserve", type=int, default=None, metavar="N",
                      help="buffers kept for HTTP /read that gRPC reads cannot take "
                      "(default: 1; 0 with --buffers 1)")
    data.add_argument("--max-concurrent", type=int, default=32,
                      help="reads in progress at once; more wait (default: 32)")
    data.add_argument("--session-ms", type=int, default=30_000,
                      help="how long a chunk's UCX session is reused (default: 30000)")
    data.add_argument("--endpoint-idle-ms", type=int, default=60_000,
                      help="close a UCX endpoint idle this long (default: 60000)")
    data.add_argument("--lend-ms", type=int, default=30_000,
                      help="take back a zero-copy buffer not released by then; loans also "
                      "come back when the stream or connection that took them ends "
                      "(default: 30000)")
    data.add_argument("--timeout-ms", type=int, default=10_000,
                      help="a read's deadline, both paths included (default: 10000)")
    parser.add_argument("--etcd", default=None, metavar="HOST:PORT[,HOST:PORT]",
                        help="a cluster's etcd: read each chunk from the broker its file id "
                        "names (default: every read from --broker)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        grpc.Address.parse(args.broker)
    except ValueError as exc:
        parser.error(f"argument --broker: {exc}")
    if args.etcd is not None:
        try:
            grpc.Address.parse(args.etcd.split(",")[0].strip())
        except ValueError as exc:
            parser.error(f"argument --etcd: {exc}")
    try:
        resolve_shares(args.buffers, args.buffer_bytes, args.client_buffers, args.http_reserve)
    except PoolConfigError as exc:
        parser.error(str(exc))
    if args.lend_ms < 1:
        parser.error(f"--lend-ms must be at least 1, not {args.lend_ms}")
    if args.broker_token_file is not None:
        try:
            cluster_token.read(args.broker_token_file)
        except cluster_token.TokenError as exc:
            parser.error(str(exc))
    if args.socket_group is not None:
        try:
            args.socket_gid = socket_gid(args.socket_group)
        except KeyError:
            parser.error(f"--socket-group: no group {args.socket_group!r}")
    return args


def socket_gid(group: str) -> int:
    import grp  # Unix only, like the socket

    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    (http_host, http_port), (bhttp_host, bhttp_port) = args.http, args.broker_http
    reader = ReaderConfig(
        broker=args.broker, broker_http_host=bhttp_host, broker_http_port=bhttp_port,
        broker_token=(cluster_token.read(args.broker_token_file)
                      if args.broker_token_file else None),
        ucx=not args.no_ucx, ucx_transports=args.ucx_transports, fallback=not args.no_fallback,
        buffers=args.buffers, buffer_bytes=args.buffer_bytes,
        max_concurrent=args.max_concurrent, session_ms=args.session_ms,
        endpoint_idle_ms=args.endpoint_idle_ms, lend_ms=args.lend_ms,
        timeout_ms=args.timeout_ms, client_buffers=args.client_buffers,
        http_reserve=args.http_reserve)
    return SidecarConfig(socket=args.socket, http_host=http_host, http_port=http_port,
                         reader=reader, socket_mode=args.socket_mode,
                         socket_gid=getattr(args, "socket_gid", None), etcd=args.etcd,
                         read_socket=None if args.no_read_socket else
                         args.read_socket or default_read_socket(args.socket))


def default_read_socket(grpc_socket: Path) -> Path:
    """``sidecar.sock`` -> ``sidecar.reads.sock``, beside it."""
    return grpc_socket.with_name(f"{grpc_socket.stem}.reads{grpc_socket.suffix or '.sock'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("sidecar", args.log_level)
    config = config_from_args(args)
    try:
        process.run(lambda: run_sidecar(config))
    except* (SidecarError, OSError) as group:
        # Start-up failures (port taken, socket path in use) are the operator's to fix: say
        # what happened in one line instead of a traceback.
        for exc in _leaves(group):
            log.error("cannot start", extra={"error": str(exc)})
        sys.exit(1)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


if __name__ == "__main__":
    main()
