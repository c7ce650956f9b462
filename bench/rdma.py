"""RDMA data path: reads of one real segment (produced through the gateway) at 4 KiB, 64 KiB,
1 MiB and 16 MiB, queue depth 1 and 8, in one run:

- ``ucx``: what the sidecar does per read: a one-sided UCX GET of the broker's registered
  segment memory into a registered buffer (session opened once per chunk, as the sidecar
  caches it);
- ``sidecar``: the whole sidecar API, gRPC Read over its Unix socket with zero-copy buffers;
- ``http``: the broker's HTTP /read on a kept-alive connection (curl's path; the sidecar's
  fallback is the same copy, asked over gRPC: ReadChunk);
- ``pread``: the same file read locally (the raw baseline).

Ratios compare against pread and against the broker's HTTP /read, at every size.
"""

from __future__ import annotations

import http.client
import json
import mmap
import os
import random
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio_asyncio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kelp import grpc
from kelp.address import parse_host_port
from kelp.routes import BROKER, SIDECAR
from kelp.rpc.broker import v1 as broker_pb
from kelp.rpc.sidecar import v1 as sidecar_pb
from tests.kelp_procs import Cluster

CHUNK = 16 * 1024 * 1024
SIZES = (4096, 65536, 1 << 20, 16 << 20)
DEPTHS = (1, 8)
TOPIC = "bench-rdma"
SECONDS = 0.6  # per measurement, after a short warm-up


def fill_topic(bootstrap: str, topic: str, *, megabytes: int, segment_bytes: int) -> None:
    """A one-partition topic holding ``megabytes`` of 1000-byte records, rolled at
    ``segment_bytes`` (the segment files the rdma and mount benchmarks read)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"segment.bytes": str(segment_bytes)})])[
        topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "batch.size": 1_000_000})
    value = os.urandom(1000)
    for _ in range(megabytes * 1024):
        while True:
            try:
                producer.produce(topic, value=value)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)


def _first_chunk(cluster: Cluster) -> tuple[str, Path, int]:
    """The first full 16 MiB chunk of the first (sealed) segment: (file id, path, position)."""
    url = f"http://127.0.0.1:{cluster.broker_http_port}/segments?topic={TOPIC}&partition=0"
    with urllib.request.urlopen(url, timeout=10) as reply:
        segment = json.loads(reply.read())["segments"][0]
    chunk = segment["chunks"][0]
    assert chunk["size"] == CHUNK, chunk
    path = cluster.data_dir / f"{TOPIC}-0" / f"{segment['base_offset']:020d}.log"
    return chunk["file_id"], path, chunk["offset"]


async def _measure(depth: int, size: int, one: Callable[[int], Awaitable[None]]
                   ) -> tuple[float, float]:
    """(mean latency in ms, GB/s) of ``depth`` concurrent loops of ``one(offset)``."""
    rng = random.Random(size * depth)
    offsets = [rng.randrange(0, CHUNK - size + 1) & ~4095 for _ in range(256)]
    done = 0
    spent = 0.0

    async def loop(index: int, until: float) -> None:
        nonlocal done, spent
        i = index
        while time.perf_counter() < until:
            started = time.perf_counter()
            await one(offsets[i % len(offsets)])
            spent += time.perf_counter() - started
            done += 1
            i += depth

    warm = time.perf_counter() + 0.1
    async with trio.open_nursery() as nursery:
        for index in range(depth):
            nursery.start_soon(loop, index, warm)
    done, spent = 0, 0.0
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(depth):
            nursery.start_soon(loop, index, started + SECONDS)
    elapsed = time.perf_counter() - started
    return spent / done * 1000, done * size / elapsed / 1e9


async def _run_all(cluster: Cluster, sidecar_socket: Path) -> dict[tuple[str, int, int],
                                                                     tuple[float, float]]:
    from rdma import ucx

    file_id, path, position = _first_chunk(cluster)
    results: dict[tuple[str, int, int], tuple[float, float]] = {}
    fd = os.open(path, os.O_RDONLY)
    connections: list[http.client.HTTPConnection] = []
    async with trio_asyncio.open_loop(), ucx.open_worker() as worker:
        broker = grpc.Channel(grpc.Address.parse(f"127.0.0.1:{cluster.broker_port}"))
        sidecar = grpc.Channel(grpc.Address(path=str(sidecar_socket)))
        lease = await broker.call(BROKER.open_read, broker_pb.OpenReadRequest(file_id=file_id),
                                  timeout=10)
        assert lease.status == 200, lease.error
        host, port = parse_host_port(lease.ucx_address)
        endpoint = await worker.connect(host, port)
        key = endpoint.import_key(lease.descriptor)
        # Page-aligned destinations, as the sidecar's pool slots are (and the same kind for
        # pread, so both paths copy into the same memory).
        buffers = [mmap.mmap(-1, CHUNK) for _ in range(max(DEPTHS))]
        region_list = [worker.register(b, remote_write=False) for b in buffers]
        free_buffers = list(range(len(buffers)))
        transports = endpoint.rma_transports()
        try:
            for size in SIZES:
                for depth in DEPTHS:
                    async def by_ucx(offset: int, size: int = size) -> None:
                        slot = free_buffers.pop()
                        try:
                            await endpoint.get(key, lease.chunk_position + offset,
                                               memoryview(buffers[slot])[:size],
                                               local=region_list[slot])
                        finally:
                            free_buffers.append(slot)

                    async def by_sidecar(offset: int, size: int = size) -> None:
                        reply = await sidecar.call(
                            SIDECAR.read,
                            sidecar_pb.ReadRequest(file_id=file_id, offset=offset, size=size,
                                                   zero_copy=True), timeout=30)
                        assert reply.status == 200, reply.error
                        await sidecar.call(SIDECAR.release,
                                           sidecar_pb.ReleaseRequest(handle=reply.shared.handle),
                                           timeout=5)

                    def http_read(offset: int, size: int = size) -> None:
                        conn = (connections.pop() if connections else http.client.HTTPConnection(
                            "127.0.0.1", cluster.broker_http_port, timeout=30))
                        conn.request("GET", f"/read?file_id={file_id}&offset={offset}"
                                     f"&size={size}")
                        body = conn.getresponse().read()
                        assert len(body) == size
                        connections.append(conn)

                    async def by_http(offset: int) -> None:
                        await trio.to_thread.run_sync(http_read, offset)

                    def pread_into(offset: int, size: int = size) -> None:
                        slot = free_buffers.pop()
                        try:
                            os.preadv(fd, [memoryview(buffers[slot])[:size]], position + offset)
                        finally:
                            free_buffers.append(slot)

                    async def by_pread(offset: int, depth: int = depth) -> None:
                        if depth == 1:  # a local reader calls it inline: no thread hop
                            pread_into(offset)
                            await trio.lowlevel.checkpoint()
                        else:
                            await trio.to_thread.run_sync(pread_into, offset)

                    for name, one in (("ucx", by_ucx), ("sidecar", by_sidecar),
                                      ("http", by_http), ("pread", by_pread)):
                        results[(name, size, depth)] = await _measure(depth, size, one)
        finally:
            for region in region_list:
                region.close()
            for buffer in buffers:
                buffer.close()
            key.close()
            await endpoint.close()
            broker.close()
            sidecar.close()
            os.close(fd)
            for conn in connections:
                conn.close()
    print(f"UCX transports carrying the GETs: {', '.join(transports)}")
    return results


def run() -> list[tuple[str, str, str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), gateway_args=["--no-registry"],
                          broker_args=["--chunk-bytes", str(CHUNK)])
        cluster.start()
        sidecar, socket, _ = cluster.sidecar("sidecar")
        try:
            sidecar.start()
            fill_topic(cluster.bootstrap, TOPIC, megabytes=48, segment_bytes=40 << 20)
            results = trio.run(_run_all, cluster, socket)
        finally:
            sidecar.stop()
            cluster.stop()
    print(f"\n{'size':>7} {'qd':>3} " + " ".join(f"{n:>20}" for n in
                                                   ("ucx", "sidecar", "http", "pread"))
          + f" {'ucx/pread':>10} {'ucx/http':>9}")
    rows = []
    for size in SIZES:
        for depth in DEPTHS:
            cells = [results[(n, size, depth)] for n in ("ucx", "sidecar", "http", "pread")]
            ucx_rate, pread_rate, http_rate = cells[0][1], cells[3][1], cells[2][1]
            print(f"{_size(size):>7} {depth:>3} "
                  + " ".join(f"{lat:7.3f} ms {rate:6.2f} GB/s" for lat, rate in cells)
                  + f" {ucx_rate / pread_rate:9.2f}x {ucx_rate / http_rate:8.2f}x")
            if depth == 1 or size == 1 << 20:
                rows.append((f"rdma read {_size(size)} qd{depth}: ucx vs pread",
                             f"{ucx_rate:.2f} GB/s", f"{pread_rate:.2f} GB/s",
                             ucx_rate / pread_rate))
        if size == 1 << 20:
            for depth in DEPTHS:
                ucx_rate, http_rate = results[("ucx", size, depth)][1], results[
                    ("http", size, depth)][1]
                rows.append((f"rdma read 1M qd{depth}: ucx vs http fallback",
                             f"{ucx_rate:.2f} GB/s", f"{http_rate:.2f} GB/s",
                             ucx_rate / http_rate))
    return rows


def _size(size: int) -> str:
    return f"{size >> 20}M" if size >= 1 << 20 else f"{size >> 10}K"
