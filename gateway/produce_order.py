"""Keeping an idempotent producer's batches in order across a leader change (sans-IO).

A Kafka client talks to a partition's leader directly: when the leader changes, its connection
to the old one fails every batch in flight there, and it sends them again to the new leader in
their order before anything later. Through a gateway the client's connection stays up, so
without care a batch it sent *after* the failed ones is routed straight to the new leader,
ahead of their retries. The new leader then sees a gap in the producer's sequence and answers
OUT_OF_ORDER_SEQUENCE_NUMBER; librdkafka reads that as "the earlier batches were lost", bumps
its producer epoch and sends every unacknowledged batch again under new sequence numbers,
including a failed one the new leader had already replicated: that batch is then stored twice.

So each Kafka connection keeps, per partition written by an idempotent producer, a chain:

- the broker its outstanding batches went to, and how many are outstanding;
- after a batch failed with an error the client retries (a leadership or replication error),
  the sequence of the earliest such batch: later batches of the same producer epoch are
  refused with NOT_LEADER_OR_FOLLOWER (retried by the client after the failed one) until the
  failed batch comes again;
- a batch for a new leader while batches are outstanding at the old one is refused the same way
  (and blocks the chain at its own sequence): it must not overtake them;
- a batch the leader answered OUT_OF_ORDER_SEQUENCE_NUMBER while an earlier one of the chain
  failed or is still being answered (the leader refused that one, say because it became leader
  a moment later) is answered NOT_LEADER_OR_FOLLOWER instead: it is retried after the earlier
  one, where OUT_OF_ORDER would have made librdkafka bump its epoch.

A block that the client never clears (it gave the batch up, or bumped its epoch itself) lapses
after ``BLOCK_LIFETIME_S``; a new producer id or epoch starts a fresh chain. Chains exist only
while they have batches outstanding or a block, and a connection keeps at most
``MAX_CHAINS`` of them.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from kelp import recordbatch

BLOCK_LIFETIME_S = 60.0
MAX_CHAINS = 4096
SEQUENCE_WRAP = 1 << 31
# The errors after which Kafka clients send the same batch again: the partition's leader or its
# replicas changed under it.
RETRIED_ERRORS = frozenset({
    ErrorCode.not_leader_or_follower, ErrorCode.leader_not_available,
    ErrorCode.request_timed_out, ErrorCode.network_exception,
    ErrorCode.not_enough_replicas, ErrorCode.not_enough_replicas_after_append,
})
_PRODUCER = struct.Struct(">qhi")  # producer id, epoch, base sequence


def producer_of(records: bytes) -> tuple[int, int, int] | None:
    """(producer id, epoch, base sequence) of the first batch in ``records`` if an idempotent
    producer wrote it; None otherwise (malformed batches are left to the broker's checks)."""
    if len(records) < recordbatch.HEADER_SIZE or records[recordbatch.MAGIC] != 2:
        return None
    producer_id, epoch, sequence = _PRODUCER.unpack_from(records, recordbatch.PRODUCER_ID)
    return (producer_id, epoch, sequence) if producer_id >= 0 and sequence >= 0 else None


def _before(sequence: int, other: int) -> bool:
    """Whether ``sequence`` comes before ``other`` (sequences wrap at 2**31)."""
    return 0 < (other - sequence) % SEQUENCE_WRAP < SEQUENCE_WRAP // 2


@dataclass
class Chain:
    producer_id: int
    epoch: int
    broker: object = None        # where the outstanding batches went
    pending: list[int] = field(default_factory=list)  # their sequences, in sending order
    blocked_at: int | None = None  # the sequence the client must send again first
    blocked_since: float = 0.0

    def block(self, sequence: int, now: float) -> None:
        if self.blocked_at is None or _before(sequence, self.blocked_at):
            self.blocked_at, self.blocked_since = sequence, now


@dataclass(frozen=True)
class Ticket:
    """An admitted batch: hand it back to ``ProduceOrder.finished`` with its outcome."""

    key: tuple[str, int]
    chain: Chain
    sequence: int


class ProduceOrder:
    """One Kafka connection's chains, keyed by (topic, partition)."""

    def __init__(self) -> None:
        self._chains: dict[tuple[str, int], Chain] = {}
        self.refused = 0
        self.reordered = 0  # OUT_OF_ORDER answers turned into NOT_LEADER_OR_FOLLOWER

    def admit(self, topic: str, partition: int, producer: tuple[int, int, int],
              broker: object, now: float) -> Ticket | str:
        """A ticket if the batch may go to ``broker`` (the partition's leader) now, else why
        it must be refused (the client retries it)."""
        producer_id, epoch, sequence = producer
        key = (topic, partition)
        chain = self._chains.get(key)
        if chain is not None and chain.blocked_at is not None and \
                now - chain.blocked_since > BLOCK_LIFETIME_S:
            chain.blocked_at = None
        if chain is None or (chain.producer_id, chain.epoch) != (producer_id, epoch):
            if chain is not None and chain.pending and chain.broker is not broker:
                return self._refuse("batches of an earlier producer epoch are still "
                                    "outstanding at the partition's previous leader")
            # The old chain's tickets still count down on it (``finished`` sees it detached).
            chain = Chain(producer_id, epoch, broker)
            self._store(key, chain)
        if chain.blocked_at is not None:
            if sequence != chain.blocked_at:
                return self._refuse(f"sequence {chain.blocked_at} of this producer failed "
                                    f"and must be sent again first")
            chain.blocked_at = None
        if chain.pending and chain.broker is not broker:
            chain.block(sequence, now)
            return self._refuse("the partition's leader changed while earlier batches of this "
                                "producer were outstanding at the previous one")
        chain.broker = broker
        chain.pending.append(sequence)
        return Ticket(key, chain, sequence)

    def not_sent(self, topic: str, partition: int, producer: tuple[int, int, int],
                  ticket: Ticket | None, now: float) -> None:
        """The batch could not be sent (no reachable leader): the client retries it, and
        nothing later of this producer may overtake it."""
        if ticket is not None:
            self.finished(ticket, ErrorCode.not_leader_or_follower, now)
            return
        producer_id, epoch, sequence = producer
        key = (topic, partition)
        chain = self._chains.get(key)
        if chain is None or (chain.producer_id, chain.epoch) != (producer_id, epoch):
            chain = Chain(producer_id, epoch)
            self._store(key, chain)
        chain.block(sequence, now)

    def finished(self, ticket: Ticket, error: int, now: float) -> int:
        """The batch was answered with ``error``; returns the error to give the client."""
        chain = ticket.chain
        with contextlib.suppress(ValueError):
            chain.pending.remove(ticket.sequence)
        if error == ErrorCode.out_of_order_sequence_number and (
                any(_before(other, ticket.sequence) for other in chain.pending)
                or (chain.blocked_at is not None
                    and _before(chain.blocked_at, ticket.sequence))):
            error = ErrorCode.not_leader_or_follower  # an earlier batch failed: retry after it
            self.reordered += 1
        if error in RETRIED_ERRORS:
            chain.block(ticket.sequence, now)
        if not chain.pending and chain.blocked_at is None and \
                self._chains.get(ticket.key) is chain:
            del self._chains[ticket.key]
        return error

    def _refuse(self, reason: str) -> str:
        self.refused += 1
        return reason

    def _store(self, key: tuple[str, int], chain: Chain) -> None:
        self._chains.pop(key, None)
        self._chains[key] = chain
        if len(self._chains) > MAX_CHAINS:  # the oldest idle block goes first
            idle = next((k for k, c in self._chains.items() if not c.pending), None)
            if idle is not None:
                del self._chains[idle]

    def __len__(self) -> int:
        return len(self._chains)
