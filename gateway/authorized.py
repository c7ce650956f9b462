"""The operations a principal may perform on a resource, as Kafka reports them in
``*_authorized_operations`` fields: a bit set over Kafka's AclOperation codes, computed from the
ACLs for the current connection's principal (without an authorizer, every operation the
resource type supports). A client that does not ask gets Kafka's "not requested" value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kelp import acl

if TYPE_CHECKING:
    from gateway.context import GatewayContext

NOT_REQUESTED = -(2**31)


def topic(ctx: GatewayContext, requested: bool, name: str) -> int:
    return ctx.security.operations(acl.ResourceType.TOPIC, name) if requested else NOT_REQUESTED


def group(ctx: GatewayContext, requested: bool, name: str) -> int:
    return ctx.security.operations(acl.ResourceType.GROUP, name) if requested else NOT_REQUESTED


def cluster(ctx: GatewayContext, requested: bool) -> int:
    return (ctx.security.operations(acl.ResourceType.CLUSTER, acl.CLUSTER_NAME) if requested
            else NOT_REQUESTED)
