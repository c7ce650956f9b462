"""Kafka's ACL model, sans-IO: bindings, filters and the authorization decision.

A binding allows or denies one principal, from one host, one operation on resources matched by a
pattern (a LITERAL name, ``*`` for every name, or a PREFIXED name). Deciding a request follows
Kafka's StandardAuthorizer: super users may do anything; a DENY that matches wins; otherwise an
ALLOW must match, where allowing READ, WRITE, DELETE or ALTER also allows DESCRIBE and allowing
ALTER_CONFIGS also allows DESCRIBE_CONFIGS; a resource no binding names at all is allowed only
when ``allow.everyone.if.no.acl.found`` is set. The broker keeps the bindings (``broker.security``);
every gateway decides with the same code from its copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class ResourceType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


CLUSTER_NAME = "kafka-cluster"
WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"
MAX_NAME_CHARS = 32_767  # a binding's strings are bounded like a Kafka string

# Allowing one of these operations allows DESCRIBE (or DESCRIBE_CONFIGS) too.
_IMPLIES = {
    Operation.DESCRIBE: (Operation.DESCRIBE, Operation.READ, Operation.WRITE, Operation.DELETE,
                         Operation.ALTER),
    Operation.DESCRIBE_CONFIGS: (Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS),
}

# The operations each resource type has, as Kafka reports them in authorized_operations.
SUPPORTED = {
    ResourceType.TOPIC: (Operation.READ, Operation.WRITE, Operation.CREATE, Operation.DELETE,
                         Operation.ALTER, Operation.DESCRIBE, Operation.DESCRIBE_CONFIGS,
                         Operation.ALTER_CONFIGS),
    ResourceType.GROUP: (Operation.READ, Operation.DESCRIBE, Operation.DELETE),
    ResourceType.CLUSTER: (Operation.CREATE, Operation.CLUSTER_ACTION,
                           Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS,
                           Operation.IDEMPOTENT_WRITE, Operation.ALTER, Operation.DESCRIBE),
    ResourceType.TRANSACTIONAL_ID: (Operation.DESCRIBE, Operation.WRITE),
}


class InvalidAcl(ValueError):
    """A binding or filter Kafka would refuse (answered INVALID_REQUEST)."""


@dataclass(frozen=True, slots=True)
class Binding:
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: Operation
    permission: Permission

    def names(self, resource_type: ResourceType, name: str) -> bool:
        """Whether this binding's pattern matches the resource."""
        if self.resource_type != resource_type:
            return False
        if self.pattern_type == PatternType.PREFIXED:
            return name.startswith(self.resource_name)
        return self.resource_name in (name, WILDCARD)


@dataclass(frozen=True, slots=True)
class Filter:
    """A DescribeAcls/DeleteAcls filter; None and the ANY values match everything."""

    resource_type: ResourceType = ResourceType.ANY
    resource_name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: Operation = Operation.ANY
    permission: Permission = Permission.ANY

    def matches(self, binding: Binding) -> bool:
        if self.resource_type not in (ResourceType.ANY, binding.resource_type):
            return False
        if not self._matches_pattern(binding):
            return False
        return (self.principal in (None, binding.principal)
                and self.host in (None, binding.host)
                and self.operation in (Operation.ANY, binding.operation)
                and self.permission in (Permission.ANY, binding.permission))

    def _matches_pattern(self, binding: Binding) -> bool:
        name = self.resource_name
        if self.pattern_type == PatternType.MATCH:
            # Every binding that would apply to a resource of this name (Kafka's MATCH).
            if name is None:
                return True
            if binding.pattern_type == PatternType.PREFIXED:
                return name.startswith(binding.resource_name)
            return binding.resource_name in (name, WILDCARD)
        if self.pattern_type not in (PatternType.ANY, binding.pattern_type):
            return False
        return name is None or name == binding.resource_name


def check_binding(binding: Binding) -> None:
    """Refuse what Kafka's CreateAcls refuses, with its reasons."""
    if binding.resource_type in (ResourceType.ANY, ResourceType.UNKNOWN):
        raise InvalidAcl("Invalid resource type")
    if binding.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
        raise InvalidAcl("Invalid pattern type")
    if binding.operation in (Operation.ANY, Operation.UNKNOWN):
        raise InvalidAcl("Invalid operation")
    if binding.permission not in (Permission.ALLOW, Permission.DENY):
        raise InvalidAcl("Invalid permission type")
    if not binding.resource_name:
        raise InvalidAcl("Resource name must not be empty")
    if binding.resource_type == ResourceType.CLUSTER and (
            binding.resource_name != CLUSTER_NAME
            or binding.pattern_type != PatternType.LITERAL):
        raise InvalidAcl("The only valid name for the CLUSTER resource is " + CLUSTER_NAME)
    kind, sep, name = binding.principal.partition(":")
    if not sep or not kind or not name:
        raise InvalidAcl(f"Could not parse principal from `{binding.principal}` "
                         "(no colon is present separating the principal type from name)")
    if not binding.host:
        raise InvalidAcl("Invalid host")
    for text in (binding.resource_name, binding.principal, binding.host):
        if len(text) > MAX_NAME_CHARS:
            raise InvalidAcl("ACL field too long")


def check_filter(acl_filter: Filter) -> None:
    if acl_filter.resource_type == ResourceType.UNKNOWN:
        raise InvalidAcl("Invalid resource type")
    if acl_filter.pattern_type == PatternType.UNKNOWN:
        raise InvalidAcl("Invalid pattern type")
    if acl_filter.operation == Operation.UNKNOWN:
        raise InvalidAcl("Invalid operation")
    if acl_filter.permission == Permission.UNKNOWN:
        raise InvalidAcl("Invalid permission type")


@dataclass(frozen=True)
class Settings:
    """The authorizer's switches (Kafka's names)."""

    enabled: bool = False  # authorizer.class.name set
    super_users: frozenset[str] = frozenset()  # super.users
    allow_everyone_if_no_acl_found: bool = False


class Authorizer:
    """Decisions over one snapshot of the bindings, indexed by resource type."""

    def __init__(self, settings: Settings, bindings: Iterable[Binding] = ()) -> None:
        self.settings = settings
        self.bindings = tuple(bindings)
        self._by_type: dict[ResourceType, list[Binding]] = {}
        for binding in self.bindings:
            self._by_type.setdefault(binding.resource_type, []).append(binding)

    def authorize(self, principal: str, host: str, operation: Operation,
                  resource_type: ResourceType, name: str) -> bool:
        settings = self.settings
        if not settings.enabled or principal in settings.super_users:
            return True
        applying = [b for b in self._by_type.get(resource_type, ())
                    if b.names(resource_type, name)]
        if not applying:
            return settings.allow_everyone_if_no_acl_found
        allowed_by = _IMPLIES.get(operation, (operation,))
        allowed = False
        for binding in applying:
            if binding.principal not in (principal, WILDCARD_PRINCIPAL):
                continue
            if binding.host not in (host, WILDCARD):
                continue
            if binding.permission == Permission.DENY:
                if binding.operation in (operation, Operation.ALL):
                    return False
            elif binding.operation == Operation.ALL or binding.operation in allowed_by:
                allowed = True
        return allowed

    def authorize_any(self, principal: str, host: str, operation: Operation,
                      resource_type: ResourceType) -> bool:
        """Whether the principal may do ``operation`` on *some* resource of this type (Kafka's
        authorizeByResourceType, used for idempotent producers): an ALLOW naming any resource,
        not undone by a DENY of every name."""
        settings = self.settings
        if not settings.enabled or principal in settings.super_users:
            return True
        candidates = [b for b in self._by_type.get(resource_type, ())
                      if b.principal in (principal, WILDCARD_PRINCIPAL)
                      and b.host in (host, WILDCARD)
                      and b.operation in (operation, Operation.ALL)]
        if any(b.permission == Permission.DENY and b.pattern_type == PatternType.LITERAL
               and b.resource_name == WILDCARD for b in candidates):
            return False
        if any(b.permission == Permission.ALLOW for b in candidates):
            return True
        return settings.allow_everyone_if_no_acl_found and not self._by_type.get(resource_type)

    def operations(self, principal: str, host: str, resource_type: ResourceType,
                   name: str) -> int:
        """The authorized_operations bit set for one resource."""
        bits = 0
        for operation in SUPPORTED.get(resource_type, ()):
            if self.authorize(principal, host, operation, resource_type, name):
                bits |= 1 << operation
        return bits
