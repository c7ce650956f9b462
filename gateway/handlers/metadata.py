"""Metadata: this gateway (at its advertised address) leads every partition; in a cluster every
live gateway is a node and the partitions are spread over them (any gateway serves any)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from gateway import authorized
from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext, TopicMeta
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl

DESCRIBE, CREATE, TOPIC = acl.Operation.DESCRIBE, acl.Operation.CREATE, acl.ResourceType.TOPIC


async def handle(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    if body.topics is None or (request.version == 0 and not body.topics):
        names: list[str] = []  # all topics (v0 spells "all" as an empty list)
    else:
        names = [t.name for t in body.topics if t.name is not None]
        if not names and not any(getattr(t, "topic_id", None) for t in body.topics):
            return build_response(ctx, request, [])
        for wanted in body.topics:  # v10+ may name topics by id
            if wanted.name is None and getattr(wanted, "topic_id", None) is not None:
                meta = await ctx.topic_by_id(wanted.topic_id)
                if meta is not None:
                    names.append(meta.name)
        # Kafka answers each topic once however often it is named: without this, one small
        # request naming a many-partition topic 100,000 times builds a response of gigabytes.
        names = list(dict.fromkeys(names))
    auto_create = getattr(body, "allow_auto_topic_creation", True) and ctx.config.auto_create_topics
    security = ctx.security
    # Kafka: a topic the principal may not DESCRIBE is hidden from a listing of all topics,
    # and answered TOPIC_AUTHORIZATION_FAILED when named; a missing topic is created only
    # with CREATE on the cluster or on the topic.
    refused = [n for n in names if not security.allows(DESCRIBE, TOPIC, n)]
    creatable = [n for n in names if n not in refused and (
        security.allows_cluster(CREATE) or security.allows(CREATE, TOPIC, n))]
    others = [n for n in names if n not in refused and n not in creatable]
    try:
        described = []
        if creatable or not names:
            described += await ctx.describe_topics(creatable, auto_create=bool(names)
                                                   and auto_create)
        if others:
            described += await ctx.describe_topics(others)
    except BrokerUnavailable:
        described = [(ErrorCode.leader_not_available, TopicMeta(n, uuid.UUID(int=0), 0, False))
                     for n in names if n not in refused]
    if not names:
        described = [(code, meta) for code, meta in described
                     if meta is not None and security.allows(DESCRIBE, TOPIC, meta.name)]
    described += [(ErrorCode.topic_authorization_failed,
                   TopicMeta(n, uuid.UUID(int=0), 0, False)) for n in refused]
    return build_response(ctx, request, described)


def build_response(ctx: GatewayContext, request: Request,
                   described: list[tuple[ErrorCode, TopicMeta | None]]) -> Any:
    response_type = messages.response_type(apis.ApiKey.METADATA, request.version)
    topic_requested = getattr(request.body, "include_topic_authorized_operations", False)
    cluster_operations = authorized.cluster(
        ctx, getattr(request.body, "include_cluster_authorized_operations", False))
    broker_type = messages.nested(response_type, "MetadataResponseBroker")
    topic_type = messages.nested(response_type, "MetadataResponseTopic")
    partition_type = messages.nested(response_type, "MetadataResponsePartition")
    nodes = ctx.kafka_nodes()
    topics = []
    for error, meta in described:
        assert meta is not None
        # In a cluster, each partition's real leader epoch: a client that was told
        # NOT_LEADER_OR_FOLLOWER sees a newer epoch once the lead moved, and fetches again at
        # once (KIP-320) instead of waiting for a metadata it would believe.
        router = ctx.router
        leaders = [ctx.partition_node(meta.name, index, nodes)
                   for index in range(meta.partitions)]
        partitions = tuple(
            messages.build(partition_type, error_code=ErrorCode.none, partition_index=index,
                           leader_id=leader, leader_epoch=0 if router is None
                           else router.leader_epoch(meta.name, index),
                           replica_nodes=(leader,), isr_nodes=(leader,), offline_replicas=())
            for index, leader in enumerate(leaders)
        )
        topics.append(messages.build(
            topic_type, error_code=error, name=meta.name, topic_id=meta.topic_id,
            is_internal=meta.internal, partitions=partitions,
            topic_authorized_operations=authorized.topic(ctx, topic_requested, meta.name)))
    brokers = tuple(messages.build(broker_type, node_id=node, host=host, port=port, rack=None)
                    for node, host, port in nodes)
    return messages.build(
        response_type, throttle_time=datetime.timedelta(0), brokers=brokers,
        cluster_id=ctx.config.cluster_id, controller_id=nodes[0][0], topics=tuple(topics),
        cluster_authorized_operations=cluster_operations, error_code=ErrorCode.none)
