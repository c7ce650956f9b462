"""The sidecar's data path against a real broker: byte-exact reads of real segments produced
through the gateway, over UCX (proved by the transport the endpoints report and the sidecar's
counters) and over the fallback (the broker's ReadChunk, reported as transport "http"), with
refusals, restarts and a broker whose UCX side stops while its copying side stays."""

from __future__ import annotations

import json
import mmap
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kelp import fileid, grpc
from kelp.routes import SIDECAR
from kelp.rpc.sidecar import v1 as sidecar_pb
from tests.kelp_procs import Cluster, Proc

pytestmark = pytest.mark.timeout(240)

CHUNK = 16 * 1024 * 1024
SEGMENT = 24 * 1024 * 1024
TOPIC = "rdma"
UCX_TRANSPORTS = ("cma", "sysv", "posix", "xpmem", "knem", "tcp", "rc", "dc", "ud")


@dataclass
class Rig:
    cluster: Cluster
    sidecar: Proc
    socket: Path
    http_port: int

    def http(self, target: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{target}",
                                        timeout=30) as reply:
                return reply.status, reply.read(), dict(reply.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def stats(self) -> dict[str, int]:
        return json.loads(self.http("/stats")[1])["counters"]

    def listing(self) -> dict[str, Any]:
        url = (f"http://127.0.0.1:{self.cluster.broker_http_port}/segments?topic={TOPIC}"
               "&partition=0")
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.loads(reply.read())

    def on_disk(self, base_offset: int) -> bytes:
        return (self.cluster.data_dir / f"{TOPIC}-0" / f"{base_offset:020d}.log").read_bytes()


def _fill(cluster: Cluster, megabytes: int) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(TOPIC, 1, 1, config={"segment.bytes": str(SEGMENT)})])[
        TOPIC].result(10)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 5,
                         "batch.size": 1_000_000})
    rng = random.Random(3)
    for _ in range(megabytes * 1024):
        while True:
            try:
                producer.produce(TOPIC, value=rng.randbytes(1000))
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0


def _rig(tmp_path: Path, *sidecar_args: str) -> Iterator[Rig]:
    cluster = Cluster(tmp_path / "c", gateway_args=["--no-registry"],
                      broker_args=["--chunk-bytes", str(CHUNK),
                                   "--debug", "ucx-stop-endpoint=1"])
    sidecar = None
    try:
        cluster.start()
        _fill(cluster, 60)
        sidecar, socket, http_port = cluster.sidecar("sidecar", *sidecar_args)
        sidecar.start()
        yield Rig(cluster, sidecar, socket, http_port)
    finally:
        if sidecar is not None:
            sidecar.stop()
        cluster.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path)


@pytest.fixture
def http_only_rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path, "--no-ucx")


def _ranges(rig: Rig, count: int, seed: int) -> list[tuple[str, int, int, bytes]]:
    """(file id, offset, size, expected bytes): random ranges plus the edges that break
    naive code: one byte, the last byte of a chunk, a whole chunk, the end of the file."""
    rng = random.Random(seed)
    out = []
    for segment in rig.listing()["segments"]:
        disk = rig.on_disk(segment["base_offset"])
        assert len(disk) == segment["size"]
        for chunk in segment["chunks"]:
            data = disk[chunk["offset"]:chunk["offset"] + chunk["size"]]
            n = chunk["size"]
            picks = [(0, 1), (n - 1, 1), (0, n), (n - 4096, 4096)]
            for _ in range(count):
                size = rng.choice((1, 7, 4096, 65536, 1 << 20, rng.randrange(1, n + 1)))
                size = min(size, n)
                picks.append((rng.randrange(n - size + 1), size))
            out += [(chunk["file_id"], off, size, data[off:off + size]) for off, size in picks]
    return out


async def _grpc_reads(rig: Rig, ranges: list[tuple[str, int, int, bytes]], *,
                      zero_copy: bool) -> list[str]:
    """Read every range through the gRPC API; returns the transports used."""
    transports = []
    async with trio_asyncio.open_loop():
        channel = grpc.Channel(grpc.Address(path=str(rig.socket)))
        try:
            for file_id, offset, size, expected in ranges:
                reply = await channel.call(
                    SIDECAR.read,
                    sidecar_pb.ReadRequest(file_id=file_id, offset=offset, size=size,
                                           zero_copy=zero_copy), timeout=30)
                assert reply.status == 200, reply.error
                if zero_copy:
                    assert not reply.data
                    got = _mapped(reply.shared)
                    released = await channel.call(
                        SIDECAR.release,
                        sidecar_pb.ReleaseRequest(handle=reply.shared.handle), timeout=5)
                    assert released.released
                else:
                    got = reply.data
                assert got == expected, (file_id, offset, size)
                transports.append(reply.transport)
        finally:
            channel.close()
    return transports


def _mapped(shared: sidecar_pb.SharedBuffer) -> bytes:
    """What a zero-copy consumer does: map the sidecar's buffer read-only and look."""
    fd = os.open(shared.path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as whole:
            return bytes(whole[shared.offset:shared.offset + shared.length])
    finally:
        os.close(fd)


async def test_random_ranges_are_byte_exact_over_ucx(rig: Rig) -> None:
    ranges = _ranges(rig, count=6, seed=1)
    assert len(rig.listing()["segments"]) >= 3  # sealed segments and the active one
    before = rig.stats()
    transports = await _grpc_reads(rig, ranges, zero_copy=False)
    transports += await _grpc_reads(rig, ranges, zero_copy=True)
    for file_id, offset, size, expected in ranges[:40]:
        status, body, headers = rig.http(f"/read?file_id={file_id}&offset={offset}"
                                         f"&size={size}")
        assert (status, body) == (200, expected)
        transports.append(headers["x-kelp-transport"])
    after = rig.stats()
    # Which path moved the bytes: every read says UCX, the counters agree, no fallback ran.
    assert set(transports) == {"ucx"}
    assert after["rdma_reads"] - before["rdma_reads"] == len(transports)
    assert after["fallback_reads"] == before["fallback_reads"] == 0
    capabilities = json.loads(rig.http("/capabilities")[1])
    assert capabilities["ucx"] is True and capabilities["transports"]
    assert all(t.split("/")[0] in UCX_TRANSPORTS for t in capabilities["transports"])
    assert after["buffers_lent"] == 0  # every zero-copy buffer came back


def test_refusals_happen_before_ucx(rig: Rig) -> None:
    chunk = rig.listing()["segments"][0]["chunks"][0]
    before = rig.stats()
    status, body, _ = rig.http(f"/read?file_id={chunk['file_id']}&offset={chunk['size'] - 1}"
                               "&size=2")
    assert status == 416 and b"runs past the end" in body
    parsed = fileid.parse(chunk["file_id"])
    wrong = fileid.format_file_id(fileid.FileId(parsed.volume, parsed.key, parsed.cookie ^ 2))
    status, body, _ = rig.http(f"/read?file_id={wrong}&offset=0&size=1")
    assert status == 404 and b"wrong cookie" in body
    after = rig.stats()
    assert after["rdma_reads"] == before["rdma_reads"]
    assert after["fallback_reads"] == before["fallback_reads"]
    # Deleted by DeleteRecords: a chunk not yet opened is refused (one the sidecar holds a
    # session on stays readable, with its old bytes, until the session ends, like a fetch in
    # flight during retention).
    segments = rig.listing()["segments"]
    unopened = segments[0]["chunks"][1]["file_id"]
    admin = AdminClient({"bootstrap.servers": rig.cluster.bootstrap})
    admin.delete_records([TopicPartition(TOPIC, 0, segments[1]["base_offset"])])[
        TopicPartition(TOPIC, 0, segments[1]["base_offset"])].result(10)
    status, body, _ = rig.http(f"/read?file_id={unopened}&offset=0&size=1")
    assert status == 404 and b"segment is gone" in body


async def test_http_fallback_when_ucx_is_disabled(http_only_rig: Rig) -> None:
    ranges = _ranges(http_only_rig, count=3, seed=2)
    transports = await _grpc_reads(http_only_rig, ranges, zero_copy=True)
    assert set(transports) == {"http"}
    stats = http_only_rig.stats()
    assert stats["rdma_reads"] == 0 and stats["fallback_reads"] == len(ranges)
    capabilities = json.loads(http_only_rig.http("/capabilities")[1])
    assert capabilities["ucx"] is False and "disabled" in capabilities["reason"]


async def test_fallback_when_the_brokers_ucx_side_stops(rig: Rig) -> None:
    ranges = _ranges(rig, count=2, seed=3)
    assert set(await _grpc_reads(rig, ranges[:5], zero_copy=False)) == {"ucx"}
    request = urllib.request.Request(
        f"http://127.0.0.1:{rig.cluster.broker_http_port}/debug/ucx-stop", method="POST")
    urllib.request.urlopen(request, timeout=5).read()
    # Whatever the sidecar had cached, every read is still byte-exact; new ones go over HTTP.
    transports = await _grpc_reads(rig, ranges, zero_copy=False)
    assert transports[-1] == "http"
    assert rig.stats()["fallback_reads"] >= 1


def test_broker_restart_mid_read_never_gives_wrong_bytes(rig: Rig) -> None:
    ranges = _ranges(rig, count=4, seed=4)
    outcomes: dict[str, int] = {"exact": 0, "error": 0}
    wrong: list[tuple[str, int, int]] = []
    stop = threading.Event()

    def reader() -> None:
        rng = random.Random(5)
        while not stop.is_set():
            file_id, offset, size, expected = rng.choice(ranges)
            try:
                status, body, _ = rig.http(f"/read?file_id={file_id}&offset={offset}"
                                           f"&size={size}")
            except OSError:
                outcomes["error"] += 1
                continue
            if status != 200:
                outcomes["error"] += 1
            elif body == expected:
                outcomes["exact"] += 1
            else:
                wrong.append((file_id, offset, size))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.5)
        rig.cluster.restart_broker(hard=True)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(60)
    assert not wrong, f"wrong bytes for {wrong[:3]}"
    assert outcomes["exact"] > 0 and outcomes["error"] > 0, outcomes
    # Ids from before the restart are refused; a fresh listing reads over UCX again.
    status, body, _ = rig.http(f"/read?file_id={ranges[0][0]}&offset=0&size=1")
    assert status == 404, body
    fresh = _ranges(rig, count=1, seed=6)[:8]
    transports = trio.run(_run_reads_in_trio, rig, fresh)
    assert set(transports) == {"ucx"}


async def _run_reads_in_trio(rig: Rig, ranges: list[tuple[str, int, int, bytes]]) -> list[str]:
    return await _grpc_reads(rig, ranges, zero_copy=False)


def _stop_seconds(proc: Proc) -> float:
    started = time.monotonic()
    assert proc.stop() == 0
    return time.monotonic() - started


def test_sidecar_restarts_cleanly(rig: Rig) -> None:
    file_id, offset, size, expected = _ranges(rig, count=1, seed=7)[5]
    target = f"/read?file_id={file_id}&offset={offset}&size={size}"
    assert rig.http(target)[2]["x-kelp-transport"] == "ucx"  # an endpoint to close
    pool_files = list(Path("/dev/shm").glob(f"kelp-sidecar-{rig.sidecar.popen.pid}"))
    assert pool_files, "the buffer pool lives in /dev/shm while the sidecar runs"
    # The UCX endpoint is closed gracefully, well inside UCX's 5 s close timeout (both ends
    # once waited all of it: their workers were no longer progressed once stopping).
    assert _stop_seconds(rig.sidecar) < 3
    assert not pool_files[0].exists(), "the pool file must go with the sidecar"
    rig.sidecar.start()
    status, body, headers = rig.http(target)
    assert (status, body, headers["x-kelp-transport"]) == (200, expected, "ucx")
    assert _stop_seconds(rig.cluster.broker) < 3  # with the sidecar's endpoint open


def test_ping_reaches_the_broker_over_a_kept_alive_connection(rig: Rig) -> None:
    for _ in range(3):
        status, body, _ = rig.http("/ping")
        assert status == 200, body
        reply = json.loads(body)
        assert reply["status"] == "ok" and reply["latency_ms"] >= 0
    assert rig.stats()["pings"] >= 3

