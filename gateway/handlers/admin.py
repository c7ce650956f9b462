"""Topic and record admin: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords,
DescribeCluster. Replication factor 1 (or -1, the default) is the only one a single broker
has; manual assignments are accepted when they name it (see ``gateway.assignments``)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from gateway import assignments, authorized
from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

REPLICATION_FACTOR = 1  # one broker: every partition has one replica
TOPIC = acl.ResourceType.TOPIC


async def handle_create_topics(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.CREATE_TOPICS, request.version)
    result_type = messages.nested(response_type, "CreatableTopicResult")
    errors: dict[str, tuple[int, str]] = {}
    specs = []
    may_create_any = ctx.security.allows_cluster(acl.Operation.CREATE)
    for topic in body.topics:
        if not may_create_any and not ctx.security.allows(acl.Operation.CREATE, TOPIC,
                                                           topic.name):
            errors[topic.name] = (ErrorCode.topic_authorization_failed,
                                  "Authorization failed.")
            continue
        partitions = topic.num_partitions
        if topic.assignments:
            try:
                partitions = assignments.check_new_topic(
                    topic.num_partitions, topic.replication_factor,
                    [(a.partition_index, a.broker_ids) for a in topic.assignments])
            except assignments.AssignmentError as exc:
                errors[topic.name] = (exc.code, str(exc))
                continue
        specs.append(pb.TopicSpec(
            name=topic.name, partitions=partitions, replication_factor=(
                1 if topic.assignments else topic.replication_factor),
            configs={c.name: c.value for c in topic.configs if c.value is not None}))
    results: dict[str, pb.TopicResult] = {}
    if specs:
        try:
            reply = await ctx.broker.call(
                BROKER.create_topics,
                pb.CreateTopicsRequest(topics=specs, validate_only=body.validate_only))
            results = {r.name: r for r in reply.results}
        except BrokerUnavailable as exc:
            errors.update({s.name: (ErrorCode.request_timed_out, str(exc)) for s in specs})

    out = []
    for topic in body.topics:
        created = results.get(topic.name)
        if created is not None and not created.error_code:
            out.append(messages.build(
                result_type, name=topic.name, topic_id=uuid.UUID(bytes=created.topic_id),
                error_code=ErrorCode.none, error_message=None,
                num_partitions=created.partitions,
                replication_factor=created.replication_factor or 1, configs=()))
            continue
        code, message = errors.get(topic.name, (ErrorCode.unknown_server_error, "no result"))
        if created is not None:
            code, message = ErrorCode(created.error_code), created.error_message
        out.append(messages.build(
            result_type, name=topic.name, topic_id=uuid.UUID(int=0), error_code=ErrorCode(code),
            error_message=message, num_partitions=-1, replication_factor=-1, configs=None))
    return messages.build(response_type, throttle_time=datetime.timedelta(0), topics=tuple(out))


async def handle_delete_records(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    denied = {t.name for t in body.topics
              if not ctx.security.allows(acl.Operation.DELETE, TOPIC, t.name)}
    targets = [pb.DeleteRecordsRequestTarget(
        partition=pb.PartitionRef(topic=t.name, partition=p.partition_index), offset=p.offset)
        for t in body.topics if t.name not in denied for p in t.partitions]
    results: dict[tuple[str, int], pb.DeleteRecordsReplyResult] = {
        (t.name, p.partition_index): pb.DeleteRecordsReplyResult(
            low_watermark=-1, error_code=ErrorCode.topic_authorization_failed)
        for t in body.topics if t.name in denied for p in t.partitions}
    try:
        if targets:
            reply = await ctx.broker.call(BROKER.delete_records,
                                          pb.DeleteRecordsRequest(targets=targets))
            results.update({(r.partition.topic, r.partition.partition): r
                            for r in reply.results})
    except BrokerUnavailable:
        pass
    response_type = messages.response_type(apis.ApiKey.DELETE_RECORDS, request.version)
    topic_type = messages.nested(response_type, "DeleteRecordsTopicResult")
    partition_type = messages.nested(response_type, "DeleteRecordsPartitionResult")

    def result(name: str, index: int) -> Any:
        found = results.get((name, index))
        if found is None:
            return partition_type(partition_index=index, low_watermark=-1,
                                  error_code=ErrorCode.request_timed_out)
        return partition_type(partition_index=index, low_watermark=found.low_watermark,
                              error_code=ErrorCode(found.error_code))

    return messages.build(response_type, throttle_time=datetime.timedelta(0), topics=tuple(
        topic_type(name=t.name, partitions=tuple(result(t.name, p.partition_index)
                                                 for p in t.partitions))
        for t in body.topics))


async def handle_delete_topics(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    if hasattr(body, "topic_names"):  # v0-5: names only
        names, ids = list(body.topic_names), []
    else:  # v6: each topic by name or by id
        names = [t.name for t in body.topics if t.name]
        ids = [t.topic_id.bytes for t in body.topics if not t.name and t.topic_id]
    response_type = messages.response_type(apis.ApiKey.DELETE_TOPICS, request.version)
    result_type = messages.nested(response_type, "DeletableTopicResult")
    results = []
    if ids and ctx.security.settings.enabled:  # a topic named by id is checked by its name
        known = {meta.topic_id.bytes: meta.name for meta in ctx.topics_by_id.values()}
        if any(i not in known for i in ids):
            await ctx.existing_topics([])
            known = {meta.topic_id.bytes: meta.name for meta in ctx.topics_by_id.values()}
        for raw in ids:
            if raw in known and not ctx.security.allows(acl.Operation.DELETE, TOPIC,
                                                        known[raw]):
                results.append(pb.TopicResult(topic_id=raw,
                                              error_code=ErrorCode.topic_authorization_failed))
        ids = [i for i in ids if i not in {r.topic_id for r in results}]
    results += [pb.TopicResult(name=n, error_code=ErrorCode.topic_authorization_failed)
                for n in names if not ctx.security.allows(acl.Operation.DELETE, TOPIC, n)]
    names = [n for n in names if ctx.security.allows(acl.Operation.DELETE, TOPIC, n)]
    try:
        if names or ids:
            reply = await ctx.broker.call(BROKER.delete_topics, pb.DeleteTopicsRequest(
                names=names, topic_ids=ids))
            results += reply.results
    except BrokerUnavailable as exc:
        results += [pb.TopicResult(name=n, error_code=ErrorCode.request_timed_out,
                                   error_message=str(exc)) for n in names]
    for result in results:
        if result.topic_id:
            ctx.topics_by_id.pop(uuid.UUID(bytes=result.topic_id), None)
    return messages.build(response_type, throttle_time=datetime.timedelta(0), responses=tuple(
        # By id (v6) a result may have no name (null); by name it always has one, even "".
        messages.build(result_type, name=r.name if r.name or not r.topic_id else None,
                       topic_id=uuid.UUID(bytes=r.topic_id) if r.topic_id else uuid.UUID(int=0),
                       error_code=ErrorCode(r.error_code), error_message=r.error_message or None)
        for r in results))


async def handle_create_partitions(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.CREATE_PARTITIONS, request.version)
    result_type = messages.nested(response_type, "CreatePartitionsTopicResult")
    errors: dict[str, tuple[ErrorCode, str | None]] = {}
    targets = []
    with_assignments = [t.name for t in body.topics if t.assignments]
    found = (await ctx.existing_topics(with_assignments) or {}) if with_assignments else {}
    current = {name: meta.partitions for name, meta in found.items()}
    for topic in body.topics:
        if not ctx.security.allows(acl.Operation.ALTER, TOPIC, topic.name):
            errors[topic.name] = (ErrorCode.topic_authorization_failed,
                                  "Topic authorization failed.")
            continue
        if topic.assignments:
            try:
                if topic.name not in current:
                    raise assignments.AssignmentError(
                        ErrorCode.unknown_topic_or_partition,
                        f"The topic '{topic.name}' does not exist.")
                assignments.check_added_partitions(
                    current[topic.name], topic.count, REPLICATION_FACTOR,
                    [a.broker_ids for a in topic.assignments])
            except assignments.AssignmentError as exc:
                errors[topic.name] = (exc.code, str(exc))
                continue
        targets.append(pb.CreatePartitionsRequestTarget(topic=topic.name, count=topic.count))
    if targets:
        try:
            reply = await ctx.broker.call(BROKER.create_partitions, pb.CreatePartitionsRequest(
                targets=targets, validate_only=body.validate_only))
            errors.update({r.name: (ErrorCode(r.error_code), r.error_message or None)
                           for r in reply.results})
        except BrokerUnavailable as exc:
            errors.update({t.topic: (ErrorCode.request_timed_out, str(exc)) for t in targets})
    return messages.build(response_type, throttle_time=datetime.timedelta(0), results=tuple(
        result_type(name=t.name, error_code=errors.get(t.name, (ErrorCode.none, None))[0],
                    error_message=errors.get(t.name, (ErrorCode.none, None))[1])
        for t in body.topics))


async def handle_describe_cluster(ctx: GatewayContext, request: Request) -> Any:
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_CLUSTER, request.version)
    broker_type = messages.nested(response_type, "DescribeClusterBroker")
    nodes = ctx.kafka_nodes()
    return messages.build(
        response_type, throttle_time=datetime.timedelta(0), error_code=ErrorCode.none,
        error_message=None, endpoint_type=1, cluster_id=ctx.config.cluster_id,
        controller_id=nodes[0][0], brokers=tuple(messages.build(
            broker_type, broker_id=node, host=host, port=port, rack=None,
            is_fenced=False) for node, host, port in nodes),
        cluster_authorized_operations=authorized.cluster(
            ctx, request.body.include_cluster_authorized_operations))
