"""``kelp mount MOUNTPOINT`` (``python -m rdma.mount``): topic data as read-only files.

``MOUNTPOINT/topics/<topic>/<partition>/<base offset>.log`` are the broker's segment files byte
for byte, read through the RDMA sidecar's Unix socket (zero-copy from its shared memory), or
straight from the broker (its ReadChunk) when the sidecar is unavailable. SIGINT/SIGTERM
unmount cleanly: in-flight reads get a grace period, then are cancelled. ``auto_unmount`` makes
a killed mount disappear; a dead mount left at MOUNTPOINT is cleared at start.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyfuse3
import trio

from kelp import cluster_token, grpc, logs, process
from rdma.mount.fs import KelpFs, MountConfig
from rdma.mount.source import Source, SourceConfig

log = logging.getLogger("kelp.mount")

GRACE_S = 3.0
READ_AHEAD_KB = 4096
CONNECT_WAIT_S = 2.0  # for the sidecar at start; past it the mount starts on the fallback


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kelp mount", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mountpoint", type=Path, help="an existing, empty directory")
    parser.add_argument("--broker", default="127.0.0.1:17777", metavar="HOST:PORT",
                        help="broker gRPC address, HOST:PORT or unix:PATH: listings and the "
                        "fallback read path (default: 127.0.0.1:17777)")
    parser.add_argument("--broker-http", default=None, metavar="HOST:PORT",
                        help="accepted for older scripts and ignored: listings and fallback "
                        "reads go over gRPC (--broker)")
    parser.add_argument("--broker-token-file", type=Path, default=None, metavar="FILE",
                        help="the cluster token the broker requires (kelp up's "
                        "<run dir>/cluster.token), for listings and fallback reads")
    parser.add_argument("--etcd", default=None, metavar="HOST:PORT[,HOST:PORT]",
                        help="a cluster's etcd: list each partition from its leader and read "
                        "each chunk from the broker its file id names (the sidecar needs "
                        "--etcd too)")
    parser.add_argument("--sidecar", default=".kelp/run/sidecar.sock", metavar="PATH",
                        help="the sidecar's Unix socket (default: .kelp/run/sidecar.sock)")
    parser.add_argument("--no-sidecar", action="store_true",
                        help="read from the broker only (like -rdma.enabled=false)")
    parser.add_argument("--no-fallback", action="store_true",
                        help="fail reads the sidecar cannot serve instead of asking the broker")
    parser.add_argument("--max-concurrent", type=int, default=4,
                        help="block fetches in flight (default: 4)")
    parser.add_argument("--prefetch", type=int, default=3,
                        help="4 MiB blocks read ahead for sequential readers (default: 3)")
    parser.add_argument("--cache-blocks", type=int, default=4,
                        help="blocks held at once; with fetches in flight it is kept within "
                        "the sidecar's --client-buffers (default: 4)")
    parser.add_argument("--timeout-ms", type=int, default=10_000,
                        help="a read's deadline, both paths included (default: 10000)")
    parser.add_argument("--refresh-ms", type=int, default=1000,
                        help="how old a listing may get before it is asked again "
                        "(default: 1000)")
    parser.add_argument("--grace-ms", type=int, default=int(GRACE_S * 1000),
                        help="on SIGINT/SIGTERM, how long in-flight reads may finish "
                        f"(default: {int(GRACE_S * 1000)})")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        grpc.Address.parse(args.broker)
    except ValueError as exc:
        parser.error(f"argument --broker: {exc}")
    return args


def clear_stale_mount(mountpoint: Path) -> None:
    """A FUSE mount whose process died answers ENOTCONN: unmount it (lazily) before mounting.
    A live one is somebody else's: refuse. (stat alone is not enough: the kernel may answer it
    from cached attributes for a while after the daemon died; listing asks the daemon.)"""
    target = str(mountpoint.absolute())
    mounts = Path("/proc/mounts").read_text().splitlines()
    if not any(len(f := line.split()) > 2 and f[1] == target and f[2].startswith("fuse")
               for line in mounts):
        return
    try:
        os.listdir(mountpoint)
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
            raise
    else:
        raise OSError(errno.EBUSY, f"{mountpoint} is already a live FUSE mount; unmount it "
                      "first (fusermount3 -u) or choose another mount point")
    log.warning("clearing a dead mount", extra={"mountpoint": target})
    subprocess.run(["fusermount3", "-u", "-z", target], check=False, capture_output=True,
                   timeout=10)


def tune_readahead(mountpoint: Path, kilobytes: int) -> None:
    """Sequential readers want big kernel readahead; FUSE's bdi starts small."""
    try:
        device = os.stat(mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        path.write_text(str(kilobytes))
    except OSError as exc:
        log.info("cannot tune readahead", extra={"error": str(exc)})


async def serve(args: argparse.Namespace) -> None:
    source = Source(SourceConfig(
        sidecar=None if args.no_sidecar else str(args.sidecar), broker=args.broker,
        fallback=not args.no_fallback, timeout_ms=args.timeout_ms,
        broker_token=(cluster_token.read(args.broker_token_file)
                      if args.broker_token_file else None), etcd=args.etcd))
    fs = KelpFs(source, MountConfig(refresh_s=args.refresh_ms / 1000, prefetch=args.prefetch,
                                    cache_blocks=args.cache_blocks,
                                    max_concurrent=args.max_concurrent))
    options = set(pyfuse3.default_options) | {"fsname=kelp", "subtype=kelp", "ro",
                                               "auto_unmount"}
    pyfuse3.init(fs, str(args.mountpoint), options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run)
            # Ready means reading through the sidecar when it is there: the first reads must
            # not fall back to the broker for want of a connection still being made.
            await source.wait_connected(CONNECT_WAIT_S)
            await nursery.start(fs.run)
            fuse_scope = trio.CancelScope()
            fuse_done = trio.Event()

            async def run_fuse() -> None:
                try:
                    with fuse_scope:
                        await pyfuse3.main()
                finally:
                    fuse_done.set()
                    nursery.cancel_scope.cancel()

            nursery.start_soon(run_fuse)
            # File IO on our own mount from this thread would wait for ourselves: a thread.
            await trio.to_thread.run_sync(tune_readahead, args.mountpoint, READ_AHEAD_KB)
            log.info("ready", extra={"mountpoint": str(args.mountpoint),
                                     "sidecar": source.config.sidecar,
                                     "broker": args.broker})
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping", extra={"signal": signal.Signals(signum).name})
                    pyfuse3.terminate()  # no new requests; main() returns once handlers end
                    with trio.move_on_after(args.grace_ms / 1000):
                        await fuse_done.wait()
                    if not fuse_done.is_set():
                        log.warning("reads still in flight after the grace period: "
                                    "cancelling them")
                        fuse_scope.cancel()
                    break
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted", extra={"mountpoint": str(args.mountpoint)})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("mount", args.log_level)
    try:
        clear_stale_mount(args.mountpoint)
        if not args.mountpoint.is_dir():
            raise NotADirectoryError(f"{args.mountpoint} is not a directory")
    except OSError as exc:
        log.error("cannot mount", extra={"error": str(exc)})
        sys.exit(1)

    async def root() -> None:
        async with process.asyncio_loop():
            await serve(args)

    try:
        trio.run(root)
    except* (RuntimeError, OSError) as group:
        for exc in group.exceptions:
            log.error("mount failed", extra={"error": str(exc)})
        sys.exit(1)


if __name__ == "__main__":
    main()
