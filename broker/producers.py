"""Idempotent producers: per-partition sequence state, as Kafka keeps it (sans-IO).

For each producer id the partition remembers its epoch and its last five batches (first and
last sequence, first and last offset). A batch that repeats one of them is a retry whose
first attempt was stored: it is answered with the original offsets and not written again. A
gap in the sequence, an old epoch, or an unknown producer resuming mid-sequence get Kafka's
errors. The table is rebuilt from batch headers on recovery (helped by a snapshot).

State is bounded as Kafka bounds it: a producer that has not written for
``producer.id.expiration.ms`` (one day by default) is forgotten, and a partition keeps at most
``MAX_PRODUCERS`` of them, forgetting the least recently active first (a forgotten producer
that resumes mid-sequence gets UNKNOWN_PRODUCER_ID, and librdkafka and Java reset on it). A
producer with a transaction open on the partition is never forgotten: its first offset holds
the last stable offset back until a marker ends it.

Transactions (Kafka's ``ProducerStateManager`` again): a transactional batch opens the
producer's transaction on this partition at its base offset, unless one is open; a control
batch (a COMMIT or ABORT marker the coordinator writes) closes it, and an aborted one is
remembered as (producer, first offset, marker offset) for read_committed fetches, until
retention moves the log start past its marker. The last stable offset is the first offset of
the oldest open transaction (the high-water mark when none is open).
"""

from __future__ import annotations

import bisect
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kio.schema.errors import ErrorCode

from kelp import recordbatch
from kelp.recordbatch import BatchHeader

CACHED_BATCHES = 5
SEQUENCE_WRAP = 1 << 31
DEFAULT_EXPIRATION_MS = 24 * 3600 * 1000
MAX_PRODUCERS = 2048


ABORT, COMMIT = 0, 1  # control record types (the key's second int16)
_MARKER_KEY = struct.Struct(">hh")  # version 0, type
_MARKER_VALUE = struct.Struct(">hi")  # version 0, coordinator epoch


class AbortedTxn(NamedTuple):
    producer_id: int
    first_offset: int
    last_offset: int  # the ABORT marker's offset


def is_transactional(header: BatchHeader) -> bool:
    return bool(header.attributes & recordbatch.TRANSACTIONAL_BIT)


def is_control(header: BatchHeader) -> bool:
    return bool(header.attributes & recordbatch.CONTROL_BIT)


def marker_key(kind: int) -> bytes:
    return _MARKER_KEY.pack(0, kind)


def marker_value(coordinator_epoch: int) -> bytes:
    return _MARKER_VALUE.pack(0, coordinator_epoch)


def marker_kind(key: bytes | None) -> int | None:
    """COMMIT or ABORT from a control record's key; None for anything else (Kafka skips
    control records of types it does not know)."""
    if key is None or len(key) < _MARKER_KEY.size:
        return None
    version, kind = _MARKER_KEY.unpack_from(key)
    return kind if version >= 0 and kind in (ABORT, COMMIT) else None


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
        # Producer id -> first offset of its transaction open on this partition.
        self.open_txns: dict[int, int] = {}
        # Aborted transactions in marker order (so sorted by last_offset).
        self.aborted: list[AbortedTxn] = []
        self.aborted_pruned = False  # forget_below dropped some (their file is rewritten)

    # -- transactions -----------------------------------------------------------------------

    def first_unstable_offset(self) -> int | None:
        """The first offset of the oldest open transaction; None when none is open."""
        return min(self.open_txns.values(), default=None)

    def aborted_between(self, start: int, end: int) -> list[AbortedTxn]:
        """Aborted transactions that may hold records in ``[start, end)``: Kafka's rule, their
        marker at or after ``start`` and their first offset before ``end``."""
        first = bisect.bisect_left(self.aborted, start, key=lambda txn: txn.last_offset)
        return [txn for txn in self.aborted[first:] if txn.first_offset < end]

    def end_txn(self, producer_id: int, epoch: int, kind: int, marker_offset: int,
                now_ms: int | None = None) -> None:
        """A COMMIT or ABORT marker for ``producer_id`` was written at ``marker_offset``.

        The marker's epoch is the producer's newest (a fencing abort bumps it): earlier
        epochs are refused from now on, and the new epoch starts its sequences afresh.
        """
        first = self.open_txns.pop(producer_id, None)
        if kind == ABORT and first is not None:
            self.aborted.append(AbortedTxn(producer_id, first, marker_offset))
        entry = self.entries.pop(producer_id, None)
        if entry is None or epoch > entry.epoch:
            entry = ProducerEntry(epoch)
        self.entries[producer_id] = entry
        if now_ms is not None:
            entry.last_ms = now_ms

    def forget_below(self, log_start: int) -> None:
        """Drop aborted transactions wholly below the log start (retention removed them)."""
        keep = bisect.bisect_left(self.aborted, log_start, key=lambda txn: txn.last_offset)
        if keep:
            del self.aborted[:keep]
            self.aborted_pruned = True

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
        if is_transactional(header):
            self.open_txns.setdefault(header.producer_id, header.base_offset)
        self._bound()

    def _bound(self) -> None:
        """Forget the least recently active producers past the bound, never one with an open
        transaction (its marker must still find it)."""
        excess = len(self.entries) - self.max_producers
        if excess <= 0:
            return
        victims = [pid for pid in self.entries if pid not in self.open_txns][:excess]
        for pid in victims:
            del self.entries[pid]

    def expire(self, now_ms: int, expiration_ms: int = DEFAULT_EXPIRATION_MS) -> int:
        """Forget producers idle for ``expiration_ms``; returns how many."""
        idle = [pid for pid, entry in self.entries.items()
                if now_ms - entry.last_ms >= expiration_ms and pid not in self.open_txns]
        for pid in idle:
            del self.entries[pid]
        return len(idle)

    def to_json(self) -> dict[str, Any]:
        return {str(pid): {"epoch": e.epoch, "last_ms": e.last_ms, "batches": [
            [b.first_sequence, b.last_sequence, b.base_offset, b.last_offset]
            for b in e.batches]} for pid, e in self.entries.items()}

    def open_to_json(self) -> dict[str, int]:
        return {str(pid): first for pid, first in self.open_txns.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any], open_txns: dict[str, Any] | None = None,
                  aborted: list[AbortedTxn] | None = None) -> ProducerStateTable:
        table = cls()
        for pid, entry in data.items():
            table.entries[int(pid)] = ProducerEntry(
                entry["epoch"], deque((CachedBatch(*b) for b in entry["batches"]),
                                      maxlen=CACHED_BATCHES), entry.get("last_ms", 0))
        table.open_txns = {int(pid): int(first) for pid, first in (open_txns or {}).items()}
        table.aborted = sorted(aborted or [], key=lambda txn: txn.last_offset)
        return table
