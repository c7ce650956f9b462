"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics, the broker, its
loggers and groups; the configs live in the broker (``broker.config_service``).

Schema Registry checks ``cleanup.policy`` of ``_schemas`` through DescribeConfigs; admin tools
read every config with its type, source, synonyms and documentation, and alter dynamic ones
at run time. The listener configs are the gateway's own facts, added here.
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway import access
from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

SENSITIVE_NAMES = ("password", "secret", "sasl.jaas")


async def handle_describe(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_CONFIGS, request.version)
    result_type = messages.nested(response_type, "DescribeConfigsResult")
    entry_type = messages.nested(response_type, "DescribeConfigsResourceResult")
    synonym_type = (messages.nested(response_type, "DescribeConfigsSynonym")
                    if request.version >= 1 else None)
    # Each resource once however often it is named: a 5-byte entry answers with every config
    # of a topic, so repeats would let a small request build a response of gigabytes.
    resources = list({(r.resource_type, r.resource_name): r for r in body.resources}.values())
    found = []
    for r in resources:
        refused = _refusal(ctx, acl.Operation.DESCRIBE_CONFIGS, r.resource_type,
                           r.resource_name)
        if refused is not None:
            found.append(pb.DescribeConfigsReplyResource(
                type=r.resource_type, name=r.resource_name, error_code=refused,
                error_message=access.message(refused)))
    resources = [r for r in resources if not any(
        f.type == r.resource_type and f.name == r.resource_name for f in found)]
    broker_request = pb.DescribeConfigsRequest(resources=[
        pb.DescribeConfigsRequestResource(type=r.resource_type, name=r.resource_name,
                                          keys=list(r.configuration_keys or ()))
        for r in resources])
    try:
        if resources:
            reply = await ctx.broker.call(BROKER.describe_configs, broker_request)
            found += reply.resources
    except BrokerUnavailable as exc:
        found += [pb.DescribeConfigsReplyResource(
            type=r.resource_type, name=r.resource_name,
            error_code=ErrorCode.request_timed_out, error_message=str(exc))
            for r in resources]
    asked = {(r.resource_type, r.resource_name): r for r in resources}
    with_synonyms = bool(getattr(body, "include_synonyms", False))
    with_docs = bool(getattr(body, "include_documentation", False))
    results = []
    for resource in found:
        entries = list(resource.entries)
        if resource.type == BROKER_RESOURCE and resource.name == "0" and not resource.error_code:
            wanted = asked.get((resource.type, resource.name))
            keys = set(wanted.configuration_keys or ()) if wanted is not None else set()
            entries += [e for e in _listener_entries(ctx) if not keys or e.name in keys]
        results.append(messages.build(
            result_type, error_code=ErrorCode(resource.error_code),
            error_message=resource.error_message or None, resource_type=resource.type,
            resource_name=resource.name, configs=tuple(
                _entry(entry_type, synonym_type, e, with_synonyms, with_docs)
                for e in entries)))
    return messages.build(response_type, throttle_time=datetime.timedelta(0),
                          results=tuple(results))


def _entry(entry_type: type, synonym_type: type | None, e: pb.ConfigEntry,
           with_synonyms: bool, with_docs: bool) -> Any:
    sensitive = _sensitive(e.name)
    synonyms: tuple[Any, ...] = ()
    if with_synonyms and synonym_type is not None:
        synonyms = tuple(synonym_type(name=s.name, value=None if sensitive else s.value,
                                      source=s.source) for s in e.synonyms)
    return messages.build(
        entry_type, name=e.name, value=None if sensitive else e.value, read_only=e.read_only,
        config_source=e.source, is_default=e.source == SOURCE_DEFAULT,
        is_sensitive=sensitive, synonyms=synonyms, config_type=e.config_type,
        documentation=(e.documentation or None) if with_docs else None)


def _listener_entries(ctx: GatewayContext) -> list[pb.ConfigEntry]:
    """Broker configs whose facts the gateway holds: kelp's Kafka node is the gateway."""
    config = ctx.config
    listeners = config.all_listeners()
    static = [
        ("listeners", ",".join(li.url() for li in listeners), 7,
         "The addresses the Kafka listeners bind."),
        ("advertised.listeners", ",".join(li.url(advertised=True) for li in listeners), 7,
         "The address given to clients in Metadata, per listener."),
        ("listener.security.protocol.map",
         ",".join(f"{li.name}:{li.protocol}" for li in listeners), 7,
         "Each listener's security protocol."),
        ("sasl.enabled.mechanisms", ",".join(config.sasl_mechanisms), 7,
         "The SASL mechanisms SASL listeners accept."),
        ("connections.max.reauth.ms", str(config.connections_max_reauth_ms), 5,
         "How long a SASL session lasts before the client must re-authenticate (0: forever)."),
        ("super.users", ";".join(sorted(config.authorizer.super_users)), 7,
         "Principals the authorizer allows everything."),
        ("allow.everyone.if.no.acl.found",
         str(config.authorizer.allow_everyone_if_no_acl_found).lower(), 1,
         "Whether a resource no ACL names is open to everyone."),
        ("auto.create.topics.enable", str(config.auto_create_topics).lower(), 1,
         "Whether Metadata and Produce create a topic that does not exist."),
        ("max.connections", str(config.max_connections), 3,
         "Client connections served at once; more wait to be accepted."),
        ("socket.request.max.bytes", str(config.max_request_bytes), 3,
         "Largest request a client may send."),
        ("queued.max.request.bytes", str(config.queued_max_request_bytes), 5,
         "Request bytes held across all connections before reading pauses."),
        ("connections.max.idle.ms", str(config.connections_max_idle_ms), 5,
         "An idle connection is closed after this long."),
    ]
    return [pb.ConfigEntry(name=name, value=value, source=SOURCE_STATIC, read_only=True,
                           config_type=config_type, documentation=doc,
                           synonyms=[pb.ConfigSynonym(name=name, value=value,
                                                      source=SOURCE_STATIC)])
            for name, value, config_type, doc in static]


def _sensitive(name: str) -> bool:
    return any(word in name for word in SENSITIVE_NAMES)


TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
GROUP_RESOURCE = 32
SOURCE_STATIC, SOURCE_DEFAULT = 4, 5


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


def _refusal(ctx: GatewayContext, operation: acl.Operation, kind: int,
             name: str) -> ErrorCode | None:
    """Kafka: DESCRIBE_CONFIGS / ALTER_CONFIGS on the topic or group, or on the cluster for
    the broker and its loggers."""
    if kind == TOPIC_RESOURCE:
        resource, code = acl.ResourceType.TOPIC, ErrorCode.topic_authorization_failed
    elif kind == GROUP_RESOURCE:
        resource, code = acl.ResourceType.GROUP, ErrorCode.group_authorization_failed
    else:
        resource, code = acl.ResourceType.CLUSTER, ErrorCode.cluster_authorization_failed
        name = acl.CLUSTER_NAME
    return None if ctx.security.allows(operation, resource, name) else code


async def _alter(ctx: GatewayContext, request: Request, api: int,
                 resources: list[pb.AlterConfigsRequestResource]) -> Any:
    response_type = messages.response_type(api, request.version)
    answer_type = messages.nested(response_type, "AlterConfigsResourceResponse")
    answers = []
    for r in resources:
        refused = _refusal(ctx, acl.Operation.ALTER_CONFIGS, r.type, r.name)
        if refused is not None:
            answers.append((refused, access.message(refused), r.type, r.name))
    resources = [r for r in resources if not any(
        kind == r.type and name == r.name for _, _, kind, name in answers)]
    try:
        if resources:
            reply = await ctx.broker.call(
                BROKER.alter_configs, pb.AlterConfigsRequest(
                    resources=resources, validate_only=request.body.validate_only))
            answers += [(ErrorCode(r.error_code), r.error_message or None, r.type, r.name)
                        for r in reply.resources]
        for r in resources:
            if r.type == TOPIC_RESOURCE:  # schema validation may just have been switched
                ctx.topic_settings.forget(r.name)
    except BrokerUnavailable as exc:
        answers += [(ErrorCode.request_timed_out, str(exc), r.type, r.name) for r in resources]
    return messages.build(response_type, throttle_time=datetime.timedelta(0), responses=tuple(
        answer_type(error_code=code, error_message=message, resource_type=kind,
                    resource_name=name) for code, message, kind, name in answers))
