"""The floors under a random read through ``kelp mount``, measured on the machine at hand.

``python -m bench.fuse_floor MOUNTPOINT`` mounts a pyfuse3 file system on trio, as kelp's
mount is, with one 64 MiB file (``zeros``) whose reads return zeros at once: no IPC, no work,
only FUSE's round trip and pyfuse3's dispatch. It unmounts on SIGTERM or SIGINT.
:func:`socket_round_trip_us` times a blocking Unix-socket echo between two processes. A read
through the mount pays at least the first and, to ask the sidecar, the second.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import sys
import time

import pyfuse3
import trio

FILE_NAME = b"zeros"
FILE_SIZE = 64 << 20
FILE_INODE = pyfuse3.ROOT_INODE + 1


class Zeros(pyfuse3.Operations):
    async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode, attr.st_size = stat.S_IFDIR | 0o555, 0
        elif inode == FILE_INODE:
            attr.st_mode, attr.st_size = stat.S_IFREG | 0o444, FILE_SIZE
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_ino = inode
        attr.attr_timeout = attr.entry_timeout = 300
        return attr

    async def lookup(self, parent_inode: int, name: bytes, ctx: object = None
                     ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INODE)

    async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return bytes(max(0, min(size, FILE_SIZE - offset)))


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            print("ready", flush=True)
            async for _ in signals:
                break
        pyfuse3.terminate()


def socket_round_trip_us(count: int = 3000) -> float:
    """µs per blocking round trip of 200 bytes over a Unix socket to another process."""
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:  # the echo: until the parent closes its end
        ours.close()
        while data := theirs.recv(65536):
            theirs.sendall(data)
        os._exit(0)
    theirs.close()
    try:
        message = b"x" * 200
        started = time.perf_counter()
        for _ in range(count):
            ours.sendall(message)
            ours.recv(65536)
        return (time.perf_counter() - started) / count * 1e6
    finally:
        ours.close()
        os.waitpid(child, 0)


def main(mountpoint: str) -> None:
    pyfuse3.init(Zeros(), mountpoint, {"fsname=kelp-floor", "ro", "auto_unmount"})
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(sys.argv[1])
