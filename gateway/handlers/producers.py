"""InitProducerId: ids for idempotent producers (the broker tracks their sequences)."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp.rpc.broker import v1 as pb


async def handle_init_producer_id(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.INIT_PRODUCER_ID, request.version)
    try:
        reply = await ctx.broker.call("InitProducerId", pb.InitProducerIdRequest(
            transactional_id=body.transactional_id,
            producer_id=getattr(body, "producer_id", -1),
            producer_epoch=getattr(body, "producer_epoch", -1)), pb.InitProducerIdReply)
        error, producer_id, epoch = ErrorCode(reply.error_code), reply.producer_id, \
            reply.producer_epoch
    except BrokerUnavailable:
        error, producer_id, epoch = ErrorCode.coordinator_not_available, -1, -1
    return response_type(throttle_time=datetime.timedelta(0), error_code=error,
                         producer_id=producer_id, producer_epoch=epoch)
