"""Records sent from the broker's segment files (Kafka's zero-copy path), when the gateway
shares the broker's host.

The broker answers such a fetch with where each partition's records lie (path, device, inode,
position, size: whole batches below the high-water mark) instead of the bytes. The gateway
opens the file at once and checks it is the one the broker read (same device and inode, long
enough); the open descriptor keeps the bytes readable even if retention deletes the segment
afterwards. ``gateway.scatter`` then writes them to a plain TCP client with ``os.sendfile``
(TLS reads them into memory first). A range that cannot be opened so (a segment deleted in
between, a broker on another host or in another container) is fetched again as bytes.
"""

from __future__ import annotations

import os

from kelp.rpc.broker import v1 as pb

# Ranges this small are read at once: a descriptor per tiny partition costs more than the copy.
READ_AT_ONCE = 4096
# Open descriptors one response may hold until written; further ranges are read at once (a
# fetch over thousands of partitions must not take thousands of descriptors).
MAX_OPEN_PER_RESPONSE = 16
MAX_RANGE = 2**31 - 1  # a Fetch response's records length is an int32
SEGMENT_SUFFIX = ".log"  # broker.storage.segment names its files so; nothing else is opened


class FileSlice:
    """``size`` bytes at ``position`` of an open file, owned until ``close``."""

    __slots__ = ("fd", "position", "size")

    def __init__(self, fd: int, position: int, size: int) -> None:
        self.fd = fd
        self.position = position
        self.size = size

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes:
        """The bytes (for TLS); raises ``OSError`` if the file no longer holds them all."""
        data = os.pread(self.fd, self.size, self.position)
        if len(data) != self.size:
            raise OSError(f"segment file ends {self.size - len(data)} bytes early")
        return data

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # A response dropped on an error path: its descriptor must not leak.
        self.close()


def open_range(found: pb.FileRange, *, keep_open: bool = True) -> FileSlice | bytes | None:
    """The records ``found`` names, open (or read, when small or not ``keep_open``); None if
    the file is not the one the broker read, or no longer holds the range."""
    if not (found.position >= 0 and 0 < found.size <= MAX_RANGE) or \
            not found.path.endswith(SEGMENT_SUFFIX):
        return None
    try:
        fd = os.open(found.path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    piece = FileSlice(fd, found.position, found.size)
    try:
        stat = os.fstat(fd)
        if (stat.st_dev, stat.st_ino) != (found.device, found.inode) or \
                stat.st_size < found.position + found.size:
            piece.close()
            return None
        if found.size <= READ_AT_ONCE or not keep_open:
            data = piece.read()
            piece.close()
            return data
    except OSError:
        piece.close()
        return None
    return piece


def close_all(records: object) -> None:
    """Close ``records`` if it is an open file range (what a dropped response held)."""
    if isinstance(records, FileSlice):
        records.close()
