"""KIP-848 consumer groups: ConsumerGroupHeartbeat (68) and ConsumerGroupDescribe (69), served
by the broker's coordinator (``broker.consumer_coordinator``); topics go by their ids."""

from __future__ import annotations

import datetime
import uuid
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
ZERO_ID = uuid.UUID(int=0)


async def handle_heartbeat(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.CONSUMER_GROUP_HEARTBEAT,
                                            request.version)
    assignment_type = messages.nested(response_type, "Assignment")
    partitions_type = messages.nested(response_type, "TopicPartitions")
    names = body.subscribed_topic_names
    owned = body.topic_partitions
    # Kafka: DESCRIBE on every topic named in the subscription (READ on the group is checked
    # before the handler, in gateway.access).
    hidden = [n for n in names or ()
              if not ctx.security.allows(acl.Operation.DESCRIBE, acl.ResourceType.TOPIC, n)]
    if hidden:
        return messages.build(response_type, throttle_time=NO_TIME,
                              error_code=ErrorCode.topic_authorization_failed,
                              error_message="Topic authorization failed for "
                              + ", ".join(sorted(hidden)[:10]),
                              member_id=None, member_epoch=-1, heartbeat_interval=NO_TIME,
                              assignment=None)
    try:
        reply = await ctx.coordinator().call(BROKER.consumer_group_heartbeat,
                                      pb.ConsumerGroupHeartbeatRequest(
            group_id=body.group_id, member_id=body.member_id, member_epoch=body.member_epoch,
            instance_id=body.instance_id, rack_id=body.rack_id,
            rebalance_timeout_ms=int(body.rebalance_timeout.total_seconds() * 1000),
            subscribed_topic_names=(None if names is None else
                                    pb.ConsumerGroupHeartbeatRequestSubscription(
                                        topics=list(names))),
            subscribed_topic_regex=getattr(body, "subscribed_topic_regex", None),
            server_assignor=body.server_assignor,
            owned=None if owned is None else pb.ConsumerGroupHeartbeatRequestOwned(
                # kio reads the all-zero id (no topic) as None.
                topics=[pb.TopicIdPartitions(topic_id=(t.topic_id or ZERO_ID).bytes,
                                             partitions=list(t.partitions)) for t in owned]),
            client_id=request.header.client_id or "", client_host=current_peer.get()))
    except BrokerUnavailable as exc:
        return messages.build(response_type, throttle_time=NO_TIME,
                              error_code=COORDINATOR_UNREACHABLE,
                              error_message=str(exc), member_id=None, member_epoch=-1,
                              heartbeat_interval=NO_TIME, assignment=None)
    assignment = None
    if reply.has_assignment and not reply.error_code:
        assignment = assignment_type(topic_partitions=tuple(
            partitions_type(topic_id=uuid.UUID(bytes=t.topic_id), partitions=tuple(t.partitions))
            for t in reply.assignment))
    return messages.build(
        response_type, throttle_time=NO_TIME, error_code=ErrorCode(reply.error_code),
        error_message=reply.error_message or None, member_id=reply.member_id or None,
        member_epoch=reply.member_epoch,
        heartbeat_interval=datetime.timedelta(milliseconds=reply.heartbeat_interval_ms),
        assignment=assignment)


async def handle_describe(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.CONSUMER_GROUP_DESCRIBE,
                                            request.version)
    group_type = messages.nested(response_type, "DescribedGroup")
    member_type = messages.nested(response_type, "Member")
    assignment_type = messages.nested(response_type, "Assignment")
    partitions_type = messages.nested(response_type, "TopicPartitions")
    group_ids = list(dict.fromkeys(body.group_ids))
    denied = [g for g in group_ids
              if not ctx.security.allows(acl.Operation.DESCRIBE, acl.ResourceType.GROUP, g)]
    group_ids = [g for g in group_ids if g not in denied]
    groups = [pb.ConsumerGroupDescribeReplyGroup(
        group_id=g, error_code=ErrorCode.group_authorization_failed,
        error_message="Group authorization failed.") for g in denied]
    try:
        if group_ids:
            reply = await ctx.coordinator().call(BROKER.consumer_group_describe,
                                          pb.ConsumerGroupDescribeRequest(group_ids=group_ids))
            groups += reply.groups
    except BrokerUnavailable as exc:
        groups += [pb.ConsumerGroupDescribeReplyGroup(
            group_id=g, error_code=COORDINATOR_UNREACHABLE, error_message=str(exc))
            for g in group_ids]
    requested = body.include_authorized_operations

    def assignment(entries: list[pb.TopicIdPartitions]) -> Any:
        return assignment_type(topic_partitions=tuple(partitions_type(
            topic_id=uuid.UUID(bytes=t.topic_id), topic_name=t.topic,
            partitions=tuple(t.partitions)) for t in entries))

    return messages.build(response_type, throttle_time=NO_TIME, groups=tuple(messages.build(
        group_type, error_code=ErrorCode(g.error_code), error_message=g.error_message or None,
        group_id=g.group_id, group_state=g.state, group_epoch=g.group_epoch,
        assignment_epoch=g.assignment_epoch, assignor_name=g.assignor_name,
        authorized_operations=authorized.group(ctx, requested, g.group_id),
        members=tuple(messages.build(
            member_type, member_id=m.member_id, instance_id=m.instance_id, rack_id=m.rack_id,
            member_epoch=m.member_epoch, client_id=m.client_id, client_host=m.client_host,
            subscribed_topic_names=tuple(m.subscribed_topic_names),
            subscribed_topic_regex=m.subscribed_topic_regex,
            assignment=assignment(m.assignment),
            target_assignment=assignment(m.target_assignment), member_type=1)
            for m in g.members)) for g in groups))
