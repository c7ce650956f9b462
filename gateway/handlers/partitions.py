"""Partition-placement admin APIs, answered as Kafka answers them for a cluster of one broker:
every partition has one replica, on broker 0, which leads it, in the one log dir "kelp".

DescribeTopicPartitions (75; the Java AdminClient's describeTopics since 3.8), ElectLeaders
(43), List/AlterPartitionReassignments (45/46), AlterReplicaLogDirs (34) and DescribeQuorum
(55). kelp's cluster metadata has one voter, this broker; the quorum it reports is that.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from gateway import assignments, authorized
from gateway.context import NODE_ID, GatewayContext, TopicMeta
from gateway.handlers import cluster_partitions
from gateway.handlers.logs import LOG_DIR
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl

NO_TIME = datetime.timedelta(0)
# Kafka's max.request.partition.size.limit: the most partitions one DescribeTopicPartitions
# response carries; the client pages through the rest with the cursor.
MAX_PARTITIONS_PER_RESPONSE = 2000
METADATA_TOPIC = "__cluster_metadata"
PREFERRED, UNCLEAN = 0, 1


def _partition_error(topics: dict[str, TopicMeta], name: str, index: int) -> str | None:
    meta = topics.get(name)
    if meta is None:
        return f"No such topic as {name}"
    if not 0 <= index < meta.partitions:
        return f"No such partition as {name}-{index}"
    return None


async def handle_describe_topic_partitions(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_TOPIC_PARTITIONS,
                                            request.version)
    topic_type = messages.nested(response_type, "DescribeTopicPartitionsResponseTopic")
    partition_type = messages.nested(response_type, "DescribeTopicPartitionsResponsePartition")
    cursor_type = messages.nested(response_type, "Cursor")
    asked = list(dict.fromkeys(t.name for t in body.topics))
    topics = await ctx.existing_topics(asked)
    error = ErrorCode.none
    if topics is None:
        topics, error = {}, ErrorCode.request_timed_out
    names = sorted(asked or topics)
    start_topic, start_partition = "", 0
    if body.cursor is not None:
        start_topic, start_partition = body.cursor.topic_name, max(0, body.cursor.partition_index)
    limit = MAX_PARTITIONS_PER_RESPONSE
    if body.response_partition_limit > 0:
        limit = min(limit, body.response_partition_limit)

    out, next_cursor = [], None
    for name in names:
        if name < start_topic:
            continue
        meta = topics.get(name)
        if not ctx.security.allows(acl.Operation.DESCRIBE, acl.ResourceType.TOPIC, name):
            if asked:  # named: refused; listing every topic: hidden, as Kafka hides it
                out.append(topic_type(
                    error_code=ErrorCode.topic_authorization_failed, name=name,
                    topic_id=uuid.UUID(int=0), is_internal=False, partitions=(),
                    topic_authorized_operations=authorized.NOT_REQUESTED))
            continue
        if meta is None:
            out.append(topic_type(
                error_code=error or ErrorCode.unknown_topic_or_partition, name=name,
                topic_id=uuid.UUID(int=0), is_internal=False, partitions=(),
                topic_authorized_operations=authorized.topic(ctx, True, name)))
            continue
        first = start_partition if name == start_topic else 0
        if limit == 0:
            next_cursor = cursor_type(topic_name=name, partition_index=first)
            break
        last = min(meta.partitions, first + limit)
        nodes = ctx.kafka_nodes()  # as Metadata names them
        leaders = {index: ctx.partition_node(name, index, nodes) for index in range(first, last)}
        partitions = tuple(partition_type(
            error_code=ErrorCode.none, partition_index=index, leader_id=leader,
            leader_epoch=0 if ctx.router is None else ctx.router.leader_epoch(name, index),
            replica_nodes=(leader,), isr_nodes=(leader,),
            eligible_leader_replicas=(), last_known_elr=(), offline_replicas=())
            for index, leader in leaders.items())
        limit -= len(partitions)
        out.append(topic_type(
            error_code=ErrorCode.none, name=name, topic_id=meta.topic_id,
            is_internal=meta.internal, partitions=partitions,
            topic_authorized_operations=authorized.topic(ctx, True, name)))
        if last < meta.partitions:
            next_cursor = cursor_type(topic_name=name, partition_index=last)
            break
    return messages.build(response_type, throttle_time=NO_TIME, topics=tuple(out),
                          next_cursor=next_cursor)


async def handle_elect_leaders(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ELECT_LEADERS, request.version)
    result_type = messages.nested(response_type, "ReplicaElectionResult")
    partition_type = messages.nested(response_type, "PartitionResult")
    election_type = getattr(body, "election_type", PREFERRED)  # v0 is preferred only
    if ctx.router is not None:
        return await cluster_partitions.elect_leaders(ctx, request, election_type, NO_TIME)
    if body.topic_partitions is None:
        # Every partition: Kafka reports only those an election changed, and on one broker
        # every partition already has its preferred (and only) leader.
        return messages.build(response_type, throttle_time=NO_TIME,
                              error_code=ErrorCode.none, replica_election_results=())
    asked: dict[str, set[int]] = {}
    for entry in body.topic_partitions:
        asked.setdefault(entry.topic, set()).update(entry.partitions)
    topics = await ctx.existing_topics(list(asked))

    def result(name: str, index: int) -> Any:
        if topics is None:
            return partition_type(partition_id=index, error_code=ErrorCode.request_timed_out,
                                  error_message="the broker did not answer")
        if election_type not in (PREFERRED, UNCLEAN):
            return partition_type(partition_id=index, error_code=ErrorCode.invalid_request,
                                  error_message=f"unknown election type {election_type}")
        missing = _partition_error(topics, name, index)
        if missing is not None:
            return partition_type(partition_id=index,
                                  error_code=ErrorCode.unknown_topic_or_partition,
                                  error_message=missing)
        return partition_type(partition_id=index, error_code=ErrorCode.election_not_needed,
                              error_message="Leader election not needed for topic partition")

    return messages.build(
        response_type, throttle_time=NO_TIME, error_code=ErrorCode.none,
        replica_election_results=tuple(
            result_type(topic=name, partition_result=tuple(
                result(name, index) for index in sorted(indexes)))
            for name, indexes in asked.items()))


async def handle_list_partition_reassignments(ctx: GatewayContext, request: Request) -> Any:
    if ctx.router is not None:
        return await cluster_partitions.list_reassignments(ctx, request, NO_TIME)
    # With one broker no reassignment is ever in progress, so the answer lists none.
    response_type = messages.response_type(apis.ApiKey.LIST_PARTITION_REASSIGNMENTS,
                                            request.version)
    return messages.build(response_type, throttle_time=NO_TIME, error_code=ErrorCode.none,
                          error_message=None, topics=())


async def handle_alter_partition_reassignments(ctx: GatewayContext, request: Request) -> Any:
    if ctx.router is not None:
        return await cluster_partitions.alter_reassignments(ctx, request, NO_TIME)
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ALTER_PARTITION_REASSIGNMENTS,
                                            request.version)
    topic_type = messages.nested(response_type, "ReassignableTopicResponse")
    partition_type = messages.nested(response_type, "ReassignablePartitionResponse")
    topics = await ctx.existing_topics([t.name for t in body.topics])

    def result(name: str, index: int, replicas: tuple[int, ...] | None) -> Any:
        if topics is None:
            return partition_type(partition_index=index, error_code=ErrorCode.request_timed_out,
                                  error_message="the broker did not answer")
        missing = _partition_error(topics, name, index)
        if missing is not None:
            return partition_type(partition_index=index,
                                  error_code=ErrorCode.unknown_topic_or_partition,
                                  error_message=missing)
        if replicas is None:  # cancel: there is never one in progress to cancel
            return partition_type(partition_index=index,
                                  error_code=ErrorCode.no_reassignment_in_progress,
                                  error_message=None)
        try:
            assignments.check_replicas([replicas], expected_factor=None)
        except assignments.AssignmentError as exc:
            return partition_type(partition_index=index, error_code=exc.code,
                                  error_message=str(exc))
        # The only valid target is the current placement, [0]: done at once.
        return partition_type(partition_index=index, error_code=ErrorCode.none,
                              error_message=None)

    return messages.build(
        response_type, throttle_time=NO_TIME, error_code=ErrorCode.none, error_message=None,
        responses=tuple(topic_type(name=t.name, partitions=tuple(
            result(t.name, p.partition_index, p.replicas) for p in t.partitions))
            for t in body.topics))


async def handle_alter_replica_log_dirs(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ALTER_REPLICA_LOG_DIRS, request.version)
    topic_type = messages.nested(response_type, "AlterReplicaLogDirTopicResult")
    partition_type = messages.nested(response_type, "AlterReplicaLogDirPartitionResult")
    topics = await ctx.existing_topics([t.name for d in body.dirs for t in d.topics])
    # Kafka answers per partition, each once, the last named dir winning.
    target: dict[tuple[str, int], str] = {}
    for log_dir in body.dirs:
        for topic in log_dir.topics:
            for index in topic.partitions:
                target[(topic.name, index)] = log_dir.path

    allowed = ctx.security.allows_cluster(acl.Operation.ALTER)

    def code(name: str, index: int) -> ErrorCode:
        if not allowed:
            return ErrorCode.cluster_authorization_failed
        if target[(name, index)] != LOG_DIR:
            return ErrorCode.log_dir_not_found
        if topics is None:
            return ErrorCode.request_timed_out
        if _partition_error(topics, name, index) is not None:
            return ErrorCode.replica_not_available
        return ErrorCode.none  # already there

    by_topic: dict[str, list[int]] = {}
    for name, index in target:
        by_topic.setdefault(name, []).append(index)
    return messages.build(response_type, throttle_time=NO_TIME, results=tuple(
        topic_type(topic_name=name, partitions=tuple(
            partition_type(partition_index=index, error_code=code(name, index))
            for index in sorted(indexes)))
        for name, indexes in by_topic.items()))


async def handle_describe_quorum(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_QUORUM, request.version)
    topic_type = messages.nested(response_type, "TopicData")
    partition_type = messages.nested(response_type, "PartitionData")
    replica_type = messages.nested(response_type, "ReplicaState")
    now_ms = int(time.time() * 1000)
    voter = messages.build(replica_type, replica_id=NODE_ID, replica_directory_id=uuid.UUID(int=0),
                           log_end_offset=0, last_fetch_timestamp=now_ms,
                           last_caught_up_timestamp=now_ms)

    def partition(name: str, index: int) -> Any:
        if name != METADATA_TOPIC or index != 0:
            return messages.build(
                partition_type, partition_index=index,
                error_code=ErrorCode.unknown_topic_or_partition,
                error_message=f"{name}-{index} is not the metadata partition", leader_id=-1,
                leader_epoch=-1, high_watermark=-1, current_voters=(), observers=())
        return messages.build(
            partition_type, partition_index=index, error_code=ErrorCode.none,
            error_message=None, leader_id=NODE_ID, leader_epoch=0, high_watermark=0,
            current_voters=(voter,), observers=())

    fields: dict[str, Any] = {}
    if request.version >= 2:  # v2 names each voter's listeners
        node_type = messages.nested(response_type, "Node")
        listener_type = messages.nested(response_type, "Listener")
        fields["nodes"] = (node_type(node_id=NODE_ID, listeners=tuple(
            listener_type(name=listener.name, host=listener.advertised_host,
                          port=listener.advertised_port)
            for listener in ctx.config.all_listeners())),)
    return messages.build(
        response_type, error_code=ErrorCode.none, error_message=None, topics=tuple(
            topic_type(topic_name=t.topic_name, partitions=tuple(
                partition(t.topic_name, p.partition_index) for p in t.partitions))
            for t in body.topics), **fields)
