"""The FUSE mount: sequential ``dd bs=1M`` and random 4 KiB preads of one sealed segment
through ``kelp mount``, against the sidecar's raw read speed for the same bytes (its ReadStream
with zero-copy loans, as the mount uses it, 4 in flight) and local pread of the file, in one
run. Each mount measurement starts cold (the file's pages dropped from the page cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import trio
import trio_asyncio

from bench.rdma import fill_topic
from rdma.mount.source import Source, SourceConfig
from tests.kelp_procs import Cluster, Proc

TOPIC = "bench-mount"
SEGMENT = 64 << 20
RANDOM_READS = 2000

_RANDOM_SCRIPT = """
import os, random, sys, time
path, count = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
rng = random.Random(9)
offsets = [rng.randrange(0, size - 4096) & ~4095 for _ in range(count)]
started = time.perf_counter()
for offset in offsets:
    os.pread(fd, 4096, offset)
print(time.perf_counter() - started)
"""


def _dd_seconds(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold: through FUSE, not the cache
    os.close(fd)
    started = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True,
                   capture_output=True, timeout=300)
    return time.perf_counter() - started


def _random_seconds(path: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _RANDOM_SCRIPT, str(path), str(RANDOM_READS)],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    return float(out)


async def _sidecar_seconds(source: Source, chunks: list[dict], block: int,
                           depth: int) -> float:
    """Read every chunk in ``block``-sized pieces, ``depth`` at a time, as the mount does."""
    pieces = [(c["file_id"], off, min(block, c["size"] - off))
              for c in chunks for off in range(0, c["size"], block)]
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        todo = iter(pieces)

        async def worker() -> None:
            for file_id, offset, size in todo:
                source.release(await source.read(file_id, offset, size))

        async with trio.open_nursery() as readers:
            for _ in range(depth):
                readers.start_soon(worker)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed


def run() -> list[tuple[str, str, str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cluster = Cluster(workdir / "c", gateway_args=["--no-registry"])
        cluster.start()
        sidecar, socket, _ = cluster.sidecar("sidecar")
        mountpoint = workdir / "mnt"
        mountpoint.mkdir()
        mount = Proc("mount", [sys.executable, "-m", "rdma.mount", str(mountpoint),
                               "--broker", f"127.0.0.1:{cluster.broker_port}",
                               "--sidecar", str(socket)], workdir / "mount.log")
        try:
            sidecar.start()
            fill_topic(cluster.bootstrap, TOPIC, megabytes=72, segment_bytes=SEGMENT)
            mount.start()
            url = (f"http://127.0.0.1:{cluster.broker_http_port}/segments?topic={TOPIC}"
                   "&partition=0")
            with urllib.request.urlopen(url, timeout=10) as reply:
                segment = json.loads(reply.read())["segments"][0]
            name = f"{segment['base_offset']:020d}.log"
            size = segment["size"]
            local = cluster.data_dir / f"{TOPIC}-0" / name
            mounted = mountpoint / "topics" / TOPIC / "0" / name
            dd = min(_dd_seconds(mounted) for _ in range(2))
            mount_random = _random_seconds(mounted)
            source = Source(SourceConfig(sidecar=str(socket),
                                         broker=f"127.0.0.1:{cluster.broker_port}"))

            async def sidecar_runs() -> tuple[float, float]:
                async with trio_asyncio.open_loop():
                    sequential = min([await _sidecar_seconds(source, segment["chunks"],
                                                             1 << 20, 4) for _ in range(2)])
                    few = [dict(c) for c in segment["chunks"]][:1]
                    small = await _sidecar_seconds(source, few, 4096, 1)
                    return sequential, small / (few[0]["size"] // 4096)

            sidecar_seq, sidecar_4k = trio.run(sidecar_runs)
            local_dd = min(_dd_seconds(local) for _ in range(2))
            local_random = _random_seconds(local)
        finally:
            mount.stop()
            sidecar.stop()
            cluster.stop()
    gbps = [size / seconds / 1e9 for seconds in (dd, sidecar_seq, local_dd)]
    per_read = [mount_random / RANDOM_READS * 1e6, sidecar_4k * 1e6,
                local_random / RANDOM_READS * 1e6]
    print(f"mount sequential dd bs=1M ({size >> 20} MiB, cold): {gbps[0]:.2f} GB/s | sidecar "
          f"raw (ReadStream, 1 MiB x4): {gbps[1]:.2f} GB/s | local dd: {gbps[2]:.2f} GB/s")
    print(f"random 4 KiB preads: mount {per_read[0]:.1f} us | sidecar raw {per_read[1]:.1f} us"
          f" | local {per_read[2]:.1f} us (each)")
    return [
        ("mount sequential dd 1M vs sidecar raw", f"{gbps[0]:.2f} GB/s", f"{gbps[1]:.2f} GB/s",
         gbps[0] / gbps[1]),
        ("mount sequential dd 1M vs local file", f"{gbps[0]:.2f} GB/s", f"{gbps[2]:.2f} GB/s",
         gbps[0] / gbps[2]),
        ("mount random 4K pread vs local pread", f"{per_read[0]:.1f} us",
         f"{per_read[2]:.1f} us", per_read[2] / per_read[0]),
    ]
