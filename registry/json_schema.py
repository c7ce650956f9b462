"""The JSON schema type (JSON Schema): parsing, canonical forms and reader/writer compatibility.

``parse`` decodes the text, picks the dialect from ``$schema`` (Draft 7 when absent, as
Confluent does), checks the schema against its meta-schema with ``jsonschema`` and builds a
``referencing`` registry in which every reference is a resource under its name ("other.json"),
so ``{"$ref": "other.json#/definitions/X"}`` resolves. Every ``$ref`` is looked up once at parse
time: one that leads nowhere is a SchemaError, so comparisons never meet a dangling reference.

``compatibility_errors`` (``json_schema_diff.py``, on the everit view of
``json_schema_shapes.py``) follows Confluent's JSON Schema diff
(io.confluent.kafka.schemaregistry.json.diff, 8.x): the writer is Confluent's "original", the
reader its "update"; every change found is a (JSON pointer, Difference.Type) pair and the
check fails on any type outside
Confluent's set of compatible changes (``COMPATIBLE``). Confluent diffs everit schema objects,
where a schema using several keyword groups (say ``type`` plus ``enum``) becomes a synthetic
``allOf`` and a type array an ``anyOf``; here a schema dict is split into the same groups
(``groups``), compared group by group, and each group is classified like the everit class it
would become (``kind``). A ``$ref`` is followed on both sides before comparing; a pair met again
while still being compared is a recursive cycle and counts as compatible (Confluent does the
same), and finished pairs are memoized so unions over recursive definitions stay polynomial.

Where Confluent's answer rests on an everit artefact, the sound answer is given instead:
keyword groups are matched group to group (Confluent pairs the synthetic allOf members blindly);
a writer ``allOf`` is read by a plain reader that accepts one of its members; ``true``/``{}`` as
``items``, ``additionalProperties`` etc. mean the same as leaving the keyword out; a property
matching no ``patternProperties`` of an otherwise open object is open, not closed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import jsonschema
import jsonschema.exceptions
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.validators import validator_for
from jsonschema_specifications import REGISTRY as _META_SCHEMAS

from registry.json_schema_diff import COMPATIBLE, compatibility_errors, pointer
from registry.limits import checkpoint
from registry.schema import ParsedSchema, SchemaError

if TYPE_CHECKING:
    from referencing._core import Resolver

__all__ = ["COMPATIBLE", "JsonSchema", "parse"]

_DRAFTS: dict[type, tuple[int, referencing.Specification[Any]]] = {
    jsonschema.Draft4Validator: (4, referencing.jsonschema.DRAFT4),
    jsonschema.Draft6Validator: (6, referencing.jsonschema.DRAFT6),
    jsonschema.Draft7Validator: (7, referencing.jsonschema.DRAFT7),
    jsonschema.Draft201909Validator: (2019, referencing.jsonschema.DRAFT201909),
    jsonschema.Draft202012Validator: (2020, referencing.jsonschema.DRAFT202012),
}
_SPECS = dict(_DRAFTS.values())

# Keywords whose values are data, not schemas: never walked for $ref or normalized.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
_NAME_MAPS = frozenset({"properties", "patternProperties", "definitions", "$defs",
                        "dependencies", "dependentSchemas"})



@dataclass(frozen=True, eq=False)
class At:
    """A (sub)schema with what is needed to read it: its resolver (base URI) and dialect."""

    schema: Any
    resolver: Resolver[Any]
    draft: int

    def child(self, schema: Any) -> At:
        resolver = self.resolver
        id_key = "id" if self.draft == 4 else "$id"
        if isinstance(schema, dict) and isinstance(schema.get(id_key), str):
            # An embedded $id moves the base URI for every relative $ref below it.
            resolver = resolver.in_subresource(_SPECS[self.draft].create_resource(schema))
        return At(schema, resolver, self.draft)

    def part(self, schema: Any) -> At:
        # A synthetic piece of this schema: same base URI, its $id was already applied.
        return At(schema, self.resolver, self.draft)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (TypeError, ValueError, RecursionError) as e:
        raise SchemaError(f"Invalid schema: {where}not valid JSON: {e}") from e


def parse(text: str, references: Sequence[tuple[str, str]]) -> JsonSchema:
    """Parse a JSON Schema whose ``$ref``s may name ``references`` (see schema.py)."""
    schema = _load(text, "")
    if not isinstance(schema, dict | bool):
        raise SchemaError("Invalid schema: a JSON Schema is an object or a boolean")
    cls = validator_for(schema, default=jsonschema.Draft7Validator)
    if cls not in _DRAFTS:
        raise SchemaError(f"Invalid schema: unsupported $schema {schema.get('$schema')!r}")
    draft, spec = _DRAFTS[cls]
    try:
        _check_schema(cls, schema)
    except jsonschema.exceptions.SchemaError as e:
        raise SchemaError(f"Invalid schema: {pointer(e.absolute_path)}: {e.message}") from e
    except RecursionError as e:  # hostile nesting must not become a 500
        raise SchemaError("Invalid schema: nested too deeply") from e
    root = spec.create_resource(schema)
    registry: referencing.Registry[Any] = _META_SCHEMAS
    for name, ref_text in references:
        resource = referencing.Resource.from_contents(
            _load(ref_text, f"reference {name!r}: "), default_specification=spec)
        registry = registry.with_resource(name, resource)
        if root.id():  # "other.json" must also resolve against the root's own $id
            registry = registry.with_resource(urljoin(root.id() or "", name), resource)
    at = At(schema, registry.crawl().resolver_with_root(root), draft)
    try:
        _check_refs(at, ())
    except RecursionError as e:
        raise SchemaError("Invalid schema: nested too deeply") from e
    return JsonSchema(schema, at, tuple(references))


_TYPE_NAMES = ("array", "boolean", "integer", "null", "number", "object", "string")


@functools.cache
def _stoppable(meta: type[Any]) -> type[Any]:
    """``meta`` (a meta-schema's validator class) whose every type check is also a
    :func:`checkpoint`: jsonschema's walk has no hook of its own, and every subschema it
    visits checks a type."""
    base = meta.TYPE_CHECKER

    def checking(name: str) -> Any:
        def is_type(checker: Any, instance: Any) -> bool:
            checkpoint()
            return bool(base.is_type(instance, name))
        return is_type

    checker = base.redefine_many({name: checking(name) for name in _TYPE_NAMES})
    return jsonschema.validators.extend(meta, type_checker=checker)


def _check_schema(cls: Any, schema: Any) -> None:
    """``cls.check_schema(schema)``, stoppable (see :func:`_stoppable`)."""
    meta = _stoppable(validator_for(cls.META_SCHEMA, default=cls))
    validator = meta(schema=cls.META_SCHEMA, format_checker=meta.FORMAT_CHECKER)
    for error in validator.iter_errors(schema):
        raise jsonschema.exceptions.SchemaError.create_from(error)


def _check_refs(at: At, path: tuple[str, ...], names: bool = False) -> None:
    """Look every $ref up. ``names``: ``at`` maps names to schemas ("properties" etc.), so a
    key there such as "enum" is a property, not the data keyword."""
    checkpoint()
    if isinstance(at.schema, dict):
        ref = at.schema.get("$ref")
        if isinstance(ref, str) and not names:
            try:
                at.resolver.lookup(ref)
            except referencing.exceptions.Unresolvable as e:
                raise SchemaError(
                    f"Invalid schema: {pointer(path)}: unresolvable $ref {ref!r}") from e
        for key, value in at.schema.items():
            if names or key not in _DATA_KEYWORDS:
                _check_refs(at.child(value), (*path, key), not names and key in _NAME_MAPS)
    elif isinstance(at.schema, list):
        for i, value in enumerate(at.schema):
            _check_refs(at.child(value), (*path, str(i)))


class JsonSchema:
    """A parsed JSON Schema; implements :class:`registry.schema.ParsedSchema`."""

    schema_type = "JSON"

    def __init__(self, schema: Any, root: At, references: tuple[tuple[str, str], ...]) -> None:
        self.schema = schema
        self._root = root
        self._references = references

    def canonical(self) -> str:
        return _dump(self.schema)

    def normalized(self) -> str:
        return json.dumps(_normal(self.schema), separators=(",", ":"), ensure_ascii=False,
                          sort_keys=True)

    def formatted(self, fmt: str) -> str:
        if fmt == "":
            return self.canonical()
        raise SchemaError(f"unknown format {fmt!r} for a JSON schema (known: '')")

    def compatibility_errors(self, writer: ParsedSchema) -> list[str]:
        if not isinstance(writer, JsonSchema):
            return [f"#/: TYPE_CHANGED: the writer is a {writer.schema_type} schema, not JSON"]
        if (writer.canonical(), writer._references) == (self.canonical(), self._references):
            return []  # the same schema: skip a walk that is costly for recursive unions
        return compatibility_errors(writer._root, self._root)


def _dump(js: Any) -> str:
    return json.dumps(js, separators=(",", ":"), ensure_ascii=False)


def _normal(js: Any) -> Any:
    # Sorted keys (by json.dumps) plus the list keywords whose order means nothing.
    checkpoint()
    if isinstance(js, list):
        return [_normal(v) for v in js]
    if not isinstance(js, dict):
        return js
    out = {k: (v if k in _DATA_KEYWORDS else _normal(v)) for k, v in js.items()}
    for key in ("required", "type"):
        if isinstance(out.get(key), list) and all(isinstance(v, str) for v in out[key]):
            values = sorted(set(out[key]))
            out[key] = values[0] if key == "type" and len(values) == 1 else values
    return out
