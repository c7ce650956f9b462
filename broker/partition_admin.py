"""A cluster's partition administration: Kafka's ElectLeaders and partition reassignments.

Any broker answers them (the gateway asks its own): each change is a compare-and-swap on the
partition's state in etcd, so it cannot undo a concurrent election; the controller then carries
a reassignment through (``broker.placement.reassignment_step``): the new replicas join and
catch up from the leader, and once all are in sync the partition becomes the new replicas alone.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from broker.controller import Controller, partition_key
from broker.membership import Membership
from broker.placement import (
    NO_LEADER,
    PartitionState,
    after_brokers_changed,
    preferred_leader,
    reassign,
)
from kelp.etcd import EtcdUnavailable
from kelp.rpc.broker import v1 as pb

PREFERRED, UNCLEAN = 0, 1  # ElectLeaders' election types
MAX_PARTITIONS = 10_000    # partitions one request may name


class PartitionAdmin:
    def __init__(self, controller: Controller, membership: Membership) -> None:
        self.controller = controller
        self.membership = membership

    async def elect_leaders(self, request: pb.ElectLeadersRequest) -> pb.ElectLeadersReply:
        states = self.controller.states()
        if request.all:
            wanted = sorted(states)
        else:
            wanted = [(ref.topic, ref.partition) for ref in request.partitions]
        results = []
        live = set(self.membership.brokers())
        for key in wanted[:MAX_PARTITIONS]:
            ref = pb.PartitionRef(topic=key[0], partition=key[1])
            state = states.get(key)
            if state is None:
                results.append(_result(ref, ErrorCode.unknown_topic_or_partition,
                                       "no such partition in the cluster"))
                continue
            if request.election_type == PREFERRED:
                new = preferred_leader(state, live)
                if new is None:
                    if state.leader == state.replicas[0]:
                        code, why = ErrorCode.election_not_needed, "already led by it"
                    else:
                        code = ErrorCode.preferred_leader_not_available
                        why = f"broker {state.replicas[0]} is not live and in sync"
                    if not request.all or code != ErrorCode.election_not_needed:
                        results.append(_result(ref, code, why))
                    continue
            elif request.election_type == UNCLEAN:
                if state.leader != NO_LEADER:
                    if not request.all:
                        results.append(_result(ref, ErrorCode.election_not_needed,
                                               "the partition has a leader"))
                    continue
                new = after_brokers_changed(state, live, unclean=True)
                if new.leader == NO_LEADER:
                    results.append(_result(ref, ErrorCode.eligible_leaders_not_available,
                                           "no live replica"))
                    continue
            else:
                results.append(_result(ref, ErrorCode.invalid_request,
                                       f"unknown election type {request.election_type}"))
                continue
            results.append(await self._write(ref, state, new))
        return pb.ElectLeadersReply(results=results)

    async def reassign(self, request: pb.ReassignPartitionsRequest
                       ) -> pb.ReassignPartitionsReply:
        states = self.controller.states()
        live = set(self.membership.brokers())
        results = []
        for target in request.targets[:MAX_PARTITIONS]:
            ref = target.partition
            state = states.get((ref.topic, ref.partition))
            if state is None:
                results.append(_result(ref, ErrorCode.unknown_topic_or_partition,
                                       "no such partition in the cluster"))
                continue
            if target.cancel:
                if state.target is None:
                    results.append(_result(ref, ErrorCode.no_reassignment_in_progress,
                                           "no reassignment in progress"))
                    continue
                results.append(await self._write(ref, state, reassign(state, None)))
                continue
            replicas = tuple(target.replicas)
            if not replicas or len(set(replicas)) != len(replicas):
                results.append(_result(ref, ErrorCode.invalid_replica_assignment,
                                       f"replicas {list(replicas)} must be distinct and not "
                                       "empty"))
                continue
            dead = [b for b in replicas if b not in live]
            if dead:
                results.append(_result(ref, ErrorCode.invalid_replica_assignment,
                                       f"brokers {dead} are not live"))
                continue
            results.append(await self._write(ref, state, reassign(state, replicas)))
        return pb.ReassignPartitionsReply(results=results)

    async def list_reassignments(self, request: pb.ListReassignmentsRequest
                                 ) -> pb.ListReassignmentsReply:
        states = self.controller.states()
        wanted = ({(ref.topic, ref.partition) for ref in request.partitions}
                  if request.partitions else None)
        return pb.ListReassignmentsReply(reassignments=[
            pb.Reassignment(partition=pb.PartitionRef(topic=key[0], partition=key[1]),
                            replicas=list(state.replicas), adding=list(state.adding),
                            removing=list(state.removing))
            for key, state in sorted(states.items())
            if state.target is not None and (wanted is None or key in wanted)])

    async def _write(self, ref: pb.PartitionRef, state: PartitionState,
                     new: PartitionState) -> pb.PartitionResult:
        if new == state:
            return _result(ref, ErrorCode.none, "")
        key = partition_key(ref.topic, ref.partition)
        entry = self.controller.partitions.entries.get(key)
        if entry is None or _decoded(entry.value) != state:
            return _result(ref, ErrorCode.request_timed_out,
                           "the partition changed meanwhile: try again")
        try:
            written = await self.controller.etcd.write_if(
                [(key, "mod", entry.mod_revision)], [(key, new.encode())])
        except EtcdUnavailable as exc:
            return _result(ref, ErrorCode.request_timed_out,
                           f"the cluster's metadata store is unreachable: {exc}")
        if written is None:
            return _result(ref, ErrorCode.request_timed_out,
                           "the partition changed meanwhile: try again")
        return _result(ref, ErrorCode.none, "")


def _decoded(value: bytes) -> PartitionState | None:
    """The state in ``value``, or None if it cannot be read (then it is not the one we saw)."""
    try:
        return PartitionState.decode(value)
    except (ValueError, KeyError, TypeError):
        return None


def _result(ref: pb.PartitionRef, code: ErrorCode, message: str) -> pb.PartitionResult:
    return pb.PartitionResult(partition=ref, error_code=code, error_message=message)
