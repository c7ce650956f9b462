"""kio's schemas as kelp walks them: each field of an entity type, described once.

Three walks are driven by kio's dataclasses: ``vet`` (check a request's bytes before decoding),
and the fuzzer's ``layout`` (find every length in a seed) and ``synth`` (build a plausible
request). They all need the same facts per field — is it a struct, an array of structs, an
array of primitives or a primitive; its Kafka type; may it be null; is it tagged — and kio
keeps those behind private helpers (``kio.serial._introspect``). This module is the one place
that reads them, so a kio upgrade that moves them breaks here only.

Also here: the encoded size of Kafka's fixed-size types, and the prefix size of the
length-prefixed ones in non-flexible versions (flexible versions use unsigned varints).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from enum import Enum
from typing import Any

from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    get_schema_field_type,
    is_optional,
)

FIXED_SIZES = {
    "bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "error_code": 2,
    "int32": 4, "uint32": 4, "timedelta_i32": 4, "int64": 8, "uint64": 8, "float64": 8,
    "timedelta_i64": 8, "datetime_i64": 8, "uuid": 16,
}
LEGACY_PREFIX_SIZES = {"string": 2, "bytes": 4, "records": 4}  # int16/int32 length prefixes


class Kind(Enum):
    PRIMITIVE = "primitive"
    PRIMITIVE_ARRAY = "primitive array"
    ENTITY = "entity"  # a nested struct
    ENTITY_ARRAY = "entity array"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    label: str  # "Owner.name", for error messages
    kind: Kind
    kafka_type: str | None  # a primitive's (or a primitive array element's) Kafka type
    entity: type | None  # the struct type of an entity or an entity array
    optional: bool  # the schema allows null
    tag: int | None  # a tagged field's tag; it lives in the tagged-field section
    default: Any  # dataclasses.MISSING when the schema gives none

    @property
    def is_array(self) -> bool:
        return self.kind in (Kind.PRIMITIVE_ARRAY, Kind.ENTITY_ARRAY)

    @property
    def fixed_size(self) -> int | None:
        """The encoded size of a fixed-size primitive, else None."""
        if self.kind is not Kind.PRIMITIVE:
            return None
        return FIXED_SIZES.get(self.kafka_type or "")


@functools.cache
def fields(entity_type: type) -> tuple[Field, ...]:
    """The fields of a kio entity type, in encoding order (tagged ones included)."""
    return tuple(_describe(entity_type, f) for f in dataclasses.fields(entity_type))


def flexible(entity_type: type) -> bool:
    """Compact encodings and tagged-field sections (KIP-482)."""
    return bool(entity_type.__flexible__)


def _describe(owner: type, f: dataclasses.Field[Any]) -> Field:
    kind = classify_field(f)
    entity: type | None = None
    kafka_type: str | None = None
    if isinstance(kind, EntityTupleField):
        shape, entity = Kind.ENTITY_ARRAY, kind.type_
    elif isinstance(kind, EntityField):
        shape, entity = Kind.ENTITY, kind.type_
    elif isinstance(kind, PrimitiveTupleField):
        shape, kafka_type = Kind.PRIMITIVE_ARRAY, get_schema_field_type(f)
    else:
        shape, kafka_type = Kind.PRIMITIVE, get_schema_field_type(f)
    return Field(name=f.name, label=f"{owner.__name__}.{f.name}", kind=shape,
                 kafka_type=kafka_type, entity=entity, optional=is_optional(f),
                 tag=get_field_tag(f), default=f.default)
