"""A transactional id's state, as Kafka's transaction coordinator keeps it (sans-IO).

One ``Txn`` per transactional id: the producer id and epoch it holds, the transaction timeout,
the state of its current transaction, the partitions and groups in it, and the offsets it will
commit for those groups. The coordinator (``broker.txn_coordinator``) changes it and writes each
change to the transaction log before answering; this module holds the state, its JSON form in
that log, and the checks every transactional request starts with.

States (Kafka's names, which DescribeTransactions and ListTransactions report)::

    Empty ─AddPartitions/AddOffsets─▶ Ongoing ─EndTxn─▶ PrepareCommit ─markers─▶ CompleteCommit
                                      │             PrepareAbort  ─markers─▶ CompleteAbort
                                      └─timeout, or a new instance's InitProducerId─▶ PrepareAbort

A Prepare state is durable before any marker is written, so a coordinator that restarts in one
writes the markers again (a repeated marker changes nothing) and completes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from kio.schema.errors import ErrorCode

from broker.offsets import Committed

TopicPartition = tuple[str, int]

DEFAULT_MAX_TIMEOUT_MS = 15 * 60 * 1000  # transaction.max.timeout.ms
DEFAULT_ID_EXPIRATION_MS = 7 * 24 * 3600 * 1000  # transactional.id.expiration.ms
MAX_PARTITIONS_PER_TXN = 10_000


class TxnState(enum.Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"

    @property
    def preparing(self) -> bool:
        return self in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)

    @property
    def open(self) -> bool:
        """A transaction is under way (not yet complete)."""
        return self is TxnState.ONGOING or self.preparing


class TxnError(Exception):
    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.name)
        self.code = code


@dataclass
class Txn:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState = TxnState.EMPTY
    # The epoch before the last bump (KIP-360): a producer retrying the InitProducerId that
    # bumped it, or the EndTxn that a timeout overtook, is recognised by it.
    last_producer_epoch: int = -1
    partitions: set[TopicPartition] = field(default_factory=set)
    # Offsets to commit per group when the transaction commits (TxnOffsetCommit).
    offsets: dict[str, dict[TopicPartition, Committed]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    start_ms: int = -1  # when the current transaction began (-1: none open)
    last_update_ms: int = 0

    def check_producer(self, producer_id: int, epoch: int) -> None:
        """The request comes from the producer instance holding this id, else raises."""
        if producer_id != self.producer_id:
            raise TxnError(ErrorCode.invalid_producer_id_mapping,
                           f"transactional id {self.transactional_id!r} belongs to producer "
                           f"{self.producer_id}, not {producer_id}")
        if epoch != self.producer_epoch:
            raise TxnError(ErrorCode.producer_fenced,
                           f"producer epoch {epoch} is not the current {self.producer_epoch}: "
                           "another instance with this transactional id took over")

    def begin(self, now_ms: int) -> None:
        """Open a transaction if none is (the first AddPartitions or AddOffsets)."""
        if self.state.preparing:
            raise TxnError(ErrorCode.concurrent_transactions,
                           "the previous transaction is still completing")
        if self.state is not TxnState.ONGOING:
            self.state = TxnState.ONGOING
            self.start_ms = now_ms
            self.partitions, self.offsets, self.groups = set(), {}, set()
        self.last_update_ms = now_ms

    def expired(self, now_ms: int) -> bool:
        return self.state is TxnState.ONGOING and now_ms - self.start_ms > self.timeout_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.producer_id, "epoch": self.producer_epoch,
            "last_epoch": self.last_producer_epoch, "timeout_ms": self.timeout_ms,
            "state": self.state.value, "start_ms": self.start_ms,
            "update_ms": self.last_update_ms,
            "partitions": sorted([topic, partition] for topic, partition in self.partitions),
            "groups": sorted(self.groups),
            "offsets": {group: [[topic, partition, c.offset, c.leader_epoch, c.metadata,
                                 c.commit_ms] for (topic, partition), c in offsets.items()]
                        for group, offsets in self.offsets.items()},
        }

    @classmethod
    def from_json(cls, transactional_id: str, value: dict[str, Any]) -> Txn:
        txn = cls(transactional_id, int(value["pid"]), int(value["epoch"]),
                  int(value["timeout_ms"]), TxnState(value["state"]),
                  int(value["last_epoch"]),
                  {(str(topic), int(partition)) for topic, partition in value["partitions"]},
                  {str(group): {(str(t), int(p)): Committed(int(o), int(e), m, int(ts))
                                for t, p, o, e, m, ts in offsets}
                   for group, offsets in value["offsets"].items()},
                  {str(group) for group in value["groups"]},
                  int(value["start_ms"]), int(value["update_ms"]))
        if not isinstance(txn.transactional_id, str) or not txn.transactional_id:
            raise TypeError("not a transactional id")
        return txn
