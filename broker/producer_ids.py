"""Producer ids, unique for the life of the data directory.

Ids are handed out from blocks: the file ``producer-ids`` records the first id of the next
block and is fsynced before any id of the current block is used, so a restart never reuses
an id (it may skip the rest of a block).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

BLOCK = 1000
MAX_EPOCH = 32767


class ProducerIds:
    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / "producer-ids"
        self._next = 0
        self._block_end = 0
        self._lock = trio.Lock()

    async def allocate(self) -> int:
        async with self._lock:
            if self._next >= self._block_end:
                start = await trio.to_thread.run_sync(self._reserve_block)
                self._next, self._block_end = start, start + BLOCK
            allocated = self._next
            self._next += 1
            return allocated

    def _reserve_block(self) -> int:
        try:
            start = int(self._path.read_text())
        except (FileNotFoundError, ValueError):
            start = 0
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as out:
            out.write(f"{start + BLOCK}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._path)
        return start

    async def init(self, producer_id: int, epoch: int) -> tuple[int, int]:
        """A new (id, epoch 0), or the same id with its epoch bumped (a new id past the max)."""
        if producer_id >= 0 and 0 <= epoch < MAX_EPOCH - 1:
            return producer_id, epoch + 1
        return await self.allocate(), 0
