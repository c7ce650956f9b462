"""The sidecar's buffer pool against real processes: reads cancelled mid-way give their buffers
back, one client's never-released zero-copy loans starve neither another client nor HTTP
/read, a loan can be released only by the connection that took it, and a client that goes
away (or forgets) gets its loans taken back."""

from __future__ import annotations

import json
import mmap
import os
import random
import signal
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
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kelp import grpc
from kelp.routes import SIDECAR
from kelp.rpc.sidecar import v1 as sidecar_pb
from tests.kelp_procs import Cluster, Proc

pytestmark = pytest.mark.timeout(180)

TOPIC = "fair"
CHUNK = 1 << 20
READ = SIDECAR.read
RELEASE = SIDECAR.release


@dataclass
class Rig:
    cluster: Cluster
    sidecar: Proc
    socket: Path
    http_port: int
    chunks: list[tuple[str, bytes]]  # (file id, bytes) of every chunk

    def http(self, target: str, timeout: float = 30) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{target}",
                                        timeout=timeout) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stats(self) -> dict[str, int]:
        return json.loads(self.http("/stats")[1])["counters"]

    def channel(self) -> grpc.Channel:
        return grpc.Channel(grpc.Address(path=str(self.socket)))

    def wait_whole(self, timeout: float = 3.0) -> dict[str, int]:
        """Wait until every buffer is free again; returns the stats then."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if (stats["buffers_free"] == stats["buffers"] and stats["buffers_lent"] == 0
                    and stats["buffer_waiters"] == 0):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"pool not whole after {timeout}s: {stats}")
            time.sleep(0.05)


def _fill(cluster: Cluster) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(TOPIC, 1, 1, config={"segment.bytes": str(6 << 20)})])[
        TOPIC].result(10)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 5})
    rng = random.Random(11)
    for _ in range(20_000):
        while True:
            try:
                producer.produce(TOPIC, value=rng.randbytes(1000))
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0


def _chunks(cluster: Cluster) -> list[tuple[str, bytes]]:
    url = (f"http://127.0.0.1:{cluster.broker_http_port}/segments?topic={TOPIC}&partition=0")
    with urllib.request.urlopen(url, timeout=10) as reply:
        listing = json.loads(reply.read())
    out = []
    for segment in listing["segments"]:
        disk = (cluster.data_dir / f"{TOPIC}-0" / f"{segment['base_offset']:020d}.log"
                ).read_bytes()
        for chunk in segment["chunks"]:
            out.append((chunk["file_id"], disk[chunk["offset"]:chunk["offset"] + chunk["size"]]))
    return out


def _rig(tmp_path: Path, *sidecar_args: str) -> Iterator[Rig]:
    cluster = Cluster(tmp_path / "c", gateway_args=["--no-registry"],
                      broker_args=["--chunk-bytes", str(CHUNK)])
    sidecar = None
    try:
        cluster.start()
        _fill(cluster)
        sidecar, socket, http_port = cluster.sidecar("sidecar", *sidecar_args)
        sidecar.start()
        yield Rig(cluster, sidecar, socket, http_port, _chunks(cluster))
    finally:
        if sidecar is not None:
            sidecar.stop()
        cluster.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path)


@pytest.fixture
def small_rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path, "--buffers", "4", "--lend-ms", "1500")


def _mapped(shared: sidecar_pb.SharedBuffer) -> bytes:
    fd = os.open(shared.path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as whole:
            return bytes(whole[shared.offset:shared.offset + shared.length])
    finally:
        os.close(fd)


async def _read(channel: grpc.Channel, file_id: str, offset: int, size: int, *,
                zero_copy: bool = False, timeout: float = 30) -> Any:
    return await channel.call(READ, sidecar_pb.ReadRequest(
        file_id=file_id, offset=offset, size=size, zero_copy=zero_copy), timeout=timeout)


async def _release(channel: grpc.Channel, handle: int) -> Any:
    return await channel.call(RELEASE, sidecar_pb.ReleaseRequest(handle=handle), timeout=5)


async def test_reads_cancelled_mid_way_give_their_buffers_back(small_rig: Rig) -> None:
    rig = small_rig
    assert rig.stats()["buffers"] == 4
    assert len(rig.chunks) >= 4 + 5 + 1
    pid = rig.cluster.broker.popen.pid
    cancelled = 0
    async with trio_asyncio.open_loop():
        channels = [rig.channel() for _ in range(3)]
        stream_channel = rig.channel()
        try:
            os.kill(pid, signal.SIGSTOP)  # every new read now hangs in the broker's OpenRead
            try:
                async def abandon(index: int) -> None:
                    nonlocal cancelled
                    file_id, data = rig.chunks[index]
                    with trio.move_on_after(0.5) as waiting:  # the client gives up: disconnect
                        await _read(channels[index % 3], file_id, 0, len(data),
                                    zero_copy=index % 2 == 0)
                    cancelled += waiting.cancelled_caught

                async with trio.open_nursery() as nursery:
                    for index in range(4 + 5):
                        nursery.start_soon(abandon, index)
                # A stream that ends with reads in flight.
                async with stream_channel.open_stream(SIDECAR.read_stream) as stream:
                    for n in (1, 2):
                        stream.send(sidecar_pb.ReadRequest(
                            file_id=rig.chunks[-n][0], offset=0, size=100, zero_copy=True,
                            request_id=n))
                    await trio.sleep(0.3)
                assert cancelled == 9
                # Everything came back at once, while the broker is still stopped.
                stats = await trio.to_thread.run_sync(rig.wait_whole)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert stats["buffers_free"] == 4
            # And reads work, quickly, for every chunk, both ways.
            for index, (file_id, data) in enumerate(rig.chunks):
                started = time.monotonic()
                with trio.fail_after(5):
                    reply = await _read(channels[index % 3], file_id, 0, len(data),
                                        zero_copy=index % 2 == 0)
                assert reply.status == 200, reply.error
                if index % 2 == 0:
                    assert _mapped(reply.shared) == data
                    assert (await _release(channels[index % 3], reply.shared.handle)).released
                else:
                    assert reply.data == data
                assert time.monotonic() - started < 2
            status, body = await trio.to_thread.run_sync(
                rig.http, f"/read?file_id={rig.chunks[0][0]}&offset=0&size=4096", 5)
            assert (status, body) == (200, rig.chunks[0][1][:4096])
        finally:
            for channel in (*channels, stream_channel):
                channel.close()
    rig.wait_whole()


async def test_eight_unreleased_loans_starve_neither_another_client_nor_http(
        rig: Rig) -> None:
    file_id, data = rig.chunks[0]
    async with trio_asyncio.open_loop():
        hoarder, other = rig.channel(), rig.channel()
        try:
            loans: list[Any] = []
            async with trio.open_nursery() as nursery:
                async def hoard() -> None:
                    with trio.move_on_after(4):  # those over its share wait, then give up
                        reply = await _read(hoarder, file_id, 0, 4096, zero_copy=True)
                        assert reply.status == 200, reply.error
                        loans.append(reply)

                for _ in range(8):
                    nursery.start_soon(hoard)
                await trio.sleep(0.5)
                stats = rig.stats()
                assert stats["buffers_lent"] == 4 and stats["buffer_waiters"] == 4, stats
                # Meanwhile, another client and HTTP /read are served at once.
                started = time.monotonic()
                reply = await _read(other, file_id, 100, 5000, timeout=5)
                assert (reply.status, reply.data) == (200, data[100:5100])
                assert time.monotonic() - started < 1
                started = time.monotonic()
                status, body = await trio.to_thread.run_sync(
                    rig.http, f"/read?file_id={file_id}&offset=7&size=999", 5)
                assert (status, body) == (200, data[7:1006])
                assert time.monotonic() - started < 1
                # A zero-copy read of the other client too.
                reply = await _read(other, file_id, 0, 64, zero_copy=True, timeout=5)
                assert _mapped(reply.shared) == data[:64]
                assert (await _release(other, reply.shared.handle)).released
            assert len(loans) == 4
            for loan in loans:
                assert _mapped(loan.shared) == data[:4096]
                assert (await _release(hoarder, loan.shared.handle)).released
        finally:
            hoarder.close()
            other.close()
    rig.wait_whole()


async def test_a_foreign_release_is_refused_and_the_buffer_stays_intact(rig: Rig) -> None:
    (mine_id, mine), (theirs_id, theirs) = rig.chunks[0], rig.chunks[1]
    async with trio_asyncio.open_loop():
        owner, intruder = rig.channel(), rig.channel()
        try:
            reply = await _read(owner, mine_id, 0, len(mine), zero_copy=True)
            assert reply.status == 200 and _mapped(reply.shared) == mine
            handle = reply.shared.handle
            refused = await _release(intruder, handle)
            assert not refused.released and refused.status == 403
            assert "another client" in refused.error
            guessed = await _release(intruder, handle + 1)  # handles are not sequential
            assert not guessed.released and guessed.status == 404
            # The intruder churns through the pool: the owner's buffer is not among them.
            for _ in range(10):
                other = await _read(intruder, theirs_id, 0, len(theirs), zero_copy=True)
                assert other.status == 200
                assert other.shared.offset != reply.shared.offset
                assert (await _release(intruder, other.shared.handle)).released
            assert _mapped(reply.shared) == mine  # bytes unchanged
            assert rig.stats()["releases_refused"] == 1
            assert (await _release(owner, handle)).released
        finally:
            owner.close()
            intruder.close()
    rig.wait_whole()


async def test_loans_come_back_when_the_client_goes_away(rig: Rig) -> None:
    file_id, data = rig.chunks[0]
    async with trio_asyncio.open_loop():
        leaver = rig.channel()
        try:
            for offset in (0, 1, 2):
                reply = await _read(leaver, file_id, offset, 100, zero_copy=True)
                assert reply.status == 200
            async with leaver.open_stream(SIDECAR.read_stream) as stream:
                stream.send(sidecar_pb.ReadRequest(file_id=file_id, offset=9, size=10,
                                                   zero_copy=True, request_id=1))
                got = await stream.recv()
                assert got.status == 200 and _mapped(got.shared) == data[9:19]
                assert rig.stats()["buffers_lent"] == 4
            # The stream ended: its loan came back; the connection's three are still out.
            await trio.sleep(0.1)
            assert rig.stats()["buffers_lent"] == 3
        finally:
            leaver.close()  # the client goes away without releasing
        started = time.monotonic()
        stats = await trio.to_thread.run_sync(rig.wait_whole)
        assert time.monotonic() - started < 2
        assert stats["loans_returned_on_close"] == 4
        grpc_stats = rig.channel()
        try:
            reply = await grpc_stats.call(SIDECAR.stats, sidecar_pb.StatsRequest(), timeout=5)
        finally:
            grpc_stats.close()
        assert reply.counters["buffers_free"] == reply.counters["buffers"] == 8


async def test_a_forgotten_loan_is_taken_back_after_lend_ms(small_rig: Rig) -> None:
    rig = small_rig
    file_id = rig.chunks[0][0]
    async with trio_asyncio.open_loop():
        forgetful = rig.channel()
        try:
            reply = await _read(forgetful, file_id, 0, 10, zero_copy=True)
            assert reply.status == 200 and rig.stats()["buffers_lent"] == 1
            await trio.sleep(2.0)  # --lend-ms 1500
            stats = rig.stats()
            assert stats["buffers_lent"] == 0 and stats["buffers_reclaimed"] == 1
            late = await _release(forgetful, reply.shared.handle)
            assert not late.released and late.status == 404
            capabilities = await forgetful.call(
                SIDECAR.capabilities, sidecar_pb.CapabilitiesRequest(), timeout=5)
            assert (capabilities.buffers, capabilities.client_buffers,
                    capabilities.http_reserve, capabilities.lend_ms) == (4, 2, 1, 1500)
        finally:
            forgetful.close()
    rig.wait_whole()
