"""gRPC handlers for group coordination: protobuf in, ``Coordinator`` calls, protobuf out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const

from broker.groups import Coordinator
from broker.log import now_ms
from broker.offsets import Committed
from kelp import grpc
from kelp.rpc.broker import v1 as pb


class GroupService:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def mapping(self) -> dict[str, grpclib.const.Handler]:
        calls: dict[str, tuple[Callable[[Any], Awaitable[Any]], type, type]] = {
            "JoinGroup": (self.join, pb.JoinGroupRequest, pb.JoinGroupReply),
            "SyncGroup": (self.sync, pb.SyncGroupRequest, pb.SyncGroupReply),
            "Heartbeat": (self.heartbeat, pb.HeartbeatRequest, pb.HeartbeatReply),
            "LeaveGroup": (self.leave, pb.LeaveGroupRequest, pb.LeaveGroupReply),
            "CommitOffsets": (self.commit, pb.CommitOffsetsRequest, pb.CommitOffsetsReply),
            "FetchOffsets": (self.fetch_offsets, pb.FetchOffsetsRequest, pb.FetchOffsetsReply),
            "ListGroups": (self.list_groups, pb.ListGroupsRequest, pb.ListGroupsReply),
            "DescribeGroups": (self.describe, pb.DescribeGroupsRequest,
                               pb.DescribeGroupsReply),
            "DeleteGroups": (self.delete_groups, pb.DeleteGroupsRequest, pb.DeleteGroupsReply),
            "DeleteOffsets": (self.delete_offsets, pb.DeleteOffsetsRequest,
                              pb.DeleteOffsetsReply),
        }
        return {f"/broker.v1.Broker/{name}": grpc.unary_handler(fn, req, rep)
                for name, (fn, req, rep) in calls.items()}

    async def join(self, r: pb.JoinGroupRequest) -> pb.JoinGroupReply:
        result = await self.coordinator.join(
            r.group_id, r.member_id, r.group_instance_id, r.protocol_type,
            [(p.name, p.metadata) for p in r.protocols], r.session_timeout_ms,
            r.rebalance_timeout_ms, r.require_known_member_id, r.client_id, r.client_host)
        return pb.JoinGroupReply(
            error_code=result.error, generation_id=result.generation,
            protocol_type=result.protocol_type, protocol_name=result.protocol_name,
            leader=result.leader, member_id=result.member_id,
            members=[pb.GroupMember(member_id=m, group_instance_id=i, metadata=meta)
                     for m, i, meta in result.members])

    async def sync(self, r: pb.SyncGroupRequest) -> pb.SyncGroupReply:
        error, assignment, protocol_type, protocol_name = await self.coordinator.sync(
            r.group_id, r.generation_id, r.member_id, r.group_instance_id, r.protocol_type,
            r.protocol_name, {a.member_id: a.assignment for a in r.assignments})
        return pb.SyncGroupReply(error_code=error, assignment=assignment,
                                 protocol_type=protocol_type, protocol_name=protocol_name)

    async def heartbeat(self, r: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        return pb.HeartbeatReply(error_code=self.coordinator.heartbeat(
            r.group_id, r.generation_id, r.member_id, r.group_instance_id))

    async def leave(self, r: pb.LeaveGroupRequest) -> pb.LeaveGroupReply:
        top, results = self.coordinator.leave(
            r.group_id, [(m.member_id, m.group_instance_id) for m in r.members])
        return pb.LeaveGroupReply(error_code=top, results=[
            pb.LeaveGroupReplyResult(member_id=m, group_instance_id=i, error_code=code)
            for m, i, code in results])

    async def commit(self, r: pb.CommitOffsetsRequest) -> pb.CommitOffsetsReply:
        now = now_ms()
        offsets = {(o.topic, o.partition): Committed(o.offset, o.leader_epoch, o.metadata, now)
                   for o in r.offsets}
        results = await self.coordinator.commit(r.group_id, r.generation_id, r.member_id,
                                                r.group_instance_id, offsets)
        return pb.CommitOffsetsReply(results=[
            pb.CommittedOffset(topic=t, partition=p, error_code=code)
            for (t, p), code in results.items()])

    async def fetch_offsets(self, r: pb.FetchOffsetsRequest) -> pb.FetchOffsetsReply:
        wanted = None if r.all_topics else [(t.topic, p) for t in r.topics
                                            for p in t.partitions]
        found = self.coordinator.fetch_offsets(r.group_id, wanted)
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
            for g in self.coordinator.list_groups(list(r.states), list(r.types))])

    async def describe(self, r: pb.DescribeGroupsRequest) -> pb.DescribeGroupsReply:
        described = []
        for group_id in r.group_ids:
            group = self.coordinator.describe(group_id)
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
                                       error_code=await self.coordinator.delete_group(g))
            for g in r.group_ids])

    async def delete_offsets(self, r: pb.DeleteOffsetsRequest) -> pb.DeleteOffsetsReply:
        error, results = await self.coordinator.delete_offsets(
            r.group_id, [(t.topic, p) for t in r.topics for p in t.partitions])
        return pb.DeleteOffsetsReply(error_code=error, results=[
            pb.CommittedOffset(topic=t, partition=p, error_code=code)
            for (t, p), code in results.items()])
