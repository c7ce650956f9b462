"""The sidecar's read socket (rdma.read_socket) against a real broker and sidecar: the mount's
reader gets byte-exact ranges through it, loans come back however a reader leaves, a malformed
frame costs only the connection that sent it, and a sidecar without it leaves the mount on
gRPC ReadStream."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator

import pytest
import trio
import trio_asyncio

from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma import wire
from rdma.mount.source import Source, SourceConfig
from rdma.reader import INLINE_READ_MAX
from tests.integration.test_rdma_reads import Rig, _mapped, _ranges, _rig

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # One cluster for the module (filling it is most of the time); each test leaves every
    # buffer given back.
    yield from _rig(tmp_path_factory.mktemp("read-socket"))


def _read_socket(rig: Rig) -> str:
    path = json.loads(rig.http("/capabilities")[1])["read_socket"]
    assert path
    return path


def _connect(path: str) -> tuple[socket.socket, wire.Hello]:
    """A raw client: connect and take the hello."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock, wire.decode_hello(_receive(sock))


def _receive(sock: socket.socket) -> bytes:
    header = _exactly(sock, 4)
    return _exactly(sock, struct.unpack("<I", header)[0])


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = sock.recv(count - len(data))
        if not more:
            raise EOFError(f"closed after {len(data)} of {count} bytes")
        data += more
    return data


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _wait_for(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _source(rig: Rig, *, read_socket: bool = True) -> Source:
    return Source(SourceConfig(sidecar=str(rig.socket), read_socket=read_socket,
                               broker=f"127.0.0.1:{rig.cluster.broker_port}", fallback=False))


async def _read_all(source: Source, ranges: list[tuple[str, int, int, bytes]], *,
                    copy: bool = False) -> list[int]:
    """Read every range (asking for copies with ``copy``), check its bytes and give it back;
    returns each read's loan handle (0: the bytes came in the reply)."""
    handles = []
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(source.run)
        for file_id, offset, size, expected in ranges:
            loan = await source.read(file_id, offset, size, copy=copy)
            handles.append(loan.handle)
            try:
                assert bytes(loan.data) == expected, (file_id, offset, size)
            finally:
                source.release(loan)
        nursery.cancel_scope.cancel()
    return handles


async def test_the_mounts_reader_reads_byte_exact_ranges_over_the_read_socket(rig: Rig) -> None:
    ranges = _ranges(rig, count=6, seed=2)
    path = _read_socket(rig)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = rig.stats()
    source = _source(rig)
    await _read_all(source, ranges)
    after = rig.stats()
    assert source.transport == "read socket"
    assert source.counters["sidecar_reads"] == len(ranges)
    assert after["read_socket_requests"] - before["read_socket_requests"] >= len(ranges)
    assert after["rdma_reads"] - before["rdma_reads"] == len(ranges)
    assert after["grpc_requests"] - before["grpc_requests"] <= 2  # Capabilities only
    # A small read of a chunk whose UCX session is open is answered in the task that received
    # it when its GET finishes inline, as cma's and shared memory's do (tcp's never do).
    transports = json.loads(rig.http("/capabilities")[1])["transports"]
    if any(t.split("/")[0] in ("cma", "sysv", "posix", "xpmem", "knem") for t in transports):
        small = sum(1 for _, _, size, _ in ranges if size <= INLINE_READ_MAX)
        chunks = len({file_id for file_id, _, _, _ in ranges})
        assert after["inline_reads"] - before["inline_reads"] >= small - chunks > 0
    _wait_for(lambda: rig.stats()["buffers_lent"] == 0)  # every loan came back


async def test_small_reads_asked_as_copies_come_back_in_the_reply(rig: Rig) -> None:
    """The mount's random reads: the bytes travel in the reply, with no loan to give back
    (so no release frame after), and the lone read waits for its reply in place; a read over
    the read socket's copy limit is lent as before."""
    assert json.loads(rig.http("/capabilities")[1])["read_socket_copy_max"] == wire.MAX_COPY
    ranges = _ranges(rig, count=8, seed=4)
    small = [size <= wire.MAX_COPY for _, _, size, _ in ranges]
    assert 0 < sum(small) < len(ranges)
    before = rig.stats()
    source = _source(rig)
    handles = await _read_all(source, ranges, copy=True)
    after = rig.stats()
    assert [handle == 0 for handle in handles] == small
    assert after["reads"] - before["reads"] == len(ranges)
    # Each copied read was alone on the connection: most replies came within the wait in
    # place (a loaded machine may push some past it; then they are delivered as usual).
    assert 0 < source.counters["replies_in_place"] <= sum(small)
    _wait_for(lambda: rig.stats()["buffers_lent"] == 0)


def test_a_raw_copied_read_gets_its_bytes_in_a_data_frame(rig: Rig) -> None:
    file_id = rig.listing()["segments"][0]["chunks"][0]["file_id"]
    sock, hello = _connect(_read_socket(rig))
    try:
        sock.sendall(wire.encode_read(sidecar_pb.ReadRequest(
            file_id=file_id, offset=100, size=5000, request_id=3), copy_max=wire.MAX_COPY))
        body = _receive(sock)
        assert body[0] == wire.DATA
        reply = wire.decode_reply(body, hello.pool_path)
        assert (reply.request_id, reply.status, reply.shared) == (3, 200, None)
        assert reply.data == rig.on_disk(0)[100:5100]
        assert rig.stats()["buffers_lent"] == 0
    finally:
        sock.close()


async def test_reads_over_a_transport_that_does_not_copy_inline_are_byte_exact(
        rig: Rig) -> None:
    """Over UCX's tcp transport a GET finishes only when the broker answers, seldom during
    the call: the first small read of an open session that finds that out leaves its GET to
    settle and reads again the way that waits, and the session stops trying; every byte
    still comes over UCX, exactly."""
    sidecar, socket, http_port = rig.cluster.sidecar("sidecar-tcp", "--ucx-transports", "tcp")
    sidecar.start()
    try:
        tcp = Rig(rig.cluster, sidecar, socket, http_port)
        file_id, _, _, _ = _ranges(rig, count=0, seed=3)[0]
        ranges = [r for r in _ranges(rig, count=12, seed=3) if r[0] == file_id]
        await _read_all(_source(tcp), ranges)
        # Again, its session cached now; copied where small (a GET that waits for the broker
        # may outlast the reader's wait in place: then its reply comes the usual way).
        await _read_all(_source(tcp), ranges, copy=True)
        assert json.loads(tcp.http("/capabilities")[1])["transports"] == ["tcp/lo"]
        stats = tcp.stats()
        assert stats["rdma_reads"] == 2 * len(ranges) and stats["fallback_reads"] == 0
        # The first GET of the session that did not finish during the call (a tcp GET can,
        # when the broker answers within the inline progress rounds) was its last try.
        assert stats["inline_misses"] <= 1 and stats["inline_reads"] + stats["inline_misses"] >= 1
        _wait_for(lambda: tcp.stats()["buffers_free"] == tcp.stats()["buffers"])
    finally:
        sidecar.stop()


def test_a_vanished_readers_loans_come_back(rig: Rig) -> None:
    file_id = rig.listing()["segments"][0]["chunks"][0]["file_id"]
    sock, hello = _connect(_read_socket(rig))
    handles = []
    try:
        for request_id in (1, 2):
            sock.sendall(wire.encode_read(sidecar_pb.ReadRequest(
                file_id=file_id, offset=request_id * 4096, size=4096, request_id=request_id,
                zero_copy=True)))
            reply = wire.decode_reply(_receive(sock), hello.pool_path)
            assert reply.status == 200, reply.error
            assert reply.request_id == request_id and reply.shared is not None
            assert _mapped(reply.shared) == rig.on_disk(0)[request_id * 4096:
                                                           (request_id + 1) * 4096]
            handles.append(reply.shared.handle)
        assert rig.stats()["buffers_lent"] == 2
    finally:
        sock.close()  # without releasing either
    _wait_for(lambda: rig.stats()["buffers_lent"] == 0)


def test_a_loan_is_released_only_by_its_reader(rig: Rig) -> None:
    file_id = rig.listing()["segments"][0]["chunks"][0]["file_id"]
    path = _read_socket(rig)
    owner, hello = _connect(path)
    other, _ = _connect(path)
    try:
        owner.sendall(wire.encode_read(sidecar_pb.ReadRequest(
            file_id=file_id, offset=0, size=100, request_id=7, zero_copy=True)))
        handle = wire.decode_reply(_receive(owner), hello.pool_path).shared.handle
        other.sendall(wire.encode_read(sidecar_pb.ReadRequest(request_id=8, release=[handle])))
        refused = wire.decode_reply(_receive(other), hello.pool_path)
        assert (refused.request_id, refused.status) == (8, 403)
        assert refused.release_refused == [handle]
        assert rig.stats()["buffers_lent"] == 1  # still the owner's
        owner.sendall(wire.encode_read(sidecar_pb.ReadRequest(request_id=9, release=[handle])))
        _wait_for(lambda: rig.stats()["buffers_lent"] == 0)
    finally:
        owner.close()
        other.close()


_TRUNCATED = wire.encode_read(sidecar_pb.ReadRequest(file_id="3,01637037d6", size=1))[:-1]
_OVERSIZED_COPY = bytearray(wire.encode_read(
    sidecar_pb.ReadRequest(file_id="3,01637037d6", size=1), copy_max=wire.MAX_COPY))
struct.pack_into("<I", _OVERSIZED_COPY, 4 + 17, wire.MAX_COPY + 1)  # its size field


@pytest.mark.parametrize("frame", [
    struct.pack("<I", 0xFFFFFFFF) + b"x" * 64,   # a length past the frame limit
    struct.pack("<I", 0),                         # an empty frame
    struct.pack("<I", 30) + bytes([wire.READ]) + b"\xff" * 29,  # lengths past its end
    struct.pack("<I", 4) + b"\x63abc",            # an unknown kind
    bytes(_OVERSIZED_COPY),                       # a copy bigger than a reply may carry
    _TRUNCATED,                                   # then the writer closes mid-frame
], ids=["huge", "empty", "inner-lengths", "unknown-kind", "oversized-copy",
        "truncated-then-closed"])
def test_a_malformed_frame_costs_only_its_connection(rig: Rig, frame: bytes) -> None:
    path = _read_socket(rig)
    bystander, hello = _connect(path)
    sock, _ = _connect(path)
    try:
        sock.sendall(frame)
        if frame is _TRUNCATED:
            sock.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(sock)
        # The sidecar and its other readers carry on.
        file_id = rig.listing()["segments"][0]["chunks"][0]["file_id"]
        bystander.sendall(wire.encode_read(sidecar_pb.ReadRequest(
            file_id=file_id, offset=0, size=10, request_id=1, zero_copy=True)))
        reply = wire.decode_reply(_receive(bystander), hello.pool_path)
        assert reply.status == 200 and _mapped(reply.shared) == rig.on_disk(0)[:10]
    finally:
        sock.close()
        bystander.close()
    assert "read socket client dropped" in rig.sidecar.log_text()
    _wait_for(lambda: rig.stats()["buffers_lent"] == 0)


def test_a_bad_read_is_answered_not_dropped(rig: Rig) -> None:
    """A well-formed read the sidecar refuses gets its status, and the connection lives on."""
    sock, hello = _connect(_read_socket(rig))
    try:
        for request_id, request in enumerate([
                sidecar_pb.ReadRequest(file_id="not-a-file-id", size=10, zero_copy=True),
                sidecar_pb.ReadRequest(file_id="not-a-file-id", size=10),
                sidecar_pb.ReadRequest(file_id="3,01637037d6", size=1 << 30, zero_copy=True)],
                start=1):
            request.request_id = request_id
            sock.sendall(wire.encode_read(request, copy_max=wire.MAX_COPY))  # the 2nd: a COPY
            reply = wire.decode_reply(_receive(sock), hello.pool_path)
            assert (reply.request_id, reply.status) == (request_id, 400), reply.error
            assert reply.shared is None and not reply.data and reply.error
    finally:
        sock.close()


async def test_without_a_read_socket_the_mount_stays_on_grpc(rig: Rig) -> None:
    plain, plain_socket, _ = rig.cluster.sidecar("plain", "--no-read-socket")
    plain.start()
    try:
        assert not list(plain_socket.parent.glob("plain.reads.sock"))
        ranges = _ranges(rig, count=2, seed=3)[:12]
        source = Source(SourceConfig(sidecar=str(plain_socket), fallback=False,
                                     broker=f"127.0.0.1:{rig.cluster.broker_port}"))
        # Copies asked of a sidecar stream that allows none (gRPC) are lent, as before.
        assert all(await _read_all(source, ranges, copy=True))
        assert source.transport == "grpc"
        assert source.counters["sidecar_reads"] == len(ranges)
        # And a reader told to keep off the read socket stays on gRPC where there is one.
        forced = _source(rig, read_socket=False)
        await _read_all(forced, ranges)
        assert forced.transport == "grpc"
    finally:
        plain.stop()
