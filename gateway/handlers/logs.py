"""OffsetForLeaderEpoch and DescribeLogDirs, answered from the broker's partition states.

A lone broker leads every partition in leader epoch 0, so the end offset of epoch 0 (and of any
later epoch a client asks about) is the high-water mark. In a cluster each partition's leader
answers from its leader-epoch cache (``LeaderEpochEnd``), as Kafka's leader does.
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

LOG_DIR = "kelp"  # the one log dir: the name the broker's data dir goes by

LEADER_EPOCH = 0


async def _states(ctx: GatewayContext, names: list[str]
                  ) -> dict[str, dict[int, pb.PartitionState]] | None:
    try:
        reply = await ctx.broker.call(BROKER.describe_topics, pb.DescribeTopicsRequest(
            names=names, include_partitions=True))
    except BrokerUnavailable:
        return None
    return {t.name: {p.partition: p for p in t.partition_states}
            for t in reply.topics if not t.error_code}


async def handle_offset_for_leader_epoch(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    if ctx.router is not None:
        return await _cluster_epoch_ends(ctx, request)
    states = await _states(ctx, [t.topic for t in body.topics])
    response_type = messages.response_type(apis.ApiKey.OFFSET_FOR_LEADER_EPOCH, request.version)
    topic_type = messages.nested(response_type, "OffsetForLeaderTopicResult")
    partition_type = messages.nested(response_type, "EpochEndOffset")

    def answer(topic: str, wanted: Any) -> Any:
        if not ctx.security.allows(acl.Operation.DESCRIBE, acl.ResourceType.TOPIC, topic):
            return partition_type(error_code=ErrorCode.topic_authorization_failed,
                                  partition=wanted.partition)
        if states is None:
            return partition_type(error_code=ErrorCode.not_leader_or_follower,
                                  partition=wanted.partition)
        state = states.get(topic, {}).get(wanted.partition)
        if state is None:
            return partition_type(error_code=ErrorCode.unknown_topic_or_partition,
                                  partition=wanted.partition)
        if wanted.leader_epoch < LEADER_EPOCH:
            return partition_type(error_code=ErrorCode.none, partition=wanted.partition)
        return partition_type(error_code=ErrorCode.none, partition=wanted.partition,
                              leader_epoch=LEADER_EPOCH, end_offset=state.high_watermark)

    return messages.build(response_type, throttle_time=datetime.timedelta(0), topics=tuple(
        topic_type(topic=t.topic, partitions=tuple(answer(t.topic, p) for p in t.partitions))
        for t in body.topics))


async def _cluster_epoch_ends(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.OFFSET_FOR_LEADER_EPOCH, request.version)
    topic_type = messages.nested(response_type, "OffsetForLeaderTopicResult")
    partition_type = messages.nested(response_type, "EpochEndOffset")

    async def answer(topic: str, wanted: Any) -> Any:
        if not ctx.security.allows(acl.Operation.DESCRIBE, acl.ResourceType.TOPIC, topic):
            return partition_type(error_code=ErrorCode.topic_authorization_failed,
                                  partition=wanted.partition)
        try:
            leader = ctx.leader(topic, wanted.partition)
            reply = await leader.call(BROKER.leader_epoch_end, pb.LeaderEpochEndRequest(
                topic=topic, partition=wanted.partition, leader_epoch=wanted.leader_epoch,
                current_leader_epoch=getattr(wanted, "current_leader_epoch", -1)))
        except BrokerUnavailable:
            return partition_type(error_code=ErrorCode.not_leader_or_follower,
                                  partition=wanted.partition)
        return partition_type(error_code=ErrorCode(reply.error_code), partition=wanted.partition,
                              leader_epoch=reply.leader_epoch, end_offset=reply.end_offset)

    # One call at a time (each a short unary call to a leader): a request naming many
    # partitions costs time, never a task per partition.
    results: dict[tuple[str, int], Any] = {}
    for t in body.topics:
        for p in t.partitions:
            if (t.topic, p.partition) not in results:
                results[(t.topic, p.partition)] = await answer(t.topic, p)
    return messages.build(response_type, throttle_time=datetime.timedelta(0), topics=tuple(
        topic_type(topic=t.topic, partitions=tuple(results[(t.topic, p.partition)]
                                                   for p in t.partitions))
        for t in body.topics))


async def handle_describe_log_dirs(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    # null asks for every topic; an empty list for none.
    wanted = None if body.topics is None else {t.topic: set(t.partitions) for t in body.topics}
    states = {} if wanted == {} else await _states(ctx, sorted(wanted) if wanted else [])
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_LOG_DIRS, request.version)
    result_type = messages.nested(response_type, "DescribeLogDirsResult")
    topic_type = messages.nested(response_type, "DescribeLogDirsTopic")
    partition_type = messages.nested(response_type, "DescribeLogDirsPartition")
    if states is None:
        return messages.build(response_type, throttle_time=datetime.timedelta(0),
                              error_code=ErrorCode.none, results=(messages.build(
                                  result_type, error_code=ErrorCode.kafka_storage_error,
                                  log_dir="", topics=()),))
    topics = tuple(
        topic_type(name=name, partitions=tuple(
            partition_type(partition_index=index, partition_size=state.size_bytes,
                           offset_lag=0, is_future_key=False)
            for index, state in sorted(partitions.items())
            if wanted is None or not wanted[name] or index in wanted[name]))
        for name, partitions in sorted(states.items()) if wanted is None or name in wanted)
    return messages.build(response_type, throttle_time=datetime.timedelta(0),
                          error_code=ErrorCode.none, results=(messages.build(
                              result_type, error_code=ErrorCode.none, log_dir=LOG_DIR,
                              topics=topics, total_bytes=-1, usable_bytes=-1),))
