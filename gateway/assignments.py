"""Manual replica assignments (CreateTopics, CreatePartitions), checked as Kafka's controller
checks them (sans-IO). kelp has one broker, so a valid assignment names broker 0 once per
partition; anything else is INVALID_REPLICA_ASSIGNMENT with a message saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

from kio.schema.errors import ErrorCode

from gateway.context import NODE_ID

LIVE_BROKERS = frozenset({NODE_ID})


class AssignmentError(ValueError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_new_topic(num_partitions: int, replication_factor: int,
                    assignments: Sequence[tuple[int, Sequence[int]]]) -> int:
    """The partition count a CreateTopics assignment asks for; raises ``AssignmentError``.

    ``assignments`` are (partition index, broker ids) pairs as the request carries them.
    """
    if num_partitions != -1 or replication_factor != -1:
        raise AssignmentError(
            ErrorCode.invalid_request,
            "Both numPartitions or replicationFactor and replicasAssignments were set. "
            "Both cannot be used at the same time.")
    indexes = sorted(index for index, _ in assignments)
    if indexes != list(range(len(indexes))):
        raise AssignmentError(ErrorCode.invalid_replica_assignment,
                              "partitions should be a consecutive 0-based integer sequence")
    check_replicas([replicas for _, replicas in assignments], expected_factor=None)
    return len(indexes)


def check_added_partitions(current: int, count: int, replication_factor: int,
                           assignments: Sequence[Sequence[int]]) -> None:
    """CreatePartitions growing a topic of ``current`` partitions to ``count``."""
    added = count - current
    if len(assignments) != added:
        raise AssignmentError(
            ErrorCode.invalid_replica_assignment,
            f"Attempted to add {added} additional partition(s), but only "
            f"{len(assignments)} assignment(s) were specified.")
    check_replicas(assignments, expected_factor=replication_factor)


def check_replicas(assignments: Sequence[Sequence[int]], expected_factor: int | None) -> None:
    for replicas in assignments:
        if not replicas:
            raise AssignmentError(ErrorCode.invalid_replica_assignment,
                                  "The manual partition assignment includes an empty replica "
                                  "list.")
        seen: set[int] = set()
        for broker in replicas:
            if broker in seen:
                raise AssignmentError(ErrorCode.invalid_replica_assignment,
                                      "The manual partition assignment includes the broker "
                                      f"{broker} more than once.")
            seen.add(broker)
            if broker not in LIVE_BROKERS:
                raise AssignmentError(ErrorCode.invalid_replica_assignment,
                                      "The manual partition assignment includes broker "
                                      f"{broker}, but no such broker is registered.")
        if expected_factor is None:
            expected_factor = len(replicas)
        elif len(replicas) != expected_factor:
            raise AssignmentError(
                ErrorCode.invalid_replica_assignment,
                f"The manual partition assignment includes a partition with {len(replicas)} "
                f"replica(s), but this is not consistent with previous partitions, which have "
                f"{expected_factor} replica(s).")
