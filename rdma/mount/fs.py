"""The FUSE operations (pyfuse3 on trio): a read-only view of every topic's segment files.

Reads are served from blocks of up to 4 MiB, each the loan of one chunk range from the source
(zero-copy from the sidecar's shared memory); a small read away from where the handle's last
read ended (a random reader) fetches just its bytes instead. A file handle that reads
sequentially gets the next blocks fetched ahead, in parallel; the number of blocks held at
once is bounded, because each one holds a slot of the sidecar's buffer pool: cached + in
flight stay within the share the sidecar grants one connection (``--client-buffers``, learned
on connect), evicting cached blocks before a fetch rather than after it.

Listings are refreshed at most every ``refresh_s`` when the kernel looks at a partition, so
segments that roll in or are deleted by retention appear and disappear; a read that finds its
chunk gone refreshes once and answers ENOENT if the segment is really gone.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from rdma.mount.source import Loan, Source, SourceError
from rdma.mount.tree import Node, Tree

log = logging.getLogger("kelp.mount")

BLOCK = 4 * 1024 * 1024  # 1 MiB: 0.8-1.0 GB/s through the mount cold; 4 MiB 1.1-1.25; 8 MiB 0.4
SMALL_READ = 32 * 1024  # a read this small away from the last one's end is a random read


@dataclass(frozen=True)
class MountConfig:
    refresh_s: float = 1.0
    prefetch: int = 3  # blocks ahead for a sequential reader
    cache_blocks: int = 4  # blocks held at once (each holds a sidecar buffer)
    max_concurrent: int = 4  # fetches in flight


BlockKey = tuple[int, int, int]  # inode, block index, block length (a grown file: new key)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def guarded(op: F) -> F:
    """An unexpected exception in a handler would end pyfuse3's main loop (and the mount):
    log it and answer EIO instead."""

    @functools.wraps(op)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await op(*args, **kwargs)
        except (pyfuse3.FUSEError, trio.Cancelled):
            raise
        except Exception:
            log.exception("mount operation failed", extra={"op": op.__name__})
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class KelpFs(pyfuse3.Operations):
    def __init__(self, source: Source, config: MountConfig) -> None:
        super().__init__()
        self.source = source
        self.config = config
        self.tree = Tree()
        self._listed: dict[tuple[str, int], float] = {}
        self._topics_listed = -1e9
        self._blocks: collections.OrderedDict[BlockKey, Loan] = collections.OrderedDict()
        self._fetching: dict[BlockKey, trio.Event] = {}
        self._fetch_limit = trio.CapacityLimiter(config.max_concurrent)
        self._in_flight = 0  # fetches holding a place under _fetch_limit
        self._next_fh = 1
        self._handles: dict[int, tuple[int, int]] = {}  # fh -> (inode, end of last read)
        self._nursery: trio.Nursery | None = None
        self.counters = {"reads": 0, "bytes": 0, "prefetched": 0, "cache_hits": 0,
                         "small_reads": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Owns the prefetch tasks; gives every loan back when the mount ends."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for loan in self._blocks.values():
                self.source.release(loan)
            self._blocks.clear()

    # -- listings -------------------------------------------------------------------------------

    async def _refresh(self, node: Node) -> None:
        """Refresh what ``node`` shows, if its listing is older than ``refresh_s``."""
        now = trio.current_time()
        try:
            # Directories above the partitions show the topic list.
            if (node.is_dir and node.partition is None
                    and now - self._topics_listed > self.config.refresh_s):
                self.tree.set_topics(await self.source.topics())
                self._topics_listed = now
            if node.partition is not None:
                key = node.partition
                if now - self._listed.get(key, -1e9) > self.config.refresh_s:
                    self.tree.set_listing(await self.source.listing(*key))
                    self._listed[key] = now
        except SourceError as exc:
            # 404: the partition is gone (the next topic listing removes it). Otherwise the
            # broker is unreachable for now: show what we knew rather than fail every stat.
            if exc.status != 404:
                log.warning("listing failed", extra={"error": str(exc)})

    def _node(self, inode: int) -> Node:
        node = self.tree.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        await self._refresh(parent)
        node = self.tree.lookup(parent_inode, name.decode("utf-8", "surrogateescape"))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.is_dir:
            await self._refresh(node)
        return self.tree.attributes(node)

    @guarded
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        await self._refresh(node)
        return self.tree.attributes(self._node(inode))

    @guarded
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._refresh(node)
        return inode

    @guarded
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        node = self._node(fh)
        names = sorted(node.children)
        for index in range(start_id, len(names)):
            child = self.tree.nodes.get(node.children[names[index]])
            if child is None:
                continue
            if not pyfuse3.readdir_reply(token, names[index].encode("utf-8", "surrogateescape"),
                                         self.tree.attributes(child), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    @guarded
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # -- files ----------------------------------------------------------------------------------

    @guarded
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._refresh(node)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (inode, 0)
        # Sealed segments never change: the kernel may keep their pages between opens.
        sealed = node.chunks and node.name.endswith(".log") and self._is_sealed(node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=bool(sealed))

    def _is_sealed(self, node: Node) -> bool:
        parent = self.tree.nodes.get(node.parent)
        if parent is None:
            return False
        segments = sorted(n for n in parent.children if n.endswith(".log"))
        return bool(segments) and node.name != segments[-1]

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    @guarded
    async def read(self, fh: int, offset: int, size: int) -> Any:
        inode, last_end = self._handles.get(fh, (0, 0))
        node = self._node(inode)
        if node.info:
            return node.info[offset:offset + size]
        if offset >= node.size:
            await self._refresh(node)  # the active segment may have grown
            node = self._node(inode)
            if offset >= node.size:
                return b""
        self.counters["reads"] += 1
        first, last = offset // BLOCK, (min(offset + size, node.size) - 1) // BLOCK
        if offset == last_end and self._nursery is not None:
            for ahead in range(last + 1, last + 1 + self.config.prefetch):
                if ahead * BLOCK < node.size:
                    self._nursery.start_soon(self._prefetch, node, ahead)
        self._handles[fh] = (inode, offset + size)
        if (size <= SMALL_READ and offset != last_end and first == last
                and not self._held(node, first)):
            # A random reader: fetch just the bytes asked for, not the whole block (a 4 MiB
            # copy for a 4 KiB read), copied into the sidecar's reply rather than lent (no
            # release to send after). (A sequential reader's reads can come out of order too,
            # but the kernel's readahead makes them big.)
            loan = await self._fetch(node, offset, min(size, node.size - offset), copy=True)
            try:
                piece = bytes(loan.data)
            finally:
                self.source.release(loan)
            self.counters["bytes"] += len(piece)
            self.counters["small_reads"] += 1
            return piece
        if first == last:
            block = await self._block(node, first)
            start = offset - first * BLOCK
            piece = block[start:start + size]
            self.counters["bytes"] += len(piece)
            return piece  # a view into the sidecar's shared memory: no copy here
        parts = [bytes(await self._block(node, index)) for index in range(first, last + 1)]
        joined = b"".join(parts)[offset - first * BLOCK:][:size]
        self.counters["bytes"] += len(joined)
        return joined

    async def _prefetch(self, node: Node, index: int) -> None:
        key = self._key(node, index)
        if key in self._blocks or key in self._fetching:
            return
        self.counters["prefetched"] += 1
        # On failure the reader asks again and gets the error itself.
        with contextlib.suppress(pyfuse3.FUSEError):
            await self._block(node, index)

    def _held(self, node: Node, index: int) -> bool:
        """Whether block ``index`` is cached or being fetched."""
        key = self._key(node, index)
        return key in self._blocks or key in self._fetching

    def _key(self, node: Node, index: int) -> BlockKey:
        return (node.inode, index, min(BLOCK, node.size - index * BLOCK))

    async def _block(self, node: Node, index: int) -> memoryview:
        key = self._key(node, index)
        while True:
            loan = self._blocks.get(key)
            if loan is not None:
                self._blocks.move_to_end(key)
                self.counters["cache_hits"] += 1
                return loan.data
            pending = self._fetching.get(key)
            if pending is None:
                break
            # Then look again: the block may be cached, or gone already (the fetch failed,
            # or the block was evicted before this task ran), and another waiter may have
            # started the next fetch of it; two fetches of one block would leak a loan.
            await pending.wait()
        done = self._fetching[key] = trio.Event()
        try:
            loan = await self._fetch(node, index * BLOCK, key[2])
            while len(self._blocks) >= self.config.cache_blocks:
                _, evicted = self._blocks.popitem(last=False)
                self.source.release(evicted)
            self._blocks[key] = loan
            return loan.data
        finally:
            del self._fetching[key]
            done.set()

    def _fit_share(self) -> None:
        """The sidecar lets this connection hold ``share`` buffers (cached loans plus fetches
        in flight); a fetch beyond it would wait for a release that only a later eviction
        makes. So keep fetches within the share and evict before fetching, not after."""
        share = self.source.share
        if not share:
            return
        limit = min(self.config.max_concurrent, share)
        if self._fetch_limit.total_tokens != limit:
            self._fetch_limit.total_tokens = limit

    def _make_room(self) -> None:
        share = self.source.share
        while share and self._blocks and len(self._blocks) + self._in_flight > share:
            _, evicted = self._blocks.popitem(last=False)
            self.source.release(evicted)

    async def _fetch(self, node: Node, start: int, length: int, *, copy: bool = False
                     ) -> Loan:
        """``length`` bytes of ``node`` from ``start`` (within one block); ``copy``: see
        :meth:`Source.read`."""
        pieces = node.locate(start, length)
        self._fit_share()
        # The limiter without a schedule point when it has room: each trip round trio's
        # scheduler costs a small random read a good part of its time.
        try:
            self._fetch_limit.acquire_nowait()
        except trio.WouldBlock:
            await self._fetch_limit.acquire()
        self._in_flight += 1
        try:
            self._make_room()
            if len(pieces) == 1:
                chunk, inside, take = pieces[0]
                return await self.source.read(chunk.file_id, inside, take, copy=copy)
            data = bytearray()
            for chunk, inside, take in pieces:  # chunks smaller than a block
                loan = await self.source.read(chunk.file_id, inside, take)
                data += loan.data
                self.source.release(loan)
            return Loan(memoryview(bytes(data)))
        except SourceError as exc:
            log.warning("read failed", extra={"file": node.name, "offset": start,
                                              "error": str(exc)})
            if exc.status == 404:
                self._listed.pop(node.partition or ("", 0), None)  # refresh next time
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self._in_flight -= 1
            self._fetch_limit.release()

