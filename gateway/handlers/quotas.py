"""DescribeClientQuotas (48) and AlterClientQuotas (49): the quotas live in the broker
(``broker.quotas``); this gateway enforces them (``gateway.quotas``) and reads them again at
once after an alteration it passed on."""

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

NO_TIME = datetime.timedelta(0)


async def handle_describe(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_CLIENT_QUOTAS, request.version)
    entry_type = messages.nested(response_type, "EntryData")
    entity_type = messages.nested(response_type, "EntityData")
    value_type = messages.nested(response_type, "ValueData")
    try:
        reply = await ctx.broker.call(BROKER.describe_client_quotas, pb.DescribeClientQuotasRequest(
            components=[pb.DescribeClientQuotasRequestFilter(
                entity_type=c.entity_type, match_type=c.match_type, match=c.match)
                for c in body.components], strict=body.strict))
    except BrokerUnavailable as exc:
        return messages.build(response_type, throttle_time=NO_TIME,
                              error_code=ErrorCode.request_timed_out, error_message=str(exc),
                              entries=None)
    if reply.error_code:
        return messages.build(response_type, throttle_time=NO_TIME,
                              error_code=ErrorCode(reply.error_code),
                              error_message=reply.error_message, entries=None)
    return messages.build(
        response_type, throttle_time=NO_TIME, error_code=ErrorCode.none, error_message=None,
        entries=tuple(entry_type(
            entity=tuple(entity_type(entity_type=p.type, entity_name=p.name) for p in e.entity),
            values=tuple(value_type(key=v.key, value=v.value) for v in e.values))
            for e in reply.entries))


async def handle_alter(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ALTER_CLIENT_QUOTAS, request.version)
    entry_type = messages.nested(response_type, "EntryData")
    entity_type = messages.nested(response_type, "EntityData")
    entries = [pb.AlterClientQuotasRequestEntry(
        entity=[pb.QuotaEntityPart(type=e.entity_type, name=e.entity_name) for e in entry.entity],
        ops=[pb.AlterClientQuotasRequestOp(key=o.key, value=o.value, remove=o.remove)
             for o in entry.ops]) for entry in body.entries]
    if not ctx.security.allows_cluster(acl.Operation.ALTER_CONFIGS):
        return messages.build(response_type, throttle_time=NO_TIME, entries=tuple(
            entry_type(error_code=ErrorCode.cluster_authorization_failed,
                       error_message="Cluster authorization failed.", entity=tuple(
                           entity_type(entity_type=e.entity_type, entity_name=e.entity_name)
                           for e in entry.entity))
            for entry in body.entries))
    try:
        reply = await ctx.broker.call(BROKER.alter_client_quotas, pb.AlterClientQuotasRequest(
            entries=entries, validate_only=body.validate_only))
        results = [(ErrorCode(r.error_code), r.error_message or None) for r in reply.results]
        ctx.quotas.changed()
    except BrokerUnavailable as exc:
        results = [(ErrorCode.request_timed_out, str(exc))] * len(entries)
    return messages.build(response_type, throttle_time=NO_TIME, entries=tuple(
        entry_type(error_code=code, error_message=message, entity=tuple(
            entity_type(entity_type=e.entity_type, entity_name=e.entity_name)
            for e in entry.entity))
        for (code, message), entry in zip(results, body.entries, strict=True)))
