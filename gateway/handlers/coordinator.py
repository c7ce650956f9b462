"""FindCoordinator: this gateway is every group's and every transactional id's coordinator
(the broker keeps the state).

Gateways are stateless, so any of them can front any group or transaction; clients talk to
the one they asked.
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway import access
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl

GROUP, TRANSACTION = 0, 1


async def handle(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.FIND_COORDINATOR, request.version)
    key_type = getattr(body, "key_type", GROUP)

    def answer(key: str) -> tuple[ErrorCode, str | None, int, str, int]:
        """(error, message, node, host, port) for one key. Kafka: DESCRIBE on the group (or
        transactional id) it names."""
        resource = acl.ResourceType.GROUP if key_type == GROUP else \
            acl.ResourceType.TRANSACTIONAL_ID
        if not ctx.security.allows(acl.Operation.DESCRIBE, resource, key):
            code = (ErrorCode.group_authorization_failed if key_type == GROUP
                    else ErrorCode.transactional_id_authorization_failed)
            return code, access.message(code), -1, "", -1
        if key_type not in (GROUP, TRANSACTION):
            return ErrorCode.invalid_request, f"unknown key type {key_type}", -1, "", -1
        host, port = ctx.advertised()
        return ErrorCode.none, None, ctx.node_id, host, port

    if messages.has_field(response_type, "coordinators"):  # v4+: a batch of keys
        coordinator_type = messages.nested(response_type, "Coordinator")
        coordinators = []
        for key in body.coordinator_keys:
            error, message, node, host, port = answer(key)
            coordinators.append(coordinator_type(key=key, node_id=node, host=host, port=port,
                                                 error_code=error, error_message=message))
        return response_type(throttle_time=datetime.timedelta(0),
                             coordinators=tuple(coordinators))
    error, message, node, host, port = answer(body.key)
    return messages.build(response_type, throttle_time=datetime.timedelta(0), error_code=error,
                          error_message=message, node_id=node, host=host, port=port)
