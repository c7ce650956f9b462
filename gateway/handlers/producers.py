"""InitProducerId: ids for idempotent producers (the broker tracks their sequences)."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb


async def handle_init_producer_id(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.INIT_PRODUCER_ID, request.version)
    try:
        reply = await ctx.broker.call(BROKER.init_producer_id, pb.InitProducerIdRequest(
            transactional_id=body.transactional_id,
            producer_id=getattr(body, "producer_id", -1),
            producer_epoch=getattr(body, "producer_epoch", -1)))
        error, producer_id, epoch = ErrorCode(reply.error_code), reply.producer_id, \
            reply.producer_epoch
    except BrokerUnavailable:
        error, producer_id, epoch = ErrorCode.coordinator_not_available, -1, -1
    return response_type(throttle_time=datetime.timedelta(0), error_code=error,
                         producer_id=producer_id, producer_epoch=epoch)


async def handle_describe_producers(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    wanted = [pb.PartitionRef(topic=t.name, partition=p) for t in body.topics
              for p in t.partition_indexes]
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_PRODUCERS, request.version)
    topic_type = messages.nested(response_type, "TopicResponse")
    partition_type = messages.nested(response_type, "PartitionResponse")
    state_type = messages.nested(response_type, "ProducerState")
    try:
        reply = await ctx.broker.call(BROKER.describe_producers,
                                      pb.DescribeProducersRequest(partitions=wanted))
        found = {(p.partition.topic, p.partition.partition): p for p in reply.partitions}
    except BrokerUnavailable:
        found = {}

    def partition(topic: str, index: int) -> Any:
        answer = found.get((topic, index))
        if answer is None:
            return partition_type(partition_index=index, active_producers=(),
                                  error_code=ErrorCode.not_leader_or_follower)
        return partition_type(
            partition_index=index, error_code=ErrorCode(answer.error_code),
            error_message=answer.error_message or None, active_producers=tuple(
                state_type(producer_id=p.producer_id, producer_epoch=p.producer_epoch,
                           last_sequence=p.last_sequence, last_timestamp=-1,
                           coordinator_epoch=-1, current_txn_start_offset=-1)
                for p in answer.producers))

    return response_type(throttle_time=datetime.timedelta(0), topics=tuple(
        topic_type(name=t.name, partitions=tuple(partition(t.name, i)
                                                 for i in t.partition_indexes))
        for t in body.topics))
