"""Group coordination calls: protobuf in, ``Coordinator`` calls, protobuf out."""

from __future__ import annotations

import uuid

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from kio.schema.errors import ErrorCode

from broker.consumer_group import Assignment
from broker.consumer_heartbeat import Heartbeat
from broker.coordination import coordinated
from broker.groups import Coordinator
from broker.log import now_ms
from broker.offsets import Committed
from broker.txn_coordinator import TransactionCoordinator
from kelp.rpc.broker import v1 as pb


class GroupCalls:
    """A mixin of ``broker.service.BrokerService``: the group methods of the generated base."""

    coordinator: Coordinator | None
    transactions: TransactionCoordinator | None

    @property
    def _groups(self) -> Coordinator:
        if self.coordinator is None:  # a broker built without one (unit tests)
            raise GRPCError(Status.UNIMPLEMENTED, "this broker runs no group coordinator")
        return self.coordinator

    @coordinated
    async def join_group(self, r: pb.JoinGroupRequest) -> pb.JoinGroupReply:
        result = await self._groups.join(
            r.group_id, r.member_id, r.group_instance_id, r.protocol_type,
            [(p.name, p.metadata) for p in r.protocols], r.session_timeout_ms,
            r.rebalance_timeout_ms, r.require_known_member_id, r.client_id, r.client_host)
        return pb.JoinGroupReply(
            error_code=result.error, generation_id=result.generation,
            protocol_type=result.protocol_type, protocol_name=result.protocol_name,
            leader=result.leader, member_id=result.member_id,
            members=[pb.GroupMember(member_id=m, group_instance_id=i, metadata=meta)
                     for m, i, meta in result.members])

    @coordinated
    async def sync_group(self, r: pb.SyncGroupRequest) -> pb.SyncGroupReply:
        error, assignment, protocol_type, protocol_name = await self._groups.sync(
            r.group_id, r.generation_id, r.member_id, r.group_instance_id, r.protocol_type,
            r.protocol_name, {a.member_id: a.assignment for a in r.assignments})
        return pb.SyncGroupReply(error_code=error, assignment=assignment,
                                 protocol_type=protocol_type, protocol_name=protocol_name)

    @coordinated
    async def heartbeat(self, r: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        return pb.HeartbeatReply(error_code=self._groups.heartbeat(
            r.group_id, r.generation_id, r.member_id, r.group_instance_id))

    @coordinated
    async def leave_group(self, r: pb.LeaveGroupRequest) -> pb.LeaveGroupReply:
        top, results = self._groups.leave(
            r.group_id, [(m.member_id, m.group_instance_id) for m in r.members])
        return pb.LeaveGroupReply(error_code=top, results=[
            pb.LeaveGroupReplyResult(member_id=m, group_instance_id=i, error_code=code)
            for m, i, code in results])

    @coordinated
    async def commit_offsets(self, r: pb.CommitOffsetsRequest) -> pb.CommitOffsetsReply:
        now = now_ms()
        offsets = {(o.topic, o.partition): Committed(o.offset, o.leader_epoch, o.metadata, now)
                   for o in r.offsets}
        results = await self._groups.commit(r.group_id, r.generation_id, r.member_id,
                                                r.group_instance_id, offsets)
        return pb.CommitOffsetsReply(results=[
            pb.CommittedOffset(topic=t, partition=p, error_code=code)
            for (t, p), code in results.items()])

    @coordinated
    async def fetch_offsets(self, r: pb.FetchOffsetsRequest) -> pb.FetchOffsetsReply:
        wanted = None if r.all_topics else [(t.topic, p) for t in r.topics
                                            for p in t.partitions]
        if r.member_epoch is not None:  # OffsetFetch v9 from a KIP-848 member
            error = self._groups.consumer_fetch_error(r.group_id, r.member_id or "",
                                                      r.member_epoch)
            if error:
                return pb.FetchOffsetsReply(error_code=error)
        found = self._groups.fetch_offsets(r.group_id, wanted)
        # KIP-447: a read_committed consumer must not start from an offset that an open
        # transaction is about to replace; it retries on UNSTABLE_OFFSET_COMMIT.
        unstable = (self.transactions.pending_offsets(r.group_id)
                    if r.require_stable and self.transactions is not None else set())
        if unstable and wanted is None:
            found.update(dict.fromkeys(unstable - found.keys()))
        return pb.FetchOffsetsReply(offsets=[
            pb.CommittedOffset(topic=t, partition=p,
                               offset=-1 if c is None else c.offset,
                               leader_epoch=-1 if c is None else c.leader_epoch,
                               metadata="" if c is None else c.metadata,
                               error_code=ErrorCode.unstable_offset_commit
                               if (t, p) in unstable else ErrorCode.none)
            for (t, p), c in sorted(found.items())])

    @coordinated
    async def list_groups(self, r: pb.ListGroupsRequest) -> pb.ListGroupsReply:
        states = {s.lower() for s in r.states}
        types = {t.lower() for t in r.types}
        listed = [pb.ListGroupsReplyListed(group_id=g.group_id, protocol_type=g.protocol_type,
                                           state=g.state.value, group_type="classic")
                  for g in self._groups.list_groups(list(r.states), list(r.types))]
        if not types or "consumer" in types:
            listed += [pb.ListGroupsReplyListed(group_id=g.group_id, protocol_type="consumer",
                                                state=g.state, group_type="consumer")
                       for g in self._groups.consumer_groups.values()
                       if not states or g.state.lower() in states]
        return pb.ListGroupsReply(groups=listed)

    @coordinated
    async def describe_groups(self, r: pb.DescribeGroupsRequest) -> pb.DescribeGroupsReply:
        described = []
        for group_id in r.group_ids:
            group = self._groups.describe(group_id)
            described.append(pb.DescribeGroupsReplyDescribed(
                group_id=group_id, state=group.state.value, protocol_type=group.protocol_type,
                protocol_name=group.protocol_name, members=[
                    pb.DescribeGroupsReplyMember(
                        member_id=m.member_id, group_instance_id=m.instance_id,
                        client_id=m.client_id, client_host=m.client_host,
                        metadata=m.metadata_for(group.protocol_name), assignment=m.assignment)
                    for m in group.members.values()]))
        return pb.DescribeGroupsReply(groups=described)

    @coordinated
    async def delete_groups(self, r: pb.DeleteGroupsRequest) -> pb.DeleteGroupsReply:
        return pb.DeleteGroupsReply(results=[
            pb.DeleteGroupsReplyResult(group_id=g,
                                       error_code=await self._groups.delete_group(g))
            for g in r.group_ids])

    @coordinated
    async def delete_offsets(self, r: pb.DeleteOffsetsRequest) -> pb.DeleteOffsetsReply:
        error, results = await self._groups.delete_offsets(
            r.group_id, [(t.topic, p) for t in r.topics for p in t.partitions])
        return pb.DeleteOffsetsReply(error_code=error, results=[
            pb.CommittedOffset(topic=t, partition=p, error_code=code)
            for (t, p), code in results.items()])

    # -- KIP-848 consumer groups ------------------------------------------------------------

    @coordinated
    async def consumer_group_heartbeat(self, r: pb.ConsumerGroupHeartbeatRequest
                                       ) -> pb.ConsumerGroupHeartbeatReply:
        beat = Heartbeat(
            group_id=r.group_id, member_id=r.member_id, member_epoch=r.member_epoch,
            instance_id=r.instance_id, rack_id=r.rack_id,
            rebalance_timeout_ms=r.rebalance_timeout_ms,
            subscribed_topic_names=(None if r.subscribed_topic_names is None
                                    else list(r.subscribed_topic_names.topics)),
            subscribed_topic_regex=r.subscribed_topic_regex,
            server_assignor=r.server_assignor,
            owned=None if r.owned is None else _assignment(r.owned.topics),
            client_id=r.client_id, client_host=r.client_host)
        result = await self._groups.consumer_heartbeat(beat)
        return pb.ConsumerGroupHeartbeatReply(
            error_code=result.error, error_message=result.message,
            member_id=result.member_id, member_epoch=result.member_epoch,
            heartbeat_interval_ms=result.heartbeat_interval_ms,
            has_assignment=result.assignment is not None,
            assignment=_topic_partitions(result.assignment or {}))

    @coordinated
    async def consumer_group_describe(self, r: pb.ConsumerGroupDescribeRequest
                                      ) -> pb.ConsumerGroupDescribeReply:
        names = {topic_id: name for name, (topic_id, _count) in self._groups.topics().items()}
        out = []
        for group_id in dict.fromkeys(r.group_ids):
            group = self._groups.describe_consumer(group_id)
            if group is None:
                classic = self._groups.groups.get(group_id)
                out.append(pb.ConsumerGroupDescribeReplyGroup(
                    group_id=group_id, error_code=ErrorCode.group_id_not_found,
                    error_message=(f"Group {group_id} is not a consumer group."
                                   if classic is not None else f"Group {group_id} not found."),
                    state="Dead"))
                continue
            out.append(pb.ConsumerGroupDescribeReplyGroup(
                group_id=group_id, state=group.state, group_epoch=group.group_epoch,
                assignment_epoch=group.assignment_epoch, assignor_name=group.assignor(),
                members=[pb.ConsumerGroupDescribeReplyMember(
                    member_id=m.member_id, instance_id=m.instance_id, rack_id=m.rack_id,
                    member_epoch=m.member_epoch, client_id=m.client_id,
                    client_host=m.client_host,
                    subscribed_topic_names=list(m.subscribed_topic_names),
                    subscribed_topic_regex=m.subscribed_topic_regex,
                    assignment=_topic_partitions(m.assigned, names),
                    target_assignment=_topic_partitions(group.target.get(m.member_id, {}),
                                                        names))
                    for m in group.members.values()]))
        return pb.ConsumerGroupDescribeReply(groups=out)


def _assignment(topics: list[pb.TopicIdPartitions]) -> Assignment:
    out: dict[uuid.UUID, set[int]] = {}
    for entry in topics:
        if len(entry.topic_id) == 16:  # anything else names no topic kelp has
            out.setdefault(uuid.UUID(bytes=entry.topic_id), set()).update(entry.partitions)
    return {t: frozenset(p) for t, p in out.items()}


def _topic_partitions(assignment: Assignment, names: dict[uuid.UUID, str] | None = None
                      ) -> list[pb.TopicIdPartitions]:
    return [pb.TopicIdPartitions(topic_id=t.bytes, partitions=sorted(p),
                                 topic=(names or {}).get(t, ""))
            for t, p in sorted(assignment.items())]
