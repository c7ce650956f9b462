"""Exactly-once accounting for a load test, sans IO: what was acknowledged vs what was consumed.

Every record carries (producer id, sequence number); a producer numbers its records 0, 1, 2, ...
The ledger is told which sequences each producer had acknowledged (or failed) and which ones
consumers received, in any order and from any number of processes, and answers:

* **lost**: acknowledged but never consumed (the one thing a broker must never do);
* **duplicated**: consumed more than once (a consumer group that hands a partition over without
  its committed position, or a broker that appends a retried batch twice);
* **failed**: the producer's delivery report said it failed (counted as errors, not as loss;
  if such a record shows up anyway it is "failed but consumed", which Kafka permits: a timed-out
  request may still have been written);
* **unacked consumed**: consumed, but the producer never reported it either way;
* **out of order**: within one (producer, partition) stream, a first delivery of a sequence
  lower than one already seen. With idempotence Kafka keeps per-partition order; without it a
  retry may reorder, so this is reported but is not a failure by itself.

State is one byte per (producer, sequence): bit 0 acknowledged, bit 1 failed, bits 2-7 how many
times it was consumed (saturating at 63). A bytearray keeps 20 million records in 20 MB, and the
final counts are ``bytes.translate``/``count`` calls that run at C speed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

ACKED = 0x01
FAILED = 0x02
_ONE_DELIVERY = 0x04
_MAX_DELIVERIES = 63
# A corrupt or foreign record could carry any number; never grow a table past this for one.
MAX_SEQUENCE = 1 << 32


def _table(predicate: object) -> bytes:
    """A 256-byte translation table: state byte -> 1 where ``predicate(state)`` holds, else 0."""
    return bytes(1 if predicate(state) else 0 for state in range(256))  # type: ignore[operator]


_LOST = _table(lambda s: s == ACKED)                        # acked, not failed, never consumed
_FAILED = _table(lambda s: s & FAILED)
_CONSUMED = _table(lambda s: s >> 2 >= 1)
_DUPLICATED = _table(lambda s: s >> 2 >= 2)
_UNACKED_CONSUMED = _table(lambda s: s & 3 == 0 and s >> 2 >= 1)
_FAILED_CONSUMED = _table(lambda s: s & FAILED and s >> 2 >= 1)
_ACKED = _table(lambda s: s & ACKED)


ABORTED = "aborted"  # the failure reason of records in an aborted transaction


@dataclass
class Verdict:
    """The ledger's answer; ``ok`` when nothing acknowledged was lost and nothing duplicated."""

    producers: int = 0
    acked: int = 0
    failed: int = 0
    consumed_unique: int = 0
    deliveries: int = 0
    lost: int = 0
    duplicated: int = 0
    extra_deliveries: int = 0
    unacked_consumed: int = 0
    failed_consumed: int = 0
    out_of_order: int = 0
    invalid: int = 0
    # Records of transactions the producer aborted that a (read_committed) consumer got.
    aborted: int = 0
    aborted_consumed: int = 0
    # producer id -> [[first, last], ...] of lost sequences (inclusive), the first few runs.
    lost_ranges: dict[str, list[list[int]]] = field(default_factory=dict)
    # [producer id, sequence, deliveries] for the first few duplicated records.
    duplicate_samples: list[list[int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.aborted_consumed == 0


class _Producer:
    __slots__ = ("high", "state")

    def __init__(self) -> None:
        self.state = bytearray(1024)
        self.high = 0  # one past the highest sequence ever mentioned

    def slot(self, seq: int) -> int:
        if seq >= len(self.state):
            self.state.extend(bytes(max(seq + 1, 2 * len(self.state)) - len(self.state)))
        if seq >= self.high:
            self.high = seq + 1
        return self.state[seq]


class Ledger:
    """Acknowledged vs consumed sequences per producer; feed it in any order, ask at any time."""

    def __init__(self) -> None:
        self._producers: dict[int, _Producer] = {}
        # (producer, stream) -> highest sequence delivered on that stream: for out-of-order.
        self._stream_high: dict[tuple[int, Hashable], int] = {}
        self.outstanding = 0   # acknowledged and not consumed yet: the drain waits for 0
        self.deliveries = 0
        self.unique = 0        # records delivered at least once
        self.out_of_order = 0
        self.invalid = 0
        self.failure_reasons: dict[str, int] = {}
        # producer -> sequences in transactions it aborted (failed with reason "aborted").
        self.aborted: dict[int, set[int]] = {}

    def _producer(self, producer: int) -> _Producer:
        entry = self._producers.get(producer)
        if entry is None:
            entry = self._producers[producer] = _Producer()
        return entry

    def acked(self, producer: int, seq: int) -> None:
        if not 0 <= seq < MAX_SEQUENCE:
            self.invalid += 1
            return
        entry = self._producer(producer)
        state = entry.slot(seq)
        if state & (ACKED | FAILED):
            return  # a repeated report changes nothing
        entry.state[seq] = state | ACKED
        if state >> 2 == 0:
            self.outstanding += 1

    def acked_many(self, producer: int, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.acked(producer, seq)

    def failed(self, producer: int, seq: int, reason: str = "error") -> None:
        if not 0 <= seq < MAX_SEQUENCE:
            self.invalid += 1
            return
        entry = self._producer(producer)
        state = entry.slot(seq)
        if state & (ACKED | FAILED):
            return
        entry.state[seq] = state | FAILED
        self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1
        if reason == ABORTED:
            self.aborted.setdefault(producer, set()).add(seq)

    def consumed(self, producer: int, seq: int, stream: Hashable = None) -> bool:
        """Record one delivery; True if it is the first delivery of that record."""
        if not 0 <= seq < MAX_SEQUENCE:
            self.invalid += 1
            return False
        entry = self._producer(producer)
        state = entry.slot(seq)
        times = state >> 2
        first = times == 0
        if times < _MAX_DELIVERIES:
            entry.state[seq] = state + _ONE_DELIVERY
        self.deliveries += 1
        if first:
            self.unique += 1
            if state & ACKED:
                self.outstanding -= 1
        if stream is not None:
            key = (producer, stream)
            high = self._stream_high.get(key, -1)
            if seq > high:
                self._stream_high[key] = seq
            elif first:
                # A *new* record below one this stream already delivered: reordered. Redeliveries
                # after a rebalance also go backwards, but they are duplicates, counted apart.
                self.out_of_order += 1
        return first

    def consumed_many(self, producers: Iterable[int], seqs: Iterable[int],
                      streams: Iterable[Hashable]) -> None:
        for producer, seq, stream in zip(producers, seqs, streams, strict=True):
            self.consumed(producer, seq, stream)

    def verdict(self, sample_limit: int = 20) -> Verdict:
        out = Verdict(producers=len(self._producers), deliveries=self.deliveries,
                      out_of_order=self.out_of_order, invalid=self.invalid)
        for producer, entry in sorted(self._producers.items()):
            state = bytes(entry.state[:entry.high])
            out.acked += state.translate(_ACKED).count(1)
            out.failed += state.translate(_FAILED).count(1)
            out.consumed_unique += state.translate(_CONSUMED).count(1)
            out.unacked_consumed += state.translate(_UNACKED_CONSUMED).count(1)
            out.failed_consumed += state.translate(_FAILED_CONSUMED).count(1)
            lost_mask = state.translate(_LOST)
            lost = lost_mask.count(1)
            if lost:
                out.lost += lost
                out.lost_ranges[str(producer)] = _runs(lost_mask, sample_limit)
            dup_mask = state.translate(_DUPLICATED)
            duplicated = dup_mask.count(1)
            if duplicated:
                out.duplicated += duplicated
                at = dup_mask.find(1)
                while at >= 0 and len(out.duplicate_samples) < sample_limit:
                    out.duplicate_samples.append([producer, at, state[at] >> 2])
                    at = dup_mask.find(1, at + 1)
        out.extra_deliveries = out.deliveries - out.consumed_unique
        for producer, seqs in self.aborted.items():
            state = self._producers[producer].state
            out.aborted += len(seqs)
            out.aborted_consumed += sum(1 for seq in seqs if state[seq] >> 2)
        return out

    def error_count(self) -> int:
        """Failed deliveries, not counting records of transactions aborted on purpose."""
        return sum(n for reason, n in self.failure_reasons.items() if reason != ABORTED)


def _runs(mask: bytes, limit: int) -> list[list[int]]:
    """The first ``limit`` runs of 1s in a 0/1 mask as inclusive [first, last] pairs."""
    runs: list[list[int]] = []
    start = mask.find(1)
    while start >= 0 and len(runs) < limit:
        end = mask.find(0, start)
        if end < 0:
            end = len(mask)
        runs.append([start, end - 1])
        start = mask.find(1, end)
    return runs
