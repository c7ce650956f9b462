"""InitProducerId: ids for idempotent producers (the broker tracks their sequences)."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import COORDINATOR_UNREACHABLE, GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb


async def handle_init_producer_id(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.INIT_PRODUCER_ID, request.version)
    refused = _init_refusal(ctx, body.transactional_id)
    if refused is not None:
        return response_type(throttle_time=datetime.timedelta(0), error_code=refused,
                             producer_id=-1, producer_epoch=-1)
    request_message = pb.InitProducerIdRequest(
        transactional_id=body.transactional_id,
        producer_id=getattr(body, "producer_id", -1),
        producer_epoch=getattr(body, "producer_epoch", -1),
        transaction_timeout_ms=int(body.transaction_timeout.total_seconds() * 1000))
    try:
        if body.transactional_id is not None:  # the transaction coordinator's
            reply = await ctx.coordinator().call(BROKER.init_producer_id, request_message)
        else:  # any broker hands out ids (in a cluster, from blocks reserved in etcd)
            reply = await ctx.any_broker_call(BROKER.init_producer_id, request_message)
        error, producer_id, epoch = ErrorCode(reply.error_code), reply.producer_id, \
            reply.producer_epoch
        if error == ErrorCode.producer_fenced and request.version < 4:
            error = ErrorCode.invalid_producer_epoch  # PRODUCER_FENCED came with v4 (KIP-588)
    except BrokerUnavailable:
        error, producer_id, epoch = COORDINATOR_UNREACHABLE, -1, -1
    return response_type(throttle_time=datetime.timedelta(0), error_code=error,
                         producer_id=producer_id, producer_epoch=epoch)


def _init_refusal(ctx: GatewayContext, transactional_id: str | None) -> ErrorCode | None:
    """Kafka: WRITE on the transactional id; an idempotent producer needs IDEMPOTENT_WRITE on
    the cluster or WRITE on some topic (KIP-679)."""
    security = ctx.security
    if transactional_id is not None:
        if not security.allows(acl.Operation.WRITE, acl.ResourceType.TRANSACTIONAL_ID,
                               transactional_id):
            return ErrorCode.transactional_id_authorization_failed
        return None
    if security.allows_cluster(acl.Operation.IDEMPOTENT_WRITE) or security.allows_any(
            acl.Operation.WRITE, acl.ResourceType.TOPIC):
        return None
    return ErrorCode.cluster_authorization_failed


async def handle_describe_producers(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    denied = {t.name for t in body.topics
              if not ctx.security.allows(acl.Operation.READ, acl.ResourceType.TOPIC, t.name)}
    wanted = [pb.PartitionRef(topic=t.name, partition=p) for t in body.topics
              if t.name not in denied for p in t.partition_indexes]
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_PRODUCERS, request.version)
    topic_type = messages.nested(response_type, "TopicResponse")
    partition_type = messages.nested(response_type, "PartitionResponse")
    state_type = messages.nested(response_type, "ProducerState")
    found = {(t.name, i): pb.DescribeProducersReplyPartition(
        error_code=ErrorCode.topic_authorization_failed)
        for t in body.topics if t.name in denied for i in t.partition_indexes}
    try:
        if wanted:
            reply = await ctx.broker.call(BROKER.describe_producers,
                                          pb.DescribeProducersRequest(partitions=wanted))
            found.update({(p.partition.topic, p.partition.partition): p
                          for p in reply.partitions})
    except BrokerUnavailable:
        pass

    def partition(topic: str, index: int) -> Any:
        answer = found.get((topic, index))
        if answer is None:
            return partition_type(partition_index=index, active_producers=(),
                                  error_code=ErrorCode.not_leader_or_follower)
        return partition_type(
            partition_index=index, error_code=ErrorCode(answer.error_code),
            error_message=answer.error_message or None, active_producers=tuple(
                state_type(producer_id=p.producer_id, producer_epoch=p.producer_epoch,
                           last_sequence=p.last_sequence, last_timestamp=p.last_timestamp,
                           coordinator_epoch=-1,
                           current_txn_start_offset=p.current_txn_start_offset)
                for p in answer.producers))

    return response_type(throttle_time=datetime.timedelta(0), topics=tuple(
        topic_type(name=t.name, partitions=tuple(partition(t.name, i)
                                                 for i in t.partition_indexes))
        for t in body.topics))
