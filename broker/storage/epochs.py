"""The leader-epoch cache of a partition: at which offset each leader epoch began.

Kafka's ``LeaderEpochFileCache``, without its file: a leader stamps its epoch into every batch it
writes (the batch header's partitionLeaderEpoch, outside the CRC), so the cache is rebuilt from
batch headers when first needed and then kept by appends and truncations.

A follower that comes back asks the leader where its own latest epoch ended
(``end_offset_for``) and truncates there: records a deposed leader wrote after a new leader
took over are never served (KIP-101).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

UNDEFINED = -1


class EpochCache:
    def __init__(self, entries: Iterable[tuple[int, int]] = ()) -> None:
        self.epochs: list[int] = []   # strictly increasing
        self.starts: list[int] = []   # the first offset of each
        for epoch, start in entries:
            self.assign(epoch, start)

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[int, int]]) -> EpochCache:
        """From (partition leader epoch, base offset) of every batch, in log order."""
        cache = cls()
        for epoch, base in headers:
            cache.assign(epoch, base)
        return cache

    @property
    def latest(self) -> int:
        return self.epochs[-1] if self.epochs else UNDEFINED

    def assign(self, epoch: int, start: int) -> None:
        """A batch of ``epoch`` written at ``start``: a new epoch starts there if it is newer
        than the last (older or equal ones change nothing: their start is already known)."""
        if epoch < 0 or (self.epochs and epoch <= self.epochs[-1]):
            return
        self.epochs.append(epoch)
        self.starts.append(start)

    def end_offset_for(self, epoch: int, log_end: int) -> tuple[int, int]:
        """(the largest epoch <= ``epoch``, the offset where it ended) as the leader answers
        OffsetForLeaderEpoch: the start of the next epoch, or ``log_end`` for the latest.
        (UNDEFINED, UNDEFINED) when no epoch that old is known."""
        index = bisect.bisect_right(self.epochs, epoch) - 1
        if index < 0:
            return UNDEFINED, UNDEFINED
        if index == len(self.epochs) - 1:
            return self.epochs[index], log_end
        return self.epochs[index], self.starts[index + 1]

    def truncate_from(self, offset: int) -> None:
        """The log was cut at ``offset``: epochs that began at or after it are gone."""
        while self.starts and self.starts[-1] >= offset:
            self.epochs.pop()
            self.starts.pop()
