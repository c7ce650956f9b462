"""Quick benchmark: one-sided UCX GETs from another process vs ``pread`` of the same file.

``python -m rdma.ucx._bench [--file-mib 64] [--seconds 0.5] [--set TLS=tcp] [--error-mode peer]``

An exporter process (`rdma.ucx._peer`) registers a temporary file; this process connects, GETs
random ranges of each size into a registered buffer and, as the baseline measured in the same
run, reads the same ranges into the same buffer with ``os.preadv`` (page cache warm for both),
and with ``os.pread`` (a new bytes object per read, as plain Python code does). It prints
throughput, median latency and the ratios. Numbers are for humans; nothing here gates CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from rdma.ucx import open_worker

SIZES = (4 << 10, 64 << 10, 1 << 20, 16 << 20)


async def _measure(
    fn: Callable[[int, memoryview], Awaitable[None]],
    size: int,
    file_size: int,
    buf: memoryview,
    seconds: float,
) -> tuple[float, float]:
    """(GB/s, median µs) of ``fn(offset, dest)`` over random offsets for ``seconds``."""
    rng = random.Random(size)
    dest = buf[:size]
    for _ in range(3):  # warm up: first-touch faults, connection and protocol setup
        await fn(rng.randrange(0, file_size - size + 1), dest)
    latencies = []
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds or len(latencies) < 5:
        await fn(rng.randrange(0, file_size - size + 1), dest)
        latencies.append(time.perf_counter() - now)
    total = time.perf_counter() - start
    return len(latencies) * size / total / 1e9, statistics.median(latencies) * 1e6


async def _run(args: argparse.Namespace) -> None:
    config = dict(item.split("=", 1) for item in args.set)
    file_size = args.file_mib << 20
    with tempfile.NamedTemporaryFile(prefix="kelp-ucx-bench-") as tmp:
        tmp.write(os.urandom(file_size))
        tmp.flush()
        env = dict(os.environ, **{f"UCX_{k}": v for k, v in config.items()})
        cmd = [sys.executable, "-m", "rdma.ucx._peer", tmp.name, "--error-mode", args.error_mode]
        peer = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            assert peer.stdout is not None
            info = json.loads(peer.stdout.readline())
            fd = os.open(tmp.name, os.O_RDONLY)
            async with open_worker(config) as worker:
                with trio.fail_after(10):
                    endpoint = await worker.connect(
                        "127.0.0.1", info["port"], error_mode=args.error_mode
                    )
                key = endpoint.import_key(bytes.fromhex(info["descriptor"]))
                local = worker.register(bytearray(max(SIZES)))

                async def ucx_get(offset: int, dest: memoryview) -> None:
                    await endpoint.get(key, offset, dest, local=local)

                async def pread(offset: int, dest: memoryview) -> None:
                    os.preadv(fd, [dest], offset)

                async def pread_alloc(offset: int, dest: memoryview) -> None:
                    os.pread(fd, len(dest), offset)  # what plain Python code does: new bytes

                print(
                    f"libucp {worker.binding.version_string} ({worker.binding.mode} mode), "
                    f"GET lanes {endpoint.rma_transports()}, error mode {args.error_mode}"
                )
                print(
                    f"{'size':>8} {'UCX GB/s':>9} {'p50 µs':>7} | {'pread GB/s':>10} {'p50 µs':>7}"
                    f" {'ratio':>5} | {'pread+alloc':>11} {'ratio':>5}"
                )
                for size in SIZES:
                    view = local.view
                    g_bw, g_lat = await _measure(ucx_get, size, file_size, view, args.seconds)
                    p_bw, p_lat = await _measure(pread, size, file_size, view, args.seconds)
                    a_bw, _ = await _measure(pread_alloc, size, file_size, view, args.seconds)
                    label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
                    print(
                        f"{label:>8} {g_bw:9.2f} {g_lat:7.1f} | {p_bw:10.2f} {p_lat:7.1f}"
                        f" {g_bw / p_bw:5.2f} | {a_bw:11.2f} {g_bw / a_bw:5.2f}"
                    )
                local.close()
            os.close(fd)
        finally:
            if peer.stdin is not None:
                peer.stdin.close()
            try:
                peer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdma.ucx._bench")
    parser.add_argument("--file-mib", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--error-mode", default="none", choices=("none", "peer"))
    parser.add_argument("--set", action="append", default=[], metavar="K=V")
    trio.run(_run, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
