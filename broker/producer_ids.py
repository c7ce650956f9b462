"""Producer ids, unique for the life of the data directory.

Ids are handed out from blocks: the file ``producer-ids`` records the first id of the next
block and is made durable (fsync, rename, fsync the directory) before any id of the current
block is used, so a restart never reuses an id (it may skip the rest of a block).

The file is read once, when the broker starts. A file that is there but does not hold a
whole non-negative number (torn by a filesystem that lost the write, or edited by hand) stops
the start with ``CorruptProducerIds``: reading it as 0 would hand out ids that producers may
still be using, and their retries would be taken for someone else's duplicates.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from kelp.files import replace_file

if TYPE_CHECKING:  # a lone broker does not load etcd's messages
    from kelp.etcd import Etcd

BLOCK = 1000
MAX_EPOCH = 32767
FILE_NAME = "producer-ids"


class CorruptProducerIds(RuntimeError):
    """The producer-id block file cannot be read: no id can be handed out safely."""


def read_next_block(path: Path) -> int:
    """The first id of the next block recorded at ``path``; 0 for a new data directory."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    except UnicodeDecodeError:
        text = ""
    # Written as "<number>\n" in one rename: anything else is damage, never a smaller number.
    if not text.endswith("\n") or not text[:-1].isdigit():
        raise CorruptProducerIds(
            f"{path} holds {text[:40]!r}, not the next producer id block: restoring it could "
            "hand out producer ids already in use. Write a number larger than any producer id "
            "the cluster has handed out (e.g. from the partitions' producer-state.json files) "
            "followed by a newline, or remove the file only if no producer data must be kept.")
    return int(text[:-1])


class BlockAllocator:
    """Ids handed out from blocks; where a block is reserved is the subclass's business."""

    def __init__(self) -> None:
        self._next = 0
        self._block_end = 0
        self._lock = trio.Lock()

    async def _reserve(self) -> int:
        """The start of a block of ids nobody else hands out, recorded before it is used."""
        raise NotImplementedError

    async def allocate(self) -> int:
        async with self._lock:
            if self._next >= self._block_end:
                start = await self._reserve()
                self._next, self._block_end = start, start + BLOCK
            allocated = self._next
            self._next += 1
            return allocated

    async def init(self, producer_id: int, epoch: int) -> tuple[int, int]:
        """A new (id, epoch 0), or the same id with its epoch bumped (a new id past the max)."""
        if producer_id >= 0 and 0 <= epoch < MAX_EPOCH - 1:
            return producer_id, epoch + 1
        return await self.allocate(), 0


class ProducerIds(BlockAllocator):
    """A lone broker's: blocks recorded in ``<data>/producer-ids``."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self._path = data_dir / FILE_NAME
        # Checked now, so damage stops the broker's start rather than a producer's init.
        self._recorded_next_block = read_next_block(self._path)

    async def _reserve(self) -> int:
        return await trio.to_thread.run_sync(self._reserve_block)

    def _reserve_block(self) -> int:
        start = self._recorded_next_block
        replace_file(self._path, f"{start + BLOCK}\n", durable=True)
        self._recorded_next_block = start + BLOCK
        return start



class ClusterProducerIds(BlockAllocator):
    """Producer ids for a cluster: blocks reserved in etcd (``/kelp/producer-id-block``, the
    next block's start) by compare-and-swap, as Kafka's controller hands brokers blocks, so
    no two brokers, and no coordinator after a failover, hand out the same id. etcd out of
    reach or a damaged key refuse the producer (UNAVAILABLE, FAILED_PRECONDITION) rather
    than hand out an id that may be in use."""

    KEY = b"/kelp/producer-id-block"

    def __init__(self, etcd: Etcd) -> None:
        super().__init__()
        self._etcd = etcd

    async def _reserve(self) -> int:
        from kelp.etcd import EtcdUnavailable  # only a cluster's broker gets here

        while True:
            try:
                entry = await self._etcd.get(self.KEY)
                start = 0 if entry is None else _block_start(entry.value)
                written = await self._etcd.put_if(self.KEY, str(start + BLOCK).encode(),
                                                  mod_revision=0 if entry is None
                                                  else entry.mod_revision)
            except EtcdUnavailable as exc:
                raise GRPCError(Status.UNAVAILABLE, f"etcd is unreachable: {exc}") from None
            if written is not None:
                return start


def _block_start(value: bytes) -> int:
    if not value.isdigit():  # ASCII digits only, as written: a damaged key is never "0"
        raise GRPCError(Status.FAILED_PRECONDITION,
                        f"{ClusterProducerIds.KEY.decode()} holds {value[:40]!r}, not the next "
                        "producer id block: write a number larger than any producer id in use")
    return int(value)
