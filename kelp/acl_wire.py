"""ACL bindings and filters to and from the broker's gRPC messages (``kelp.rpc``), shared by
the broker that keeps them and the gateways that enforce them."""

from __future__ import annotations

from kelp import acl
from kelp.rpc.broker import v1 as pb


def binding_to_pb(binding: acl.Binding) -> pb.AclBinding:
    return pb.AclBinding(
        resource_type=binding.resource_type, resource_name=binding.resource_name,
        pattern_type=binding.pattern_type, principal=binding.principal, host=binding.host,
        operation=binding.operation, permission_type=binding.permission)


def binding_from_pb(message: pb.AclBinding) -> acl.Binding:
    """Raises InvalidAcl for codes outside Kafka's enums."""
    try:
        return acl.Binding(
            acl.ResourceType(message.resource_type), message.resource_name,
            acl.PatternType(message.pattern_type), message.principal, message.host,
            acl.Operation(message.operation), acl.Permission(message.permission_type))
    except ValueError as exc:
        raise acl.InvalidAcl(str(exc)) from None


def filter_from_pb(message: pb.AclFilter) -> acl.Filter:
    try:
        return acl.Filter(
            acl.ResourceType(message.resource_type), message.resource_name,
            acl.PatternType(message.pattern_type), message.principal, message.host,
            acl.Operation(message.operation), acl.Permission(message.permission_type))
    except ValueError as exc:
        raise acl.InvalidAcl(str(exc)) from None
