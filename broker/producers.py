"""Idempotent producers: per-partition sequence state, as Kafka keeps it (sans-IO).

For each producer id the partition remembers its epoch and its last five batches (first and
last sequence, first and last offset). A batch that repeats one of them is a retry whose
first attempt was stored: it is answered with the original offsets and not written again. A
gap in the sequence, an old epoch, or an unknown producer resuming mid-sequence get Kafka's
errors. The table is rebuilt from batch headers on recovery (helped by a snapshot).

State is bounded as Kafka bounds it: a producer that has not written for
``producer.id.expiration.ms`` (one day by default) is forgotten, and a partition keeps at most
``MAX_PRODUCERS`` of them, forgetting the least recently active first (a forgotten producer
that resumes mid-sequence gets UNKNOWN_PRODUCER_ID, and librdkafka and Java reset on it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kio.schema.errors import ErrorCode

from kelp.recordbatch import BatchHeader

CACHED_BATCHES = 5
SEQUENCE_WRAP = 1 << 31
DEFAULT_EXPIRATION_MS = 24 * 3600 * 1000
MAX_PRODUCERS = 2048


class ProducerError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CachedBatch:
    first_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int


@dataclass
class ProducerEntry:
    epoch: int
    batches: deque[CachedBatch] = field(default_factory=lambda: deque(maxlen=CACHED_BATCHES))
    last_ms: int = 0  # when it last wrote (wall clock), for expiry


def last_sequence(header: BatchHeader) -> int:
    return (header.base_sequence + header.last_offset_delta) % SEQUENCE_WRAP


class ProducerStateTable:
    def __init__(self, max_producers: int = MAX_PRODUCERS) -> None:
        # Insertion order is recency order: ``record`` moves a producer to the end.
        self.entries: dict[int, ProducerEntry] = {}
        self.max_producers = max_producers

    def check(self, header: BatchHeader) -> CachedBatch | None:
        """The stored original if ``header`` is a retry of it; None if it is new and in order.

        Raises ``ProducerError`` when the batch must be refused.
        """
        if header.producer_id < 0 or header.base_sequence < 0:
            return None  # not an idempotent producer
        entry = self.entries.get(header.producer_id)
        if entry is None:
            if header.base_sequence != 0:
                raise ProducerError(ErrorCode.unknown_producer_id,
                                    f"no state for producer {header.producer_id}: sequence "
                                    f"{header.base_sequence} cannot be checked")
            return None
        if header.producer_epoch < entry.epoch:
            raise ProducerError(ErrorCode.invalid_producer_epoch,
                                f"producer {header.producer_id} epoch {header.producer_epoch} "
                                f"is older than {entry.epoch}")
        if header.producer_epoch > entry.epoch:
            if header.base_sequence != 0:
                raise ProducerError(ErrorCode.out_of_order_sequence_number,
                                    f"new epoch {header.producer_epoch} must start at "
                                    f"sequence 0, not {header.base_sequence}")
            return None
        last = last_sequence(header)
        for cached in entry.batches:
            if cached.first_sequence == header.base_sequence and cached.last_sequence == last:
                return cached
        if entry.batches:
            expected = (entry.batches[-1].last_sequence + 1) % SEQUENCE_WRAP
            if header.base_sequence != expected:
                raise ProducerError(ErrorCode.out_of_order_sequence_number,
                                    f"producer {header.producer_id}: expected sequence "
                                    f"{expected}, got {header.base_sequence}")
        return None

    def record(self, header: BatchHeader, now_ms: int | None = None) -> None:
        """Remember a batch as written (``header`` carries its assigned base offset) at
        ``now_ms`` (default: the batch's own max timestamp, for rebuilding from the log)."""
        if header.producer_id < 0 or header.base_sequence < 0:
            return
        entry = self.entries.pop(header.producer_id, None)
        if entry is None or header.producer_epoch > entry.epoch:
            entry = ProducerEntry(header.producer_epoch)
        elif header.producer_epoch < entry.epoch:
            self.entries[header.producer_id] = entry
            return
        self.entries[header.producer_id] = entry  # now the most recent
        entry.last_ms = header.max_timestamp if now_ms is None else now_ms
        entry.batches.append(CachedBatch(header.base_sequence, last_sequence(header),
                                         header.base_offset, header.last_offset))
        while len(self.entries) > self.max_producers:
            del self.entries[next(iter(self.entries))]

    def expire(self, now_ms: int, expiration_ms: int = DEFAULT_EXPIRATION_MS) -> int:
        """Forget producers idle for ``expiration_ms``; returns how many."""
        idle = [pid for pid, entry in self.entries.items()
                if now_ms - entry.last_ms >= expiration_ms]
        for pid in idle:
            del self.entries[pid]
        return len(idle)

    def to_json(self) -> dict[str, Any]:
        return {str(pid): {"epoch": e.epoch, "last_ms": e.last_ms, "batches": [
            [b.first_sequence, b.last_sequence, b.base_offset, b.last_offset]
            for b in e.batches]} for pid, e in self.entries.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProducerStateTable:
        table = cls()
        for pid, entry in data.items():
            table.entries[int(pid)] = ProducerEntry(
                entry["epoch"], deque((CachedBatch(*b) for b in entry["batches"]),
                                      maxlen=CACHED_BATCHES), entry.get("last_ms", 0))
        return table
