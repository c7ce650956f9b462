"""The mount's block cache under concurrent readers: a block is fetched by one task at a time,
and every loan the sidecar lends ends up cached or given back, even when a block is evicted
between its fetch finishing and the tasks that waited for it running (found with 4 MiB blocks:
two waiters both refetched the block, one loan leaked and the sidecar ran out of buffers)."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from rdma.mount.fs import BLOCK, KelpFs, MountConfig
from rdma.mount.source import Loan
from rdma.mount.tree import Chunk, Node


class GatedSource:
    """Stands in for the sidecar's side of ``Source``: each read waits for its gate (per
    block index), lends a numbered buffer, and records what is lent and given back."""

    share = 4

    def __init__(self) -> None:
        self.gates: dict[int, trio.Event] = {}
        self.lent: set[int] = set()
        self.returned: set[int] = set()
        self.reads: list[int] = []
        self._handles = itertools.count(1)

    async def read(self, file_id: str, offset: int, size: int, *, copy: bool = False) -> Loan:
        index = offset // BLOCK
        self.reads.append(index)
        await self.gates.setdefault(index, trio.Event()).wait()
        handle = next(self._handles)
        self.lent.add(handle)
        return Loan(memoryview(bytearray(8)), handle)

    def release(self, loan: Loan) -> None:
        assert loan.handle in self.lent and loan.handle not in self.returned
        self.returned.add(loan.handle)


def _segment() -> Node:
    chunks = [Chunk("3,01637037d6", 0, 4 * BLOCK)]
    return Node(inode=5, name="00000000000000000000.log", parent=1, is_dir=False,
                size=4 * BLOCK, chunks=chunks, chunk_starts=[0])


async def _round() -> None:
    source = GatedSource()
    fs = KelpFs(source, MountConfig(cache_blocks=1, max_concurrent=4))  # type: ignore[arg-type]
    node = _segment()
    async with trio.open_nursery() as nursery:  # a second fetch of one block raised here
        nursery.start_soon(fs._block, node, 0)  # the fetcher of block 0
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(fs._block, node, 0)  # two tasks waiting for it
        nursery.start_soon(fs._block, node, 0)
        nursery.start_soon(fs._block, node, 1)  # whose arrival evicts block 0 (one is cached)
        await trio.testing.wait_all_tasks_blocked()
        # Both fetches finish in one step: block 1 may evict block 0 before its waiters run.
        source.gates[0].set()
        source.gates[1].set()
    assert not fs._fetching
    # Every loan is in the cache or was given back: none was lost to a second fetch.
    cached = {loan.handle for loan in fs._blocks.values()}
    assert cached | source.returned == source.lent
    assert not cached & source.returned
    # Block 0 was fetched again at most once (by one of its waiters, after the eviction).
    assert source.reads.count(0) <= 2


async def test_waiters_of_an_evicted_block_fetch_it_once_and_nothing_leaks() -> None:
    for _ in range(30):  # trio varies the order the tasks of one batch run in
        await _round()
