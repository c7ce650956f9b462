"""SASL (SaslHandshake 17, SaslAuthenticate 36), ACLs (DescribeAcls 29, CreateAcls 30,
DeleteAcls 31) and SCRAM users (DescribeUserScramCredentials 50, AlterUserScramCredentials 51).

The SASL handlers change the connection's session (``gateway.security.Session``); the server
lets nothing but ApiVersions and these two through until it is authenticated. Users and ACLs
live in the broker; a change made here is answered once this gateway enforces it.
"""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

import trio
from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from gateway.sasl import Exchange, SaslFailed
from gateway.security import session as security_session
from kelp import acl, scram
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

NO_TIME = datetime.timedelta(0)
# Kafka's connection.failed.authentication.delay.ms: a failed attempt is answered this late,
# which slows password guessing over one connection.
FAILED_AUTHENTICATION_DELAY_S = 0.1


class _IllegalState(SaslFailed):
    """A SASL request out of turn (ILLEGAL_SASL_STATE)."""


def _response(request: Request, **fields: Any) -> Any:
    return messages.build(messages.response_type(request.api_key, request.version), **fields)


async def _done(value: Any) -> Any:
    return value


def handle_handshake(ctx: GatewayContext, request: Request) -> Any:
    """Synchronous on purpose: after a v0 handshake the next frame is a bare SASL token, so
    the session must know before the read loop looks at it."""
    session = security_session()
    enabled = ctx.config.sasl_mechanisms
    mechanism = request.body.mechanism
    error = ErrorCode.none
    if not session.sasl or session.exchange is not None:
        error = ErrorCode.illegal_sasl_state
    elif mechanism not in enabled:
        error = ErrorCode.unsupported_sasl_mechanism
    elif session.mechanism is not None and mechanism != session.mechanism:
        error = ErrorCode.illegal_sasl_state  # re-authentication keeps its mechanism
    if error:
        session.close_after_answer = session.sasl
    else:
        session.mechanism = mechanism
        session.exchange = Exchange(mechanism, ctx.security.lookup)
        session.raw_tokens = request.version == 0
    return _done(_response(request, error_code=error, mechanisms=tuple(enabled)))


async def handle_authenticate(ctx: GatewayContext, request: Request) -> Any:
    session = security_session()
    try:
        token = await authenticate_step(ctx, request.body.auth_bytes)
    except SaslFailed as exc:
        return _response(request, error_code=(
            ErrorCode.illegal_sasl_state if isinstance(exc, _IllegalState)
            else ErrorCode.sasl_authentication_failed), error_message=str(exc),
            auth_bytes=b"", session_lifetime=NO_TIME)
    lifetime = NO_TIME
    if session.authenticated and session.expires_at is not None:
        lifetime = datetime.timedelta(milliseconds=ctx.config.connections_max_reauth_ms)
    return _response(request, error_code=ErrorCode.none, error_message=None, auth_bytes=token,
                     session_lifetime=lifetime)


async def authenticate_step(ctx: GatewayContext, token: bytes) -> bytes:
    """One SASL token of the current session (SaslAuthenticate's, or a bare v0 token).
    Raises SaslFailed, after which the connection is answered and closed."""
    session = security_session()
    exchange = session.exchange
    if exchange is None:
        session.close_after_answer = True
        raise _IllegalState("Unexpected SaslAuthenticate: no SASL handshake in progress")
    try:
        reply = await trio.to_thread.run_sync(exchange.step, token)
    except SaslFailed:
        session.exchange = None
        session.close_after_answer = True
        ctx.security.authentication_failures += 1
        await trio.sleep(FAILED_AUTHENTICATION_DELAY_S)
        raise
    if exchange.complete:
        principal = "User:" + (exchange.user or "")
        session.exchange = None
        session.raw_tokens = False
        if session.authenticated and session.principal != principal:
            session.close_after_answer = True
            raise SaslFailed(f"Cannot change principals during re-authentication from "
                             f"{session.principal}: {principal}")
        session.principal = principal
        session.authenticated = True
        ctx.security.authentications += 1
        reauth_ms = ctx.config.connections_max_reauth_ms
        session.expires_at = trio.current_time() + reauth_ms / 1000 if reauth_ms else None
    return reply


# -- ACLs ----------------------------------------------------------------------------------

def _acl_refusal(ctx: GatewayContext, operation: acl.Operation) -> tuple[ErrorCode, str] | None:
    if not ctx.security.settings.enabled:
        return ErrorCode.security_disabled, "No Authorizer is configured."
    if not ctx.security.allows_cluster(operation):
        return ErrorCode.cluster_authorization_failed, "Cluster authorization failed."
    return None


async def _fresh(ctx: GatewayContext) -> None:
    """Catch up with the broker now (a change made through another gateway a moment ago)."""
    snapshot = await ctx.broker.call(BROKER.get_security,
                                     pb.GetSecurityRequest(known_version=0, wait_ms=0))
    if snapshot.version > ctx.security.version:
        ctx.security.apply(snapshot)


async def handle_describe_acls(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    refusal = _acl_refusal(ctx, acl.Operation.DESCRIBE)
    if refusal is not None:
        return _response(request, throttle_time=NO_TIME, error_code=refusal[0],
                         error_message=refusal[1], resources=())
    try:
        wanted = acl.Filter(
            acl.ResourceType(body.resource_type_filter), body.resource_name_filter,
            acl.PatternType(getattr(body, "pattern_type_filter", acl.PatternType.LITERAL)),
            body.principal_filter, body.host_filter, acl.Operation(body.operation),
            acl.Permission(body.permission_type))
        acl.check_filter(wanted)
        await _fresh(ctx)
    except (ValueError, acl.InvalidAcl) as exc:
        return _response(request, throttle_time=NO_TIME, error_code=ErrorCode.invalid_request,
                         error_message=str(exc), resources=())
    except BrokerUnavailable as exc:
        return _response(request, throttle_time=NO_TIME, error_code=ErrorCode.request_timed_out,
                         error_message=str(exc), resources=())
    response_type = messages.response_type(request.api_key, request.version)
    resource_type = messages.nested(response_type, "DescribeAclsResource")
    description_type = messages.nested(response_type, "AclDescription")
    grouped: dict[tuple[int, str, int], list[Any]] = {}
    for binding in ctx.security.authorizer.bindings:
        if wanted.matches(binding):
            grouped.setdefault(
                (binding.resource_type, binding.resource_name, binding.pattern_type), []
            ).append(description_type(principal=binding.principal, host=binding.host,
                                      operation=binding.operation,
                                      permission_type=binding.permission))
    resources = tuple(
        messages.build(resource_type, resource_type=kind, resource_name=name,
                       pattern_type=pattern, acls=tuple(descriptions))
        for (kind, name, pattern), descriptions in grouped.items())
    return _response(request, throttle_time=NO_TIME, error_code=ErrorCode.none,
                     error_message=None, resources=resources)


async def handle_create_acls(ctx: GatewayContext, request: Request) -> Any:
    creations = request.body.creations
    response_type = messages.response_type(request.api_key, request.version)
    result_type = messages.nested(response_type, "AclCreationResult")
    refusal = _acl_refusal(ctx, acl.Operation.ALTER)
    if refusal is not None:
        return _response(request, throttle_time=NO_TIME, results=tuple(
            result_type(error_code=refusal[0], error_message=refusal[1]) for _ in creations))
    messages_out = [pb.AclBinding(
        resource_type=c.resource_type, resource_name=c.resource_name,
        pattern_type=getattr(c, "resource_pattern_type", acl.PatternType.LITERAL),
        principal=c.principal, host=c.host, operation=c.operation,
        permission_type=c.permission_type) for c in creations]
    try:
        reply = await ctx.broker.call(BROKER.create_acls,
                                      pb.CreateAclsRequest(creations=messages_out))
    except BrokerUnavailable as exc:
        return _response(request, throttle_time=NO_TIME, results=tuple(
            result_type(error_code=ErrorCode.request_timed_out, error_message=str(exc))
            for _ in creations))
    await ctx.security.caught_up(reply.version)
    return _response(request, throttle_time=NO_TIME, results=tuple(
        result_type(error_code=ErrorCode(r.error_code), error_message=r.error_message or None)
        for r in reply.results))


async def handle_delete_acls(ctx: GatewayContext, request: Request) -> Any:
    filters = request.body.filters
    response_type = messages.response_type(request.api_key, request.version)
    result_type = messages.nested(response_type, "DeleteAclsFilterResult")
    matching_type = messages.nested(response_type, "DeleteAclsMatchingAcl")
    refusal = _acl_refusal(ctx, acl.Operation.ALTER)

    def failed(code: ErrorCode, message: str) -> Any:
        return _response(request, throttle_time=NO_TIME, filter_results=tuple(
            result_type(error_code=code, error_message=message, matching_acls=())
            for _ in filters))

    if refusal is not None:
        return failed(*refusal)
    try:
        reply = await ctx.broker.call(BROKER.delete_acls, pb.DeleteAclsRequest(filters=[
            pb.AclFilter(resource_type=f.resource_type_filter,
                         resource_name=f.resource_name_filter,
                         pattern_type=getattr(f, "pattern_type_filter", acl.PatternType.LITERAL),
                         principal=f.principal_filter, host=f.host_filter,
                         operation=f.operation, permission_type=f.permission_type)
            for f in filters]))
    except BrokerUnavailable as exc:
        return failed(ErrorCode.request_timed_out, str(exc))
    await ctx.security.caught_up(reply.version)
    return _response(request, throttle_time=NO_TIME, filter_results=tuple(
        result_type(error_code=ErrorCode(r.error_code), error_message=r.error_message or None,
                    matching_acls=tuple(messages.build(
                        matching_type, error_code=ErrorCode.none, error_message=None,
                        resource_type=b.resource_type, resource_name=b.resource_name,
                        pattern_type=b.pattern_type, principal=b.principal, host=b.host,
                        operation=b.operation, permission_type=b.permission_type)
                        for b in r.matching))
        for r in reply.results))


# -- SCRAM users -----------------------------------------------------------------------------

async def handle_describe_scram(ctx: GatewayContext, request: Request) -> Any:
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS,
                                           request.version)
    result_type = messages.nested(response_type, "DescribeUserScramCredentialsResult")
    info_type = messages.nested(response_type, "CredentialInfo")
    if not ctx.security.allows_cluster(acl.Operation.DESCRIBE):
        return _response(request, throttle_time=NO_TIME,
                         error_code=ErrorCode.cluster_authorization_failed,
                         error_message="Cluster authorization failed.", results=())
    try:
        await _fresh(ctx)
    except BrokerUnavailable as exc:
        return _response(request, throttle_time=NO_TIME, error_code=ErrorCode.request_timed_out,
                         error_message=str(exc), results=())
    users = ctx.security.users()
    named = request.body.users
    wanted = list(users) if not named else [u.name for u in named]  # null or []: all
    counts = Counter(wanted)
    results = []
    for user in dict.fromkeys(wanted):
        if counts[user] > 1:
            code, message = (ErrorCode.duplicate_resource,
                             "Cannot describe SCRAM credentials for the same user twice in a "
                             "single request")
        elif user not in users:
            code, message = (ErrorCode.resource_not_found,
                             "Attempt to describe a user credential that does not exist")
        else:
            code, message = ErrorCode.none, None
        results.append(result_type(user=user, error_code=code, error_message=message,
                                   credential_infos=tuple(
                                       info_type(mechanism=c.mechanism, iterations=c.iterations)
                                       for c in users.get(user, ()) if code == ErrorCode.none)))
    return _response(request, throttle_time=NO_TIME, error_code=ErrorCode.none,
                     error_message=None, results=tuple(results))


async def handle_alter_scram(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ALTER_USER_SCRAM_CREDENTIALS,
                                           request.version)
    result_type = messages.nested(response_type, "AlterUserScramCredentialsResult")
    names = [d.name for d in body.deletions] + [u.name for u in body.upsertions]
    if not ctx.security.allows_cluster(acl.Operation.ALTER):
        return _response(request, throttle_time=NO_TIME, results=tuple(
            result_type(user=name, error_code=ErrorCode.cluster_authorization_failed,
                        error_message="Cluster authorization failed.")
            for name in dict.fromkeys(names)))
    # Kafka refuses every change to a user named twice for one mechanism in a request.
    pairs = Counter([(d.name, d.mechanism) for d in body.deletions]
                    + [(u.name, u.mechanism) for u in body.upsertions])
    duplicated = {name for (name, _), count in pairs.items() if count > 1}
    unknown = {name for name, mechanism in pairs if mechanism not in scram.NAMES}
    refused: dict[str, tuple[ErrorCode, str]] = {}
    for name in unknown:
        refused[name] = (ErrorCode.unsupported_sasl_mechanism, "Unknown SCRAM mechanism")
    for name in duplicated:
        refused[name] = (ErrorCode.duplicate_resource,
                         "A user credential cannot be altered twice in the same request")
    results: dict[str, Any] = {
        name: result_type(user=name, error_code=code, error_message=message)
        for name, (code, message) in refused.items()}
    try:
        reply = await ctx.broker.call(BROKER.alter_scram_credentials,
                                      pb.AlterScramCredentialsRequest(
            deletions=[pb.ScramDeletion(user=d.name, mechanism=d.mechanism)
                       for d in body.deletions if d.name not in refused],
            upsertions=[pb.ScramUpsertion(user=u.name, mechanism=u.mechanism,
                                          iterations=u.iterations, salt=u.salt,
                                          salted_password=u.salted_password)
                        for u in body.upsertions if u.name not in refused]))
    except BrokerUnavailable as exc:
        return _response(request, throttle_time=NO_TIME, results=tuple(
            result_type(user=name, error_code=ErrorCode.request_timed_out,
                        error_message=str(exc)) for name in dict.fromkeys(names)))
    for r in reply.results:
        results[r.user] = result_type(user=r.user, error_code=ErrorCode(r.error_code),
                                      error_message=r.error_message or None)
    await ctx.security.caught_up(reply.version)
    return _response(request, throttle_time=NO_TIME,
                     results=tuple(results[name] for name in dict.fromkeys(names)
                                   if name in results))
