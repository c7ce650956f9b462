"""Group coordination calls: protobuf in, ``Coordinator`` calls, protobuf out."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from broker.groups import Coordinator
from broker.log import now_ms
from broker.offsets import Committed
from kelp.rpc.broker import v1 as pb


class GroupCalls:
    """A mixin of ``broker.service.BrokerService``: the group methods of the generated base."""

    coordinator: Coordinator | None

    @property
    def _groups(self) -> Coordinator:
        if self.coordinator is None:  # a broker built without one (unit tests)
            raise GRPCError(Status.UNIMPLEMENTED, "this broker runs no group coordinator")
        return self.coordinator

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

    async def sync_group(self, r: pb.SyncGroupRequest) -> pb.SyncGroupReply:
        error, assignment, protocol_type, protocol_name = await self._groups.sync(
            r.group_id, r.generation_id, r.member_id, r.group_instance_id, r.protocol_type,
            r.protocol_name, {a.member_id: a.assignment for a in r.assignments})
        return pb.SyncGroupReply(error_code=error, assignment=assignment,
                                 protocol_type=protocol_type, protocol_name=protocol_name)

    async def heartbeat(self, r: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        return pb.HeartbeatReply(error_code=self._groups.heartbeat(
            r.group_id, r.generation_id, r.member_id, r.group_instance_id))

    async def leave_group(self, r: pb.LeaveGroupRequest) -> pb.LeaveGroupReply:
        top, results = self._groups.leave(
            r.group_id, [(m.member_id, m.group_instance_id) for m in r.members])
        return pb.LeaveGroupReply(error_code=top, results=[
            pb.LeaveGroupReplyResult(member_id=m, group_instance_id=i, error_code=code)
            for m, i, code in results])

    async def commit_offsets(self, r: pb.CommitOffsetsRequest) -> pb.CommitOffsetsReply:
        now = now_ms()
        offsets = {(o.topic, o.partition): Committed(o.offset, o.leader_epoch, o.metadata, now)
                   for o in r.offsets}
        results = await self._groups.commit(r.group_id, r.generation_id, r.member_id,
                                                r.group_instance_id, offsets)
        return pb.CommitOffsetsReply(results=[
            pb.CommittedOffset(topic=t, partition=p, error_code=code)
            for (t, p), code in results.items()])

    async def fetch_offsets(self, r: pb.FetchOffsetsRequest) -> pb.FetchOffsetsReply:
        wanted = None if r.all_topics else [(t.topic, p) for t in r.topics
                                            for p in t.partitions]
        found = self._groups.fetch_offsets(r.group_id, wanted)
        return pb.FetchOffsetsReply(offsets=[
            pb.CommittedOffset(topic=t, partition=p,
                               offset=-1 if c is None else c.offset,
                               leader_epoch=-1 if c is None else c.leader_epoch,
                               metadata="" if c is None else c.metadata)
            for (t, p), c in sorted(found.items())])

    async def list_groups(self, r: pb.ListGroupsRequest) -> pb.ListGroupsReply:
        return pb.ListGroupsReply(groups=[
            pb.ListGroupsReplyListed(group_id=g.group_id, protocol_type=g.protocol_type,
                                     state=g.state.value)
            for g in self._groups.list_groups(list(r.states), list(r.types))])

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

    async def delete_groups(self, r: pb.DeleteGroupsRequest) -> pb.DeleteGroupsReply:
        return pb.DeleteGroupsReply(results=[
            pb.DeleteGroupsReplyResult(group_id=g,
                                       error_code=await self._groups.delete_group(g))
            for g in r.group_ids])

    async def delete_offsets(self, r: pb.DeleteOffsetsRequest) -> pb.DeleteOffsetsReply:
        error, results = await self._groups.delete_offsets(
            r.group_id, [(t.topic, p) for t in r.topics for p in t.partitions])
        return pb.DeleteOffsetsReply(error_code=error, results=[
            pb.CommittedOffset(topic=t, partition=p, error_code=code)
            for (t, p), code in results.items()])
