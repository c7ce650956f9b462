"""Client quotas as Kafka models them (KIP-546), sans-IO: entities, validation, filters.

An entity is a set of (type, name) parts, type ``user``, ``client-id`` or ``ip``, name None
for the type's default entity (``/clients/<default>``). Each entity has values for quota keys
(``producer_byte_rate``, ...). The broker keeps them (durably, with its other dynamic configs);
gateways read them all and enforce the byte rates (``gateway.quotas``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

USER, CLIENT_ID, IP = "user", "client-id", "ip"
EXACT, DEFAULT, SPECIFIED = 0, 1, 2  # DescribeClientQuotas match types
LONG_KEYS = {"producer_byte_rate", "consumer_byte_rate", "connection_creation_rate"}
KEYS = {
    USER: {"producer_byte_rate", "consumer_byte_rate", "request_percentage",
           "controller_mutation_rate"},
    CLIENT_ID: {"producer_byte_rate", "consumer_byte_rate", "request_percentage",
                "controller_mutation_rate"},
    IP: {"connection_creation_rate"},
}
MAX_ENTITIES = 10_000  # durable state, bounded like everything else
MAX_NAME_LENGTH = 1024

# (type, name or None for the default) pairs, sorted by type: one quota entity.
Entity = tuple[tuple[str, str | None], ...]


class QuotaError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class QuotaOp:
    key: str
    value: float
    remove: bool


@dataclass(frozen=True)
class Filter:
    entity_type: str
    match_type: int
    match: str | None


def entity_of(parts: Iterable[tuple[str, str | None]]) -> Entity:
    """A checked entity: known types, each once, a valid combination and valid names."""
    parts = list(parts)
    if not parts:
        raise QuotaError(ErrorCode.invalid_request, "Invalid empty client quota entity")
    types = [kind for kind, _ in parts]
    if len(set(types)) != len(types):
        raise QuotaError(ErrorCode.invalid_request, "Duplicate entity type in request")
    for kind, name in parts:
        if kind not in KEYS:
            raise QuotaError(ErrorCode.invalid_request,
                             f"Unhandled client quota entity type: {kind}")
        if name is not None and len(name) > MAX_NAME_LENGTH:
            raise QuotaError(ErrorCode.invalid_request,
                             f"Entity name longer than {MAX_NAME_LENGTH} characters")
        if kind == IP and name is not None:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                raise QuotaError(ErrorCode.invalid_request,
                                 f"{name} is not a valid IP address") from None
    if IP in types and len(types) > 1:
        raise QuotaError(ErrorCode.invalid_request,
                         "Invalid quota entity combination: ip with " + ", ".join(
                             t for t in types if t != IP))
    return tuple(sorted(parts))


def check_ops(entity: Entity, ops: Sequence[QuotaOp]) -> None:
    allowed = set.intersection(*(KEYS[kind] for kind, _ in entity))
    for op in ops:
        if op.key not in allowed:
            raise QuotaError(ErrorCode.invalid_request,
                             f"Invalid configuration key {op.key} for entity "
                             f"{describe_entity(entity)}")
        if op.remove:
            continue
        if not op.value > 0 or op.value == float("inf"):
            raise QuotaError(ErrorCode.invalid_request,
                             f"Quota {op.key} must be a positive number, got {op.value}")
        if op.key in LONG_KEYS and (op.value != int(op.value) or op.value > 2**63 - 1):
            raise QuotaError(ErrorCode.invalid_request,
                             f"Quota {op.key} must be a whole number, got {op.value}")


def alter(store: dict[Entity, dict[str, float]], entity: Entity,
          ops: Sequence[QuotaOp]) -> dict[str, float]:
    """The entity's values after ``ops`` (checked); ``store`` is not changed."""
    check_ops(entity, ops)
    if entity not in store and len(store) >= MAX_ENTITIES:
        raise QuotaError(ErrorCode.policy_violation,
                         f"more than {MAX_ENTITIES} client quota entities")
    values = dict(store.get(entity, {}))
    for op in ops:
        if op.remove:
            values.pop(op.key, None)
        else:
            values[op.key] = float(op.value)
    return values


def check_filters(filters: Sequence[Filter]) -> None:
    types = [f.entity_type for f in filters]
    if len(set(types)) != len(types):
        raise QuotaError(ErrorCode.invalid_request, "Duplicate entity type in filter")
    for f in filters:
        if f.entity_type not in KEYS:
            raise QuotaError(ErrorCode.invalid_request,
                             f"Unhandled client quota entity type: {f.entity_type}")
        if f.match_type not in (EXACT, DEFAULT, SPECIFIED):
            raise QuotaError(ErrorCode.invalid_request, f"Unknown match type {f.match_type}")
        if f.match_type == EXACT and f.match is None:
            raise QuotaError(ErrorCode.invalid_request,
                             "Exact match requires a non-null entity name")


def matches(entity: Entity, filters: Sequence[Filter], strict: bool) -> bool:
    names = dict(entity)
    for f in filters:
        if f.entity_type not in names:
            return False
        name = names[f.entity_type]
        if f.match_type == EXACT and name != f.match:
            return False
        if f.match_type == DEFAULT and name is not None:
            return False
    return not strict or set(names) <= {f.entity_type for f in filters}


def describe_entity(entity: Entity) -> str:
    return ", ".join(f"{kind}={'<default>' if name is None else name}"
                     for kind, name in entity)


def to_json(store: dict[Entity, dict[str, float]]) -> list[dict[str, object]]:
    return [{"entity": [list(part) for part in entity], "values": values}
            for entity, values in sorted(store.items(), key=lambda item: str(item[0]))]


def from_json(entries: list[dict[str, object]]) -> dict[Entity, dict[str, float]]:
    store: dict[Entity, dict[str, float]] = {}
    for entry in entries:
        parts = entry["entity"]
        values = entry["values"]
        assert isinstance(parts, list) and isinstance(values, dict)
        store[tuple((str(kind), name) for kind, name in parts)] = {
            str(k): float(v) for k, v in values.items()}
    return store
