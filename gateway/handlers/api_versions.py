"""ApiVersions: what kelp serves. An unsupported version gets the v0 format and error 35."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request


async def handle(ctx: GatewayContext, request: Request) -> Any:
    if request.unsupported_api_versions:
        # The client retries with a version from our range; v0's format is understood by all.
        return response(0, ErrorCode.unsupported_version)
    return response(request.version, ErrorCode.none)


def response(version: int, error: ErrorCode) -> Any:
    response_type = messages.response_type(apis.ApiKey.API_VERSIONS, version)
    api_version = messages.nested(response_type, "ApiVersion")
    keys = tuple(
        api_version(api_key=key, min_version=low, max_version=high)
        for key, (low, high) in sorted(apis.SUPPORTED.items())
    )
    return messages.build(
        response_type, error_code=error, api_keys=keys,
        throttle_time=datetime.timedelta(0),
        supported_features=(), finalized_features_epoch=-1, finalized_features=(),
        zk_migration_ready=False,
    )
