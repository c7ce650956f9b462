"""FindCoordinator: this gateway is every group's coordinator (the broker keeps the state).

Gateways are stateless, so any of them can front any group; clients talk to the one they
asked. Transaction coordinators do not exist yet: COORDINATOR_NOT_AVAILABLE says so.
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.context import NODE_ID, GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request

GROUP = 0


async def handle(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.FIND_COORDINATOR, request.version)
    key_type = getattr(body, "key_type", GROUP)
    if key_type == GROUP:
        error, message = ErrorCode.none, None
    else:
        error, message = ErrorCode.coordinator_not_available, "transactions are not supported"
    node = NODE_ID if error == ErrorCode.none else -1
    host, port = ctx.advertised() if error == ErrorCode.none else ("", -1)
    if messages.has_field(response_type, "coordinators"):  # v4+: a batch of keys
        coordinator_type = messages.nested(response_type, "Coordinator")
        return response_type(
            throttle_time=datetime.timedelta(0),
            coordinators=tuple(coordinator_type(key=key, node_id=node, host=host, port=port,
                                                error_code=error, error_message=message)
                               for key in body.coordinator_keys))
    return messages.build(response_type, throttle_time=datetime.timedelta(0), error_code=error,
                          error_message=message, node_id=node, host=host, port=port)
