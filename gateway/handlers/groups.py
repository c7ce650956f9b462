"""Consumer-group APIs: translated to the broker's coordinator, which keeps all group state.

JoinGroup and SyncGroup may wait for a whole rebalance, so their broker calls get the
group's rebalance timeout (plus a margin) as their deadline; everything else is quick.
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway import authorized
from gateway.broker_client import BrokerUnavailable
from gateway.context import COORDINATOR_UNREACHABLE, GatewayContext, current_peer
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

NO_TIME = datetime.timedelta(0)
CALL_MARGIN_S = 10.0
READ, DESCRIBE, DELETE = acl.Operation.READ, acl.Operation.DESCRIBE, acl.Operation.DELETE
GROUP, TOPIC = acl.ResourceType.GROUP, acl.ResourceType.TOPIC


def _ms(value: datetime.timedelta) -> int:
    return int(value.total_seconds() * 1000)


def _response(api: int, request: Request) -> type:
    return messages.response_type(api, request.version)


async def handle_join(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    session_ms = _ms(body.session_timeout)
    rebalance_ms = _ms(getattr(body, "rebalance_timeout", body.session_timeout))
    if rebalance_ms < 0:
        rebalance_ms = session_ms
    response_type = _response(apis.ApiKey.JOIN_GROUP, request)
    member_type = messages.nested(response_type, "JoinGroupResponseMember")
    try:
        reply = await ctx.coordinator().call(BROKER.join_group, pb.JoinGroupRequest(
            group_id=body.group_id, member_id=body.member_id,
            group_instance_id=getattr(body, "group_instance_id", None),
            protocol_type=body.protocol_type,
            protocols=[pb.GroupProtocol(name=p.name, metadata=p.metadata)
                       for p in body.protocols],
            session_timeout_ms=session_ms, rebalance_timeout_ms=rebalance_ms,
            require_known_member_id=request.version >= 4,
            client_id=request.header.client_id or "", client_host=current_peer.get()),
            timeout=rebalance_ms / 1000 + CALL_MARGIN_S)
    except BrokerUnavailable:
        reply = pb.JoinGroupReply(error_code=COORDINATOR_UNREACHABLE,
                                  generation_id=-1, member_id=body.member_id)
    return messages.build(
        response_type, throttle_time=NO_TIME, error_code=ErrorCode(reply.error_code),
        generation_id=reply.generation_id, protocol_type=reply.protocol_type or None,
        protocol_name=reply.protocol_name or ("" if request.version < 7 else None),
        leader=reply.leader, skip_assignment=False, member_id=reply.member_id,
        members=tuple(messages.build(member_type, member_id=m.member_id,
                                     group_instance_id=m.group_instance_id,
                                     metadata=m.metadata) for m in reply.members))


async def handle_sync(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = _response(apis.ApiKey.SYNC_GROUP, request)
    try:
        reply = await ctx.coordinator().call(BROKER.sync_group, pb.SyncGroupRequest(
            group_id=body.group_id, generation_id=body.generation_id, member_id=body.member_id,
            group_instance_id=getattr(body, "group_instance_id", None),
            protocol_type=getattr(body, "protocol_type", None) or "",
            protocol_name=getattr(body, "protocol_name", None) or "",
            assignments=[pb.MemberAssignment(member_id=a.member_id, assignment=a.assignment)
                         for a in body.assignments]),
            timeout=600.0)
    except BrokerUnavailable:
        reply = pb.SyncGroupReply(error_code=COORDINATOR_UNREACHABLE)
    return messages.build(
        response_type, throttle_time=NO_TIME, error_code=ErrorCode(reply.error_code),
        protocol_type=reply.protocol_type or None, protocol_name=reply.protocol_name or None,
        assignment=reply.assignment)


async def handle_heartbeat(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    try:
        reply = await ctx.coordinator().call(BROKER.heartbeat, pb.HeartbeatRequest(
            group_id=body.group_id, generation_id=body.generation_id, member_id=body.member_id,
            group_instance_id=getattr(body, "group_instance_id", None)))
        error = ErrorCode(reply.error_code)
    except BrokerUnavailable:
        error = COORDINATOR_UNREACHABLE
    return messages.build(_response(apis.ApiKey.HEARTBEAT, request),
                          throttle_time=NO_TIME, error_code=error)


async def handle_leave(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    if hasattr(body, "members"):  # v3+: a batch
        identities = [pb.MemberIdentity(member_id=m.member_id,
                                        group_instance_id=m.group_instance_id)
                      for m in body.members]
    else:
        identities = [pb.MemberIdentity(member_id=body.member_id)]
    response_type = _response(apis.ApiKey.LEAVE_GROUP, request)
    try:
        reply = await ctx.coordinator().call(BROKER.leave_group, pb.LeaveGroupRequest(
            group_id=body.group_id, members=identities))
        top, results = ErrorCode(reply.error_code), list(reply.results)
    except BrokerUnavailable:
        top, results = COORDINATOR_UNREACHABLE, []
    if hasattr(body, "members"):
        member_type = messages.nested(response_type, "MemberResponse")
        top = ErrorCode.none if top != COORDINATOR_UNREACHABLE else top
        return messages.build(response_type, throttle_time=NO_TIME, error_code=top,
                              members=tuple(member_type(
                                  member_id=r.member_id, group_instance_id=r.group_instance_id,
                                  error_code=ErrorCode(r.error_code)) for r in results))
    return messages.build(response_type, throttle_time=NO_TIME, error_code=top)


async def handle_offset_commit(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    generation = getattr(body, "generation_id_or_member_epoch",
                         getattr(body, "generation_id", -1))
    # Kafka: READ on the group, and READ on each topic committed to.
    errors: dict[tuple[str, int], ErrorCode] = {}
    group_allowed = ctx.security.allows(READ, GROUP, body.group_id)
    for t in body.topics:
        if not group_allowed or not ctx.security.allows(READ, TOPIC, t.name):
            code = (ErrorCode.topic_authorization_failed if group_allowed
                    else ErrorCode.group_authorization_failed)
            errors.update({(t.name, p.partition_index): code for p in t.partitions})
    offsets = [pb.CommittedOffset(topic=t.name, partition=p.partition_index,
                                  offset=p.committed_offset,
                                  leader_epoch=getattr(p, "committed_leader_epoch", -1),
                                  metadata=p.committed_metadata)
               for t in body.topics for p in t.partitions
               if (t.name, p.partition_index) not in errors]
    try:
        if offsets:
            reply = await ctx.coordinator().call(BROKER.commit_offsets, pb.CommitOffsetsRequest(
                group_id=body.group_id, generation_id=generation, member_id=body.member_id,
                group_instance_id=getattr(body, "group_instance_id", None), offsets=offsets))
            errors.update({(r.topic, r.partition): ErrorCode(r.error_code)
                           for r in reply.results})
    except BrokerUnavailable:
        pass
    response_type = _response(apis.ApiKey.OFFSET_COMMIT, request)
    topic_type = messages.nested(response_type, "OffsetCommitResponseTopic")
    partition_type = messages.nested(response_type, "OffsetCommitResponsePartition")
    return messages.build(response_type, throttle_time=NO_TIME, topics=tuple(
        topic_type(name=t.name, partitions=tuple(partition_type(
            partition_index=p.partition_index,
            error_code=errors.get((t.name, p.partition_index),
                                  COORDINATOR_UNREACHABLE))
            for p in t.partitions)) for t in body.topics))


async def _fetch_group(ctx: GatewayContext, group_id: str, topics: Any, member: Any = None,
                       require_stable: bool = False
                       ) -> tuple[ErrorCode, dict[str, list[pb.CommittedOffset]]]:
    """(error, offsets by topic). Kafka: DESCRIBE on the group; a topic the principal may not
    DESCRIBE is left out of "all topics", and answered TOPIC_AUTHORIZATION_FAILED (offset -1)
    when named."""
    if not ctx.security.allows(DESCRIBE, GROUP, group_id):
        return ErrorCode.group_authorization_failed, {}
    denied: dict[str, list[pb.CommittedOffset]] = {}
    if topics is not None:
        for t in topics:
            if not ctx.security.allows(DESCRIBE, TOPIC, t.name):
                denied[t.name] = [pb.CommittedOffset(
                    topic=t.name, partition=p, offset=-1, leader_epoch=-1,
                    error_code=ErrorCode.topic_authorization_failed)
                    for p in t.partition_indexes]
        topics = [t for t in topics if t.name not in denied]
        if not topics and denied:
            return ErrorCode.none, denied
    request = pb.FetchOffsetsRequest(group_id=group_id, all_topics=topics is None,
                                     require_stable=require_stable)
    if getattr(member, "member_epoch", None) is not None:  # v9: a KIP-848 member's fetch
        request.member_id, request.member_epoch = member.member_id or "", member.member_epoch
    if topics is not None:
        request.topics = [pb.TopicPartitions(topic=t.name, partitions=list(t.partition_indexes))
                          for t in topics]
    try:
        reply = await ctx.coordinator().call(BROKER.fetch_offsets, request)
    except BrokerUnavailable:
        return COORDINATOR_UNREACHABLE, {}
    by_topic: dict[str, list[pb.CommittedOffset]] = {}
    for offset in reply.offsets:
        if ctx.security.allows(DESCRIBE, TOPIC, offset.topic):
            by_topic.setdefault(offset.topic, []).append(offset)
    return ErrorCode(reply.error_code), {**by_topic, **denied}


async def handle_offset_fetch(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = _response(apis.ApiKey.OFFSET_FETCH, request)
    if hasattr(body, "groups"):  # v8+: several groups at once
        group_type = messages.nested(response_type, "OffsetFetchResponseGroup")
        topic_type = messages.nested(response_type, "OffsetFetchResponseTopics")
        partition_type = messages.nested(response_type, "OffsetFetchResponsePartitions")
        groups = []
        # Each group once: one repeated id would cost a broker call and all its offsets each.
        for group in {g.group_id: g for g in body.groups}.values():
            error, by_topic = await _fetch_group(ctx, group.group_id, group.topics, group,
                                                 body.require_stable)
            groups.append(group_type(group_id=group.group_id, error_code=error,
                                     topics=_topics(by_topic, topic_type, partition_type)))
        return response_type(throttle_time=NO_TIME, groups=tuple(groups))
    topic_type = messages.nested(response_type, "OffsetFetchResponseTopic")
    partition_type = messages.nested(response_type, "OffsetFetchResponsePartition")
    error, by_topic = await _fetch_group(ctx, body.group_id, body.topics,
                                         require_stable=getattr(body, "require_stable", False))
    return messages.build(response_type, throttle_time=NO_TIME, error_code=error,
                          topics=_topics(by_topic, topic_type, partition_type))


def _topics(by_topic: dict[str, list[pb.CommittedOffset]], topic_type: type,
            partition_type: type) -> tuple[Any, ...]:
    return tuple(topic_type(name=name, partitions=tuple(messages.build(
        partition_type, partition_index=o.partition, committed_offset=o.offset,
        committed_leader_epoch=o.leader_epoch, metadata=o.metadata or "",
        error_code=ErrorCode(o.error_code)) for o in offsets))
        for name, offsets in by_topic.items())


async def handle_list_groups(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = _response(apis.ApiKey.LIST_GROUPS, request)
    listed_type = messages.nested(response_type, "ListedGroup")
    try:
        reply = await ctx.coordinator().call(BROKER.list_groups, pb.ListGroupsRequest(
            states=list(getattr(body, "states_filter", ())),
            types=list(getattr(body, "types_filter", ()))))
        error, groups = ErrorCode.none, list(reply.groups)
    except BrokerUnavailable:
        error, groups = COORDINATOR_UNREACHABLE, []
    if not ctx.security.allows_cluster(DESCRIBE):  # Kafka: else only the groups it may see
        groups = [g for g in groups if ctx.security.allows(DESCRIBE, GROUP, g.group_id)]
    return messages.build(response_type, throttle_time=NO_TIME, error_code=error,
                          groups=tuple(messages.build(
                              listed_type, group_id=g.group_id, protocol_type=g.protocol_type,
                              group_state=g.state, group_type=g.group_type or "classic")
                          for g in groups))


async def handle_describe_groups(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = _response(apis.ApiKey.DESCRIBE_GROUPS, request)
    group_type = messages.nested(response_type, "DescribedGroup")
    member_type = messages.nested(response_type, "DescribedGroupMember")
    # Each group once: a repeated id would repeat every member's metadata and assignment.
    group_ids = list(dict.fromkeys(body.groups))
    described = [pb.DescribeGroupsReplyDescribed(
        group_id=g, error_code=ErrorCode.group_authorization_failed)
        for g in group_ids if not ctx.security.allows(DESCRIBE, GROUP, g)]
    group_ids = [g for g in group_ids if ctx.security.allows(DESCRIBE, GROUP, g)]
    try:
        if group_ids:
            reply = await ctx.coordinator().call(BROKER.describe_groups, pb.DescribeGroupsRequest(
                group_ids=group_ids))
            described += reply.groups
    except BrokerUnavailable:
        described += [pb.DescribeGroupsReplyDescribed(
            group_id=g, error_code=COORDINATOR_UNREACHABLE) for g in group_ids]
    requested = getattr(body, "include_authorized_operations", False)
    return messages.build(response_type, throttle_time=NO_TIME, groups=tuple(messages.build(
        group_type, error_code=ErrorCode(g.error_code), group_id=g.group_id,
        group_state=g.state, protocol_type=g.protocol_type, protocol_data=g.protocol_name,
        authorized_operations=authorized.group(ctx, requested, g.group_id),
        members=tuple(messages.build(
            member_type, member_id=m.member_id, group_instance_id=m.group_instance_id,
            client_id=m.client_id, client_host=m.client_host, member_metadata=m.metadata,
            member_assignment=m.assignment) for m in g.members)) for g in described))


async def handle_delete_groups(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = _response(apis.ApiKey.DELETE_GROUPS, request)
    result_type = messages.nested(response_type, "DeletableGroupResult")
    allowed = [g for g in body.groups_names if ctx.security.allows(DELETE, GROUP, g)]
    results = [(g, ErrorCode.group_authorization_failed)
               for g in body.groups_names if g not in allowed]
    try:
        if allowed:
            reply = await ctx.coordinator().call(BROKER.delete_groups, pb.DeleteGroupsRequest(
                group_ids=allowed))
            results += [(r.group_id, ErrorCode(r.error_code)) for r in reply.results]
    except BrokerUnavailable:
        results += [(g, COORDINATOR_UNREACHABLE) for g in allowed]
    return messages.build(response_type, throttle_time=NO_TIME, results=tuple(
        result_type(group_id=g, error_code=code) for g, code in results))


async def handle_offset_delete(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = _response(apis.ApiKey.OFFSET_DELETE, request)
    topic_type = messages.nested(response_type, "OffsetDeleteResponseTopic")
    partition_type = messages.nested(response_type, "OffsetDeleteResponsePartition")
    # The group's DELETE is checked before the handler (gateway.access); READ per topic here.
    denied = {t.name for t in body.topics if not ctx.security.allows(READ, TOPIC, t.name)}
    results = {(t.name, p.partition_index): ErrorCode.topic_authorization_failed
               for t in body.topics if t.name in denied for p in t.partitions}
    error = ErrorCode.none
    try:
        reply = await ctx.coordinator().call(BROKER.delete_offsets, pb.DeleteOffsetsRequest(
            group_id=body.group_id, topics=[pb.TopicPartitions(
                topic=t.name, partitions=[p.partition_index for p in t.partitions])
                for t in body.topics if t.name not in denied]))
        error = ErrorCode(reply.error_code)
        results.update({(r.topic, r.partition): ErrorCode(r.error_code) for r in reply.results})
    except BrokerUnavailable:
        error = COORDINATOR_UNREACHABLE
    return response_type(error_code=error, throttle_time=NO_TIME, topics=tuple(
        topic_type(name=t.name, partitions=tuple(partition_type(
            partition_index=p.partition_index,
            error_code=results.get((t.name, p.partition_index), ErrorCode.none))
            for p in t.partitions)) for t in body.topics) if error == ErrorCode.none else ())
