"""Segment-file ranges named by the broker: opened only when the file is the one the broker
read and holds the whole range; sent with os.sendfile whole and in order; a file that ends
early breaks the connection instead of sending a short frame."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from gateway import segment_files
from gateway.broker_client import MAX_FILE_MISSES, BrokerClient
from gateway.scatter import close_files, send_buffers
from gateway.segment_files import FileSlice, open_range
from kelp import grpc
from kelp.rpc.broker import v1 as pb

DATA = bytes(range(256)) * 400  # 100 KiB


def _range(path: Path, position: int, size: int, **changes: int) -> pb.FileRange:
    stat = path.stat()
    return pb.FileRange(path=str(path), device=changes.get("device", stat.st_dev),
                        inode=changes.get("inode", stat.st_ino), position=position, size=size)


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    path = tmp_path / "00000000000000000000.log"
    path.write_bytes(DATA)
    return path


def test_a_large_range_opens_as_a_file_slice(segment: Path) -> None:
    piece = open_range(_range(segment, 1000, 50_000))
    assert isinstance(piece, FileSlice) and len(piece) == 50_000
    assert piece.read() == DATA[1000:51_000]
    piece.close()
    piece.close()  # twice is fine


def test_a_small_range_is_read_at_once(segment: Path) -> None:
    assert open_range(_range(segment, 10, segment_files.READ_AT_ONCE)) == \
        DATA[10:10 + segment_files.READ_AT_ONCE]
    assert open_range(_range(segment, 10, 50_000), keep_open=False) == DATA[10:50_010]


def test_only_segment_files_are_opened(tmp_path: Path) -> None:
    other = tmp_path / "secrets.txt"
    other.write_bytes(DATA)
    assert open_range(_range(other, 0, 50_000)) is None


@pytest.mark.parametrize("changes", [
    {"inode": 1},  # another file by that name (a compacted segment replaced it)
    {"device": 12345},  # another filesystem (another host or container)
    {"position": -1}, {"size": 0}, {"size": -5}, {"size": 2**31},
    {"position": len(DATA) - 10, "size": 11},  # past the end of the file
])
def test_a_range_that_is_not_the_brokers_is_refused(segment: Path,
                                                    changes: dict[str, int]) -> None:
    position = changes.pop("position", 0)
    size = changes.pop("size", 20_000)
    assert open_range(_range(segment, position, size, **changes)) is None


def test_a_deleted_segment_is_refused(segment: Path) -> None:
    found = _range(segment, 0, 20_000)
    segment.unlink()
    assert open_range(found) is None
    assert open_range(pb.FileRange(path="", size=5)) is None
    assert open_range(pb.FileRange(path="a\0b", size=5000)) is None


def test_an_open_range_outlives_the_segments_deletion(segment: Path) -> None:
    piece = open_range(_range(segment, 0, 20_000))
    assert isinstance(piece, FileSlice)
    segment.unlink()  # retention, after the gateway opened it
    assert piece.read() == DATA[:20_000]
    piece.close()


async def test_sendfile_writes_file_ranges_between_buffers(segment: Path) -> None:
    left, right = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(left), trio.SocketStream(right)
    first = open_range(_range(segment, 0, len(DATA)))
    second = open_range(_range(segment, 5000, 30_000))
    assert isinstance(first, FileSlice) and isinstance(second, FileSlice)
    buffers = [b"head", first, bytearray(b"middle"), second, memoryview(b"tail")]
    expected = b"head" + DATA + b"middle" + DATA[5000:35_000] + b"tail"
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(expected):
            chunk = await receiver.receive_some(7000)  # slowly: sendfile meets a full socket
            assert chunk
            received.extend(chunk)

    async with sender, receiver, trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await send_buffers(sender, buffers)
    close_files(buffers)
    assert bytes(received) == expected
    assert first.fd == -1 and second.fd == -1


async def test_a_file_that_ends_early_breaks_the_connection(segment: Path) -> None:
    left, right = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(left), trio.SocketStream(right)
    piece = open_range(_range(segment, 0, 90_000))
    assert isinstance(piece, FileSlice)
    os.truncate(segment, 50_000)  # truncated under the open range

    async def drain() -> None:
        while await receiver.receive_some(65536):
            pass

    async with sender, receiver, trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        with pytest.raises(trio.BrokenResourceError):
            await send_buffers(sender, [b"x", piece])
        await sender.aclose()
    piece.close()


def test_ranges_are_asked_for_only_from_a_broker_on_this_host() -> None:
    assert BrokerClient(grpc.Address(host="127.0.0.1", port=1)).reads_files
    assert BrokerClient(grpc.Address(host="::1", port=1)).reads_files
    assert BrokerClient(grpc.Address(host="localhost", port=1)).reads_files
    assert BrokerClient(grpc.Address(path="/run/kelp/broker.sock")).reads_files
    assert not BrokerClient(grpc.Address(host="broker", port=1)).reads_files
    assert not BrokerClient(grpc.Address(host="10.0.0.7", port=1)).reads_files


def test_ranges_that_keep_failing_to_open_are_no_longer_asked_for() -> None:
    broker = BrokerClient(grpc.Address(host="127.0.0.1", port=1))
    for _ in range(MAX_FILE_MISSES - 1):
        broker.note_file_ranges(opened=False)
    broker.note_file_ranges(opened=True)  # a miss now and then (retention) is forgiven
    for _ in range(MAX_FILE_MISSES - 1):
        broker.note_file_ranges(opened=False)
    assert broker.reads_files
    broker.note_file_ranges(opened=False)
    assert not broker.reads_files
