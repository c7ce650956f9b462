"""``python -m rdma``: the kelp RDMA sidecar.

Serves the read API to the mount over gRPC on a Unix socket and to people over HTTP
(/health, /stats, /ping, /capabilities, /read). The UCX data path is not built yet:
/capabilities reports what exists and /read answers 501 after validating its parameters.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kelp import grpc, logs, process
from rdma.sidecar import SidecarConfig, SidecarError, run_sidecar

log = logging.getLogger("kelp.sidecar")


def _host_port(text: str) -> tuple[str, int]:
    try:
        host, port = process.split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if port > 65535:
        raise argparse.ArgumentTypeError(f"port {port} out of range in {text!r}")
    return host, port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rdma", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, default=Path(".kelp/run/sidecar.sock"),
                        metavar="PATH",
                        help="Unix socket for the gRPC API (the mount's path); its directory is "
                        "created if missing (default: .kelp/run/sidecar.sock)")
    parser.add_argument("--http", type=_host_port, default="127.0.0.1:8083", metavar="HOST:PORT",
                        help="HTTP API address; port 0 picks a free port "
                        "(default: 127.0.0.1:8083)")
    parser.add_argument("--broker", default="127.0.0.1:17777", metavar="HOST:PORT",
                        help="broker gRPC address, HOST:PORT or unix:PATH "
                        "(default: 127.0.0.1:17777)")
    parser.add_argument("--broker-http", type=_host_port, default="127.0.0.1:8082",
                        metavar="HOST:PORT",
                        help="broker HTTP address, probed by /ping (and, once reads exist, "
                        "their fallback path) (default: 127.0.0.1:8082)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        grpc.Address.parse(args.broker)
    except ValueError as exc:
        parser.error(f"argument --broker: {exc}")
    return args


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    (http_host, http_port), (bhttp_host, bhttp_port) = args.http, args.broker_http
    return SidecarConfig(socket=args.socket, http_host=http_host, http_port=http_port,
                         broker=args.broker, broker_http_host=bhttp_host,
                         broker_http_port=bhttp_port)


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
