"""Kafka's authorization table, for the APIs where one check covers the whole request.

Before such a request is handled, the server asks ``refusal``: a request the principal may not
make is answered with Kafka's error code in the response's error fields and not handled at
all. APIs whose resources are checked one by one (Produce per topic, DescribeGroups per group,
...) do it in their handlers, through ``GatewayContext.security``; the table in README
'Security' lists both kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.kafka.apis import ApiKey
from gateway.security import SecurityView
from kelp import acl

Op, Res = acl.Operation, acl.ResourceType
_CLUSTER: Callable[[Any], str] = lambda body: acl.CLUSTER_NAME  # noqa: E731
_GROUP_ID: Callable[[Any], str] = lambda body: body.group_id  # noqa: E731

# api -> (operation, resource type, the resource's name in the request)
WHOLE_REQUEST: dict[int, tuple[acl.Operation, acl.ResourceType, Callable[[Any], str]]] = {
    ApiKey.JOIN_GROUP: (Op.READ, Res.GROUP, _GROUP_ID),
    ApiKey.SYNC_GROUP: (Op.READ, Res.GROUP, _GROUP_ID),
    ApiKey.HEARTBEAT: (Op.READ, Res.GROUP, _GROUP_ID),
    ApiKey.LEAVE_GROUP: (Op.READ, Res.GROUP, _GROUP_ID),
    ApiKey.OFFSET_DELETE: (Op.DELETE, Res.GROUP, _GROUP_ID),
    ApiKey.CONSUMER_GROUP_HEARTBEAT: (Op.READ, Res.GROUP, _GROUP_ID),
    ApiKey.END_TXN: (Op.WRITE, Res.TRANSACTIONAL_ID, lambda body: body.transactional_id),
    ApiKey.DESCRIBE_CLUSTER: (Op.DESCRIBE, Res.CLUSTER, _CLUSTER),
    ApiKey.DESCRIBE_LOG_DIRS: (Op.DESCRIBE, Res.CLUSTER, _CLUSTER),
    ApiKey.ELECT_LEADERS: (Op.ALTER, Res.CLUSTER, _CLUSTER),
    ApiKey.ALTER_PARTITION_REASSIGNMENTS: (Op.ALTER, Res.CLUSTER, _CLUSTER),
    ApiKey.LIST_PARTITION_REASSIGNMENTS: (Op.DESCRIBE, Res.CLUSTER, _CLUSTER),
    ApiKey.DESCRIBE_QUORUM: (Op.DESCRIBE, Res.CLUSTER, _CLUSTER),
    ApiKey.DESCRIBE_CLIENT_QUOTAS: (Op.DESCRIBE_CONFIGS, Res.CLUSTER, _CLUSTER),
}

ERRORS = {
    Res.TOPIC: ErrorCode.topic_authorization_failed,
    Res.GROUP: ErrorCode.group_authorization_failed,
    Res.CLUSTER: ErrorCode.cluster_authorization_failed,
    Res.TRANSACTIONAL_ID: ErrorCode.transactional_id_authorization_failed,
}


def refusal(security: SecurityView, api_key: int, body: Any) -> ErrorCode | None:
    """Kafka's error if the current principal may not make this request at all."""
    rule = WHOLE_REQUEST.get(api_key)
    if rule is None or body is None:
        return None
    operation, resource_type, name_of = rule
    if security.allows(operation, resource_type, name_of(body)):
        return None
    return ERRORS[resource_type]


def message(code: ErrorCode) -> str:
    return {ErrorCode.topic_authorization_failed: "Topic authorization failed.",
            ErrorCode.group_authorization_failed: "Group authorization failed.",
            ErrorCode.cluster_authorization_failed: "Cluster authorization failed.",
            ErrorCode.transactional_id_authorization_failed:
                "Transactional Id authorization failed."}.get(code, "Not authorized.")
