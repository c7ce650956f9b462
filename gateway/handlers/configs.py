"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: topic configs live in the broker.

Schema Registry checks ``cleanup.policy`` of ``_schemas`` through DescribeConfigs; admin tools
read every config with its source (topic override, broker default) and alter them at run time.
"""

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

SENSITIVE_NAMES = ("password", "secret", "sasl.jaas")


async def handle_describe(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_CONFIGS, request.version)
    result_type = messages.nested(response_type, "DescribeConfigsResult")
    entry_type = messages.nested(response_type, "DescribeConfigsResourceResult")
    # Each resource once however often it is named: a 5-byte entry answers with every config
    # of a topic, so repeats would let a small request build a response of gigabytes.
    resources = list({(r.resource_type, r.resource_name): r for r in body.resources}.values())
    broker_request = pb.DescribeConfigsRequest(resources=[
        pb.DescribeConfigsRequestResource(type=r.resource_type, name=r.resource_name,
                                          keys=list(r.configuration_keys or ()))
        for r in resources])
    try:
        reply = await ctx.broker.call(BROKER.describe_configs, broker_request)
        found = list(reply.resources)
    except BrokerUnavailable as exc:
        found = [pb.DescribeConfigsReplyResource(
            type=r.resource_type, name=r.resource_name,
            error_code=ErrorCode.request_timed_out, error_message=str(exc))
            for r in resources]
    results = []
    for resource in found:
        entries = tuple(
            messages.build(entry_type, name=e.name,
                           value=None if _sensitive(e.name) else e.value,
                           read_only=e.read_only, config_source=e.source,
                           is_default=e.source == 5, is_sensitive=_sensitive(e.name),
                           synonyms=(), config_type=0, documentation=None)
            for e in resource.entries)
        results.append(messages.build(
            result_type, error_code=ErrorCode(resource.error_code),
            error_message=resource.error_message or None, resource_type=resource.type,
            resource_name=resource.name, configs=entries))
    return messages.build(response_type, throttle_time=datetime.timedelta(0),
                          results=tuple(results))


def _sensitive(name: str) -> bool:
    return any(word in name for word in SENSITIVE_NAMES)


TOPIC_RESOURCE = 2


async def handle_alter(ctx: GatewayContext, request: Request) -> Any:
    """AlterConfigs (legacy: the given configs replace the topic's whole set)."""
    body = request.body
    resources = [pb.AlterConfigsRequestResource(
        type=r.resource_type, name=r.resource_name, replace_all=True,
        ops=[pb.AlterConfigsRequestOp(name=c.name, value=c.value, op=0) for c in r.configs
             if c.value is not None]) for r in body.resources]
    return await _alter(ctx, request, apis.ApiKey.ALTER_CONFIGS, resources)


async def handle_incremental_alter(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    resources = [pb.AlterConfigsRequestResource(
        type=r.resource_type, name=r.resource_name,
        ops=[pb.AlterConfigsRequestOp(name=c.name, value=c.value, op=c.config_operation)
             for c in r.configs]) for r in body.resources]
    return await _alter(ctx, request, apis.ApiKey.INCREMENTAL_ALTER_CONFIGS, resources)


async def _alter(ctx: GatewayContext, request: Request, api: int,
                 resources: list[pb.AlterConfigsRequestResource]) -> Any:
    response_type = messages.response_type(api, request.version)
    answer_type = messages.nested(response_type, "AlterConfigsResourceResponse")
    try:
        reply = await ctx.broker.call(
            BROKER.alter_configs,
            pb.AlterConfigsRequest(resources=resources, validate_only=request.body.validate_only))
        answers = [(ErrorCode(r.error_code), r.error_message or None, r.type, r.name)
                   for r in reply.resources]
        for r in resources:
            if r.type == TOPIC_RESOURCE:  # schema validation may just have been switched
                ctx.topic_settings.forget(r.name)
    except BrokerUnavailable as exc:
        answers = [(ErrorCode.request_timed_out, str(exc), r.type, r.name) for r in resources]
    return messages.build(response_type, throttle_time=datetime.timedelta(0), responses=tuple(
        answer_type(error_code=code, error_message=message, resource_type=kind,
                    resource_name=name) for code, message, kind, name in answers))
