"""The FUSE mount: sequential ``dd bs=1M`` and random 4 KiB preads of one sealed segment
through ``kelp mount`` reading through the sidecar, against the same mount forced onto the
broker's copy (``--no-sidecar``), the sidecar's raw reads (read socket and gRPC ReadStream, as
the mount asks for them: 1 MiB zero-copy loans, 4 KiB copied into the reply where the read
socket allows it) and the local file, all in one run.

The floors under a random read through the mount are measured in the same run
(``bench.fuse_floor``): a FUSE file system that returns zeros, and a Unix-socket round trip.

"Cold" runs drop the file's pages from the page cache first (through the mount that is FUSE's
own cache, so every byte comes through kelp); "warm" runs read it again with its pages cached,
which the mount allows for sealed segments (they never change), as the kernel does for the
local file."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import trio
import trio_asyncio

from bench import fuse_floor
from bench.rdma import fill_topic
from rdma.mount.source import Source, SourceConfig
from tests.kelp_procs import Cluster, Proc

TOPIC = "bench-mount"
SEGMENT = 64 << 20
RANDOM_READS = 2000
RANDOM_PASSES = 5

_RANDOM_SCRIPT = """
import os, random, sys, time
path, count, drop = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "drop"
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
if drop:  # a FUSE file's pages: every read then comes through its daemon
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
rng = random.Random(9)
offsets = [rng.randrange(0, size - 4096) & ~4095 for _ in range(count)]
started = time.perf_counter()
for offset in offsets:
    os.pread(fd, 4096, offset)
print(time.perf_counter() - started)
"""


def _dd_seconds(path: Path, *, cold: bool = True) -> float:
    if cold:  # through FUSE, not the cache
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    started = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True,
                   capture_output=True, timeout=300)
    return time.perf_counter() - started


def _random_seconds(path: Path, *, drop: bool = True) -> float:
    """Seconds for ``RANDOM_READS`` random 4 KiB preads: the median of ``RANDOM_PASSES`` runs
    after one not counted (a mount's first opens the chunks' UCX sessions), each after
    dropping the file's cached pages (``drop``: for a FUSE file, its own cache)."""
    runs = [float(subprocess.run(
        [sys.executable, "-c", _RANDOM_SCRIPT, str(path), str(RANDOM_READS),
         "drop" if drop else "keep"], check=True,
        capture_output=True, text=True, timeout=300).stdout) for _ in range(1 + RANDOM_PASSES)]
    return sorted(runs[1:])[RANDOM_PASSES // 2]


async def _sidecar_seconds(source: Source, pieces: list[tuple[str, int, int]],
                           depth: int, *, copy: bool = False) -> float:
    """Read ``pieces`` (file id, offset, size), ``depth`` at a time, as the mount does."""
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        source.release(await source.read(*pieces[0]))  # connected, session open
        started = time.perf_counter()
        todo = iter(pieces)

        async def worker() -> None:
            for file_id, offset, size in todo:
                source.release(await source.read(file_id, offset, size, copy=copy))

        async with trio.open_nursery() as readers:
            for _ in range(depth):
                readers.start_soon(worker)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed


def _sidecar_runs(socket: Path, broker_port: int, chunks: list[dict]
                  ) -> dict[str, tuple[float, float]]:
    """Per sidecar API: (sequential GB/s with 1 MiB x4, seconds per random 4 KiB read)."""
    sequential = [(c["file_id"], off, min(1 << 20, c["size"] - off))
                  for c in chunks for off in range(0, c["size"], 1 << 20)]
    total = sum(size for _, _, size in sequential)
    rng = random.Random(5)
    small = [(c["file_id"], rng.randrange(0, c["size"] - 4096) & ~4095, 4096)
             for c in (rng.choice(chunks) for _ in range(RANDOM_READS))]
    figures = {}
    for api, read_socket in (("read socket", True), ("gRPC ReadStream", False)):
        def source(read_socket: bool = read_socket) -> Source:
            return Source(SourceConfig(sidecar=str(socket), read_socket=read_socket,
                                       broker=f"127.0.0.1:{broker_port}"))

        async def runs(source: Callable[[], Source] = source) -> tuple[float, float]:
            async with trio_asyncio.open_loop():
                seq = min([await _sidecar_seconds(source(), sequential, 4) for _ in range(2)])
                return total / seq / 1e9, await _sidecar_seconds(source(), small, 1,
                                                                 copy=True) / len(small)

        figures[api] = trio.run(runs)
    return figures


def _mount(workdir: Path, name: str, cluster: Cluster, *args: str) -> tuple[Proc, Path]:
    mountpoint = workdir / name
    mountpoint.mkdir()
    return Proc(name, [sys.executable, "-m", "rdma.mount", str(mountpoint),
                       "--broker", f"127.0.0.1:{cluster.broker_port}", *args],
                workdir / f"{name}.log"), mountpoint


def _fuse_floor_seconds(workdir: Path) -> float:
    """Seconds for the random reads against ``bench.fuse_floor``'s zeros file system; the
    mount is gone when this returns."""
    mountpoint = workdir / "floor"
    mountpoint.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "bench.fuse_floor", str(mountpoint)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the FUSE floor file system did not start")
        return _random_seconds(mountpoint / fuse_floor.FILE_NAME.decode())
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                       capture_output=True, timeout=10)


def run() -> list[tuple[str, str, str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cluster = Cluster(workdir / "c", gateway_args=["--no-registry"])
        cluster.start()
        sidecar, socket, _ = cluster.sidecar("sidecar")
        mount, mountpoint = _mount(workdir, "mnt", cluster, "--sidecar", str(socket))
        plain, plain_point = _mount(workdir, "plain", cluster, "--no-sidecar")
        try:
            sidecar.start()
            fill_topic(cluster.bootstrap, TOPIC, megabytes=72, segment_bytes=SEGMENT)
            mount.start()
            plain.start()
            url = (f"http://127.0.0.1:{cluster.broker_http_port}/segments?topic={TOPIC}"
                   "&partition=0")
            with urllib.request.urlopen(url, timeout=10) as reply:
                segment = json.loads(reply.read())["segments"][0]
            name = f"{segment['base_offset']:020d}.log"
            size = segment["size"]
            local = cluster.data_dir / f"{TOPIC}-0" / name
            mounted = mountpoint / "topics" / TOPIC / "0" / name
            seconds = {
                "mount cold": min(_dd_seconds(mounted) for _ in range(2)),
                "mount warm": min(_dd_seconds(mounted, cold=False) for _ in range(2)),
                "no-sidecar cold": _dd_seconds(plain_point / "topics" / TOPIC / "0" / name),
                "local cold": min(_dd_seconds(local) for _ in range(2)),
                "local warm": min(_dd_seconds(local, cold=False) for _ in range(2)),
            }
            # Medians of several passes (this machine's noise is +-20 % a pass). The segment
            # itself is in the page cache, as a live one is: the cold dd above dropped it, and
            # the local baseline is a cached pread.
            _dd_seconds(local, cold=False)
            plain_file = plain_point / "topics" / TOPIC / "0" / name
            per_read = {"mount": _random_seconds(mounted) / RANDOM_READS,
                        "no-sidecar": _random_seconds(plain_file) / RANDOM_READS,
                        "local": _random_seconds(local, drop=False) / RANDOM_READS}
            apis = _sidecar_runs(socket, cluster.broker_port, segment["chunks"])
            floor_us = _fuse_floor_seconds(workdir) / RANDOM_READS * 1e6
            socket_us = fuse_floor.socket_round_trip_us()
        finally:
            mount.stop()
            plain.stop()
            sidecar.stop()
            cluster.stop()
    gbps = {what: size / took / 1e9 for what, took in seconds.items()}
    us = {what: took * 1e6 for what, took in per_read.items()}
    print(f"sequential dd bs=1M of {size >> 20} MiB, GB/s: " + ", ".join(
        f"{what} {rate:.2f}" for what, rate in gbps.items()))
    print("random 4 KiB preads, us each: " + ", ".join(
        f"{what} {took:.1f}" for what, took in us.items()))
    print(f"floors on this machine: random 4 KiB through a FUSE file system that returns "
          f"zeros (no IPC) {floor_us:.1f} us, a Unix-socket round trip to another process "
          f"{socket_us:.1f} us; together {floor_us + socket_us:.1f} us, under any mount that "
          "asks another process")
    for api, (rate, took) in apis.items():
        print(f"sidecar raw over the {api}: sequential 1 MiB x4 {rate:.2f} GB/s, random 4 KiB "
              f"{took * 1e6:.1f} us each")
    fast, grpc = apis["read socket"], apis["gRPC ReadStream"]
    return [
        ("mount dd 1M cold vs local dd cold", f"{gbps['mount cold']:.2f} GB/s",
         f"{gbps['local cold']:.2f} GB/s", gbps["mount cold"] / gbps["local cold"]),
        ("mount dd 1M warm vs local dd warm", f"{gbps['mount warm']:.2f} GB/s",
         f"{gbps['local warm']:.2f} GB/s", gbps["mount warm"] / gbps["local warm"]),
        ("mount random 4K pread vs local pread", f"{us['mount']:.1f} us",
         f"{us['local']:.1f} us", us["local"] / us["mount"]),
        ("mount dd 1M cold vs mount --no-sidecar", f"{gbps['mount cold']:.2f} GB/s",
         f"{gbps['no-sidecar cold']:.2f} GB/s", gbps["mount cold"] / gbps["no-sidecar cold"]),
        ("mount random 4K vs FUSE + socket floor", f"{us['mount']:.1f} us",
         f"{floor_us + socket_us:.1f} us", (floor_us + socket_us) / us["mount"]),
        ("mount random 4K vs mount --no-sidecar", f"{us['mount']:.1f} us",
         f"{us['no-sidecar']:.1f} us", us["no-sidecar"] / us["mount"]),
        ("sidecar 4K read: read socket vs gRPC", f"{fast[1] * 1e6:.1f} us",
         f"{grpc[1] * 1e6:.1f} us", grpc[1] / fast[1]),
        ("sidecar 1M x4: read socket vs gRPC", f"{fast[0]:.2f} GB/s", f"{grpc[0]:.2f} GB/s",
         fast[0] / grpc[0]),
    ]
