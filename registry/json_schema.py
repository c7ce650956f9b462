"""The JSON schema type (JSON Schema): parsing, canonical forms and reader/writer compatibility.

``parse`` decodes the text, picks the dialect from ``$schema`` (Draft 7 when absent, as
Confluent does), checks the schema against its meta-schema with ``jsonschema`` and builds a
``referencing`` registry in which every reference is a resource under its name ("other.json"),
so ``{"$ref": "other.json#/definitions/X"}`` resolves. Every ``$ref`` is looked up once at parse
time: one that leads nowhere is a SchemaError, so comparisons never meet a dangling reference.

``compatibility_errors`` follows Confluent's JSON Schema diff (io.confluent.kafka.schemaregistry
.json.diff, 8.x): the writer is Confluent's "original", the reader its "update"; every change
found is a (JSON pointer, Difference.Type) pair and the check fails on any type outside
Confluent's set of compatible changes (``COMPATIBLE``). Confluent diffs everit schema objects,
where a schema using several keyword groups (say ``type`` plus ``enum``) becomes a synthetic
``allOf`` and a type array an ``anyOf``; here a schema dict is split into the same groups
(``_groups``), compared group by group, and each group is classified like the everit class it
would become (``_kind``). A ``$ref`` is followed on both sides before comparing; a pair met again
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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import jsonschema
import jsonschema.exceptions
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.validators import validator_for
from jsonschema_specifications import REGISTRY as _META_SCHEMAS

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

# Confluent's SchemaDiff.COMPATIBLE_CHANGES (8.x), restricted to the types this module emits.
COMPATIBLE = frozenset({
    "SCHEMA_REMOVED", "TYPE_EXTENDED", "MAX_LENGTH_INCREASED", "MAX_LENGTH_REMOVED",
    "MIN_LENGTH_DECREASED", "MIN_LENGTH_REMOVED", "PATTERN_REMOVED", "MAXIMUM_INCREASED",
    "MAXIMUM_REMOVED", "MINIMUM_DECREASED", "MINIMUM_REMOVED", "EXCLUSIVE_MAXIMUM_INCREASED",
    "EXCLUSIVE_MAXIMUM_REMOVED", "EXCLUSIVE_MINIMUM_DECREASED", "EXCLUSIVE_MINIMUM_REMOVED",
    "MULTIPLE_OF_REDUCED", "MULTIPLE_OF_REMOVED", "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED",
    "REQUIRED_ATTRIBUTE_REMOVED", "DEPENDENCY_ARRAY_NARROWED", "DEPENDENCY_ARRAY_REMOVED",
    "DEPENDENCY_SCHEMA_REMOVED", "MAX_PROPERTIES_INCREASED", "MAX_PROPERTIES_REMOVED",
    "MIN_PROPERTIES_DECREASED", "MIN_PROPERTIES_REMOVED", "ADDITIONAL_PROPERTIES_ADDED",
    "ADDITIONAL_PROPERTIES_EXTENDED", "UNEVALUATED_PROPERTIES_ADDED",
    "UNEVALUATED_PROPERTIES_EXTENDED", "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
    "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL",
    "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
    "PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL",
    "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL",
    "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", "MAX_ITEMS_INCREASED",
    "MAX_ITEMS_REMOVED", "MIN_ITEMS_DECREASED", "MIN_ITEMS_REMOVED", "MAX_CONTAINS_INCREASED",
    "MAX_CONTAINS_REMOVED", "MIN_CONTAINS_DECREASED", "MIN_CONTAINS_REMOVED",
    "UNIQUE_ITEMS_REMOVED", "ADDITIONAL_ITEMS_ADDED", "ADDITIONAL_ITEMS_EXTENDED",
    "UNEVALUATED_ITEMS_ADDED", "UNEVALUATED_ITEMS_EXTENDED",
    "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL", "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL",
    "ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL", "ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL",
    "ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", "ENUM_ARRAY_EXTENDED",
    "COMBINED_TYPE_EXTENDED", "PRODUCT_TYPE_NARROWED", "SUM_TYPE_EXTENDED", "NOT_TYPE_NARROWED",
})

# Keyword groups: each becomes its own everit schema, so each is compared on its own.
_GROUP_KEYS = ("$ref", "allOf", "anyOf", "oneOf", "not", "enum", "const")
_COMBINERS = ("allOf", "anyOf", "oneOf")
# Keywords that imply a type when "type" is absent (everit infers the schema class from them).
_TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "object": {"properties", "required", "additionalProperties", "patternProperties",
               "minProperties", "maxProperties", "dependencies", "dependentRequired",
               "dependentSchemas", "propertyNames", "unevaluatedProperties"},
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
              "contains", "minContains", "maxContains", "unevaluatedItems"},
}
# Keywords whose values are data, not schemas: never walked for $ref or normalized.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
_NAME_MAPS = frozenset({"properties", "patternProperties", "definitions", "$defs",
                        "dependencies", "dependentSchemas"})

Diff = tuple[tuple[str, ...], str]  # (path relative to the compared pair, Difference.Type)


@dataclass(frozen=True, eq=False)
class _At:
    """A (sub)schema with what is needed to read it: its resolver (base URI) and dialect."""

    schema: Any
    resolver: Resolver[Any]
    draft: int

    def child(self, schema: Any) -> _At:
        resolver = self.resolver
        id_key = "id" if self.draft == 4 else "$id"
        if isinstance(schema, dict) and isinstance(schema.get(id_key), str):
            # An embedded $id moves the base URI for every relative $ref below it.
            resolver = resolver.in_subresource(_SPECS[self.draft].create_resource(schema))
        return _At(schema, resolver, self.draft)

    def part(self, schema: Any) -> _At:
        # A synthetic piece of this schema: same base URI, its $id was already applied.
        return _At(schema, self.resolver, self.draft)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (TypeError, ValueError, RecursionError) as e:
        raise SchemaError(f"Invalid schema: {where}not valid JSON: {e}") from e


def _pointer(path: Iterable[str | int]) -> str:
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


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
        raise SchemaError(f"Invalid schema: {_pointer(e.absolute_path)}: {e.message}") from e
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
    at = _At(schema, registry.crawl().resolver_with_root(root), draft)
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


def _check_refs(at: _At, path: tuple[str, ...], names: bool = False) -> None:
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
                    f"Invalid schema: {_pointer(path)}: unresolvable $ref {ref!r}") from e
        for key, value in at.schema.items():
            if names or key not in _DATA_KEYWORDS:
                _check_refs(at.child(value), (*path, key), not names and key in _NAME_MAPS)
    elif isinstance(at.schema, list):
        for i, value in enumerate(at.schema):
            _check_refs(at.child(value), (*path, str(i)))


class JsonSchema:
    """A parsed JSON Schema; implements :class:`registry.schema.ParsedSchema`."""

    schema_type = "JSON"

    def __init__(self, schema: Any, root: _At, references: tuple[tuple[str, str], ...]) -> None:
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
        try:
            diffs = _Comparer().compare(writer._root, self._root)
        except RecursionError:
            # Long chains of distinct recursive pairs; refusing is the safe answer.
            return ["#/: TYPE_CHANGED: the schemas are nested too deeply to compare"]
        except referencing.exceptions.Unresolvable as e:  # parse looked them all up: unlikely
            return [f"#/: TYPE_CHANGED: unresolvable $ref {e}"]
        errors = [f"{_pointer(path)}: {kind}" for path, kind in diffs if kind not in COMPATIBLE]
        return list(dict.fromkeys(errors))


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


def _value_key(value: Any) -> str:
    # JSON equality for enum/const values: 1 == 1.0, but true != 1 (json.dumps keeps bools).
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        return {k: norm(x) for k, x in v.items()} if isinstance(v, dict) else v

    return json.dumps(norm(value), sort_keys=True)


def _validation_keys(schema: dict[str, Any]) -> list[str]:
    keys = [k for k in _GROUP_KEYS if k in schema]
    if "type" in schema or any(kws & schema.keys() for kws in _TYPE_KEYWORDS.values()):
        keys.append("type")
    return keys


def _deref(at: _At) -> _At:
    seen: set[int] = set()
    while isinstance(at.schema, dict) and isinstance(at.schema.get("$ref"), str):
        # Draft 7 and older ignore a $ref's siblings; 2019+ apply them too (see _groups).
        if at.draft >= 2019 and len(_validation_keys(at.schema)) > 1:
            break
        if id(at.schema) in seen:  # a $ref chain that loops constrains nothing
            return at.part(True)
        seen.add(id(at.schema))
        resolved = at.resolver.lookup(at.schema["$ref"])
        at = _At(resolved.contents, resolved.resolver, at.draft)
    return at


def _groups(at: _At) -> dict[str, _At]:
    """Split a schema into its keyword groups, like everit's synthetic allOf; {} = anything."""
    if not isinstance(at.schema, dict):
        return {}
    keys = _validation_keys(at.schema)
    if len(keys) <= 1:
        return {key: at for key in keys}
    rest = {k: v for k, v in at.schema.items() if k not in _GROUP_KEYS}
    return {key: at.part(rest if key == "type" else {key: at.schema[key]}) for key in keys}


@dataclass(frozen=True)
class _Kind:
    """What everit class a single-group schema would be; number covers integer too."""

    name: str
    crit: str = ""
    subs: tuple[_At, ...] = ()
    integer: bool = False
    synthetic: bool = False  # an anyOf made from a type array, not written as a keyword


def _kind(at: _At) -> _Kind:
    s = at.schema
    for crit in _COMBINERS:
        if crit in s:
            return _Kind("combined", crit, tuple(at.child(x) for x in s[crit]))
    for key in ("not", "enum", "const"):
        if key in s:
            return _Kind(key)
    types = s.get("type") or [t for t, kws in _TYPE_KEYWORDS.items() if kws & s.keys()]
    types = [types] if isinstance(types, str) else list(dict.fromkeys(types))
    if len(types) == 1:
        integer = types[0] == "integer"
        return _Kind("number" if integer else types[0], integer=integer)
    # A type array is everit's anyOf of one schema per type, each with all the keywords.
    subs = tuple(at.part({**s, "type": t}) for t in types)
    return _Kind("combined", "anyOf", subs, synthetic=True)


def _ok(diffs: Iterable[Diff]) -> bool:
    return all(kind in COMPATIBLE for _, kind in diffs)


def _under(prefix: tuple[str, ...], diffs: Iterable[Diff]) -> list[Diff]:
    return [((*prefix, *path), kind) for path, kind in diffs]


def _limits(w: dict[str, Any], r: dict[str, Any], names: dict[str, str]) -> list[Diff]:
    diffs: list[Diff] = []
    for key, name in names.items():
        a, b = w.get(key), r.get(key)
        if a != b:
            change = ("ADDED" if a is None else "REMOVED" if b is None
                      else "INCREASED" if a < b else "DECREASED")
            diffs.append(((key,), f"{name}_{change}"))
    return diffs


def _is_empty(at: _At) -> bool:
    target = _deref(at)
    return target.schema is not False and not _groups(target)


def _extra_value(value: Any) -> Any:
    # An absent, true or {} additionalX/unevaluatedX all let anything through.
    return True if value is None or value == {} else value


class _Comparer:
    def __init__(self) -> None:
        self.active: set[tuple[int, int]] = set()
        # Values keep both schemas alive, so their ids cannot be reused by a new object.
        self.memo: dict[tuple[int, int], tuple[Any, Any, list[Diff]]] = {}

    def compare(self, w: _At, r: _At) -> list[Diff]:
        """Differences from writer ``w`` (Confluent's original) to reader ``r`` (update)."""
        checkpoint()
        w, r = _deref(w), _deref(r)
        key = (id(w.schema), id(r.schema))
        if key in self.memo:
            return self.memo[key][2]
        if key in self.active:
            return []  # a recursive cycle: what it repeats is being checked further up
        self.active.add(key)
        try:
            diffs = self._groups(w, r)
        finally:
            self.active.discard(key)
        self.memo[key] = (w.schema, r.schema, diffs)
        return diffs

    def _groups(self, w: _At, r: _At) -> list[Diff]:
        wg, rg = _groups(w), _groups(r)
        if w.schema is False:  # nothing is ever written
            return []
        if r.schema is False:
            return [((), "TYPE_CHANGED")]
        if not rg:  # the reader takes anything
            return []
        if not wg:
            return [((), "TYPE_CHANGED")]
        if len(wg) == 1 and len(rg) == 1:
            return self._single(next(iter(wg.values())), next(iter(rg.values())))
        # Data valid for the writer passes each writer group; the reader needs each of its
        # groups satisfied, ideally by the same group of the writer, else by any of them.
        diffs: list[Diff] = []
        for group, rpart in rg.items():
            if group in wg:
                diffs += self.compare(wg[group], rpart)
            else:
                tries = [self.compare(wpart, rpart) for wpart in wg.values()]
                diffs += next((d for d in tries if _ok(d)), tries[0])
        return diffs

    def _single(self, w: _At, r: _At) -> list[Diff]:
        wk, rk = _kind(w), _kind(r)
        if wk.name != "combined" and rk.name == "combined":
            if len(rk.subs) == 1:  # a singleton union is its only member
                if _ok(d := self.compare(w, rk.subs[0])):
                    return d
            elif rk.crit != "allOf":
                for sub in rk.subs:  # the writer became one branch of a union
                    if _ok(d := self.compare(w, sub)):
                        return [*d, ((), "SUM_TYPE_EXTENDED")]
        elif wk.name == "combined" and rk.name != "combined":
            if len(wk.subs) == 1 and _ok(d := self.compare(wk.subs[0], r)):
                return d
            if wk.crit == "allOf":  # data meets every member, so one that fits the reader will do
                for sub in wk.subs:
                    if _ok(d := self.compare(sub, r)):
                        return [*d, ((), "PRODUCT_TYPE_NARROWED")]
        if wk.name != rk.name:
            return [((), "TYPE_CHANGED")]
        if wk.name in ("boolean", "null"):  # nothing to constrain beyond the type
            return []
        return getattr(self, f"_{wk.name}")(w, r, wk, rk)  # type: ignore[no-any-return]

    def _enum(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        a = {_value_key(v) for v in w.schema["enum"]}
        b = {_value_key(v) for v in r.schema["enum"]}
        if a == b:
            return []
        kind = "EXTENDED" if b >= a else "NARROWED" if a >= b else "CHANGED"
        return [(("enum",), f"ENUM_ARRAY_{kind}")]

    def _const(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        if _value_key(w.schema["const"]) == _value_key(r.schema["const"]):
            return []
        return [(("const",), "ENUM_ARRAY_CHANGED")]

    def _not(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        # Reversed: the reader excludes less exactly when its "not" fits inside the writer's.
        d = self.compare(r.child(r.schema["not"]), w.child(w.schema["not"]))
        return [(("not",), "NOT_TYPE_NARROWED" if _ok(d) else "NOT_TYPE_EXTENDED")]

    def _string(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        ws, rs = w.schema, r.schema
        diffs = _limits(ws, rs, {"maxLength": "MAX_LENGTH", "minLength": "MIN_LENGTH"})
        if ws.get("pattern") != rs.get("pattern"):
            change = ("ADDED" if "pattern" not in ws else "REMOVED" if "pattern" not in rs
                      else "CHANGED")
            diffs.append((("pattern",), f"PATTERN_{change}"))
        return diffs

    def _number(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        ws, rs = _bounds(w), _bounds(r)
        diffs = _limits(ws, rs, {"maximum": "MAXIMUM", "minimum": "MINIMUM",
                                 "exclusiveMaximum": "EXCLUSIVE_MAXIMUM",
                                 "exclusiveMinimum": "EXCLUSIVE_MINIMUM"})
        a, b = (Fraction(str(s["multipleOf"])) if "multipleOf" in s else None for s in (ws, rs))
        if a != b:
            change = ("ADDED" if a is None else "REMOVED" if b is None
                      else "EXPANDED" if (b / a).denominator == 1
                      else "REDUCED" if (a / b).denominator == 1 else "CHANGED")
            diffs.append((("multipleOf",), f"MULTIPLE_OF_{change}"))
        if wk.integer != rk.integer:  # integer -> number widens, number -> integer narrows
            diffs.append(((), "TYPE_EXTENDED" if wk.integer else "TYPE_NARROWED"))
        return diffs

    def _combined(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        diffs: list[Diff] = []
        if wk.crit != rk.crit:
            # Only criterion changes that accept more: to anyOf, or from a singleton.
            single = len(wk.subs) == 1
            if rk.crit == "anyOf" or (single and (rk.crit == "oneOf" or len(rk.subs) == 1)):
                diffs.append(((), "COMBINED_TYPE_EXTENDED"))
            else:
                return [((), "COMBINED_TYPE_CHANGED")]
        wsubs, rsubs = _unique(wk.subs), _unique(rk.subs)
        if len(wsubs) != len(rsubs):
            change = "EXTENDED" if len(wsubs) < len(rsubs) else "NARROWED"
            diffs.append(((), f"{'PRODUCT' if rk.crit == 'allOf' else 'SUM'}_TYPE_{change}"))
        # Every member of the smaller side needs its own compatible partner on the other side:
        # a maximum bipartite matching over the compatible (writer, reader) member pairs.
        edges = [[j for j, (_, rs) in enumerate(rsubs) if _ok(self.compare(ws, rs))]
                 for _, ws in wsubs]
        matched = _matching(edges)
        if len(matched) < min(len(wsubs), len(rsubs)):
            # Confluent stops here; naming why a member found no partner is kinder, and when
            # one reader member has the same shape (the "object" of ["object", "null"]) that
            # pair's differences are the likely reason.
            for index, ws in (m for i, m in enumerate(wsubs) if i not in matched.values()):
                partners = [rs for _, rs in rsubs if _shape(rs) == _shape(ws)]
                if len(partners) == 1:
                    prefix = (wk.crit, str(index)) if not wk.synthetic else ()
                    diffs += _under(prefix, self.compare(ws, partners[0]))
            diffs.append(((), "COMBINED_TYPE_SUBSCHEMAS_CHANGED"))
        return diffs

    def _object(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        ws, rs = w.schema, r.schema
        wprops, rprops = ws.get("properties", {}), rs.get("properties", {})
        wreq, rreq = set(ws.get("required", ())), set(rs.get("required", ()))
        diffs: list[Diff] = []
        for name in (n for n in wprops if n in rprops):
            if name in wreq and name not in rreq:
                diffs.append((("required", name), "REQUIRED_ATTRIBUTE_REMOVED"))
            elif name in rreq and name not in wreq:
                default = "_WITH_DEFAULT" if _has_default(r.child(rprops[name])) else ""
                diffs.append((("required", name), f"REQUIRED_ATTRIBUTE{default}_ADDED"))
        for name in [*wprops, *(n for n in rprops if n not in wprops)]:
            if name in wprops and name in rprops:
                d = self.compare(w.child(wprops[name]), r.child(rprops[name]))
            elif name in wprops:
                d = self._removed(w.child(wprops[name]), _extra_for(r, name), "PROPERTY")
            else:
                d = self._added(_extra_for(w, name), r.child(rprops[name]), name in rreq)
            diffs += _under(("properties", name), d)
        diffs += self._dependencies(w, r)
        for key in ("additionalProperties", "unevaluatedProperties"):
            diffs += self._extra(w, r, ws.get(key), rs.get(key), key)
        return diffs + _limits(ws, rs, {"maxProperties": "MAX_PROPERTIES",
                                        "minProperties": "MIN_PROPERTIES"})

    def _removed(self, wpart: _At, covering: _At | None, what: str) -> list[Diff]:
        """A property/item the writer declares and the reader does not."""
        if covering is None:
            closed = "WITH_FALSE_" if wpart.schema is False else ""
            return [((), f"{what}_{closed}REMOVED_FROM_CLOSED_CONTENT_MODEL")]
        if covering.schema is True:
            return [((), f"{what}_REMOVED_FROM_OPEN_CONTENT_MODEL")]
        d = self.compare(wpart, covering)
        return [*d, ((), f"{what}_REMOVED_{'IS' if _ok(d) else 'NOT'}_COVERED_BY_PARTIALLY_OPEN"
                         "_CONTENT_MODEL")]

    def _added(self, covering: _At | None, rpart: _At, required: bool | None) -> list[Diff]:
        """A property (``required`` says if it is) or item (None) the reader declares, not the
        writer. Confluent 8.x splits 7.x's PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL three ways."""
        what = "ITEM" if required is None else "PROPERTY"
        if covering is not None and covering.schema is True:  # the writer is open
            if _is_empty(rpart):
                return [((), f"{what}_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL")]
            return [((), f"{_added_kind(rpart, required)}_ADDED_TO_OPEN_CONTENT_MODEL")]
        diffs: list[Diff] = []
        if covering is not None:  # partially open: the writer's catch-all must fit the reader
            diffs += self.compare(covering, rpart)
            covered = "IS" if _ok(diffs) else "NOT"
            diffs.append(((), f"{what}_ADDED_{covered}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"))
        if required is None:
            return diffs or [((), "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL")]
        return [*diffs, ((), f"{_added_kind(rpart, required)}_ADDED_TO_UNOPEN_CONTENT_MODEL")]

    def _dependencies(self, w: _At, r: _At) -> list[Diff]:
        (warr, wsch), (rarr, rsch) = _deps(w.schema), _deps(r.schema)
        diffs: list[Diff] = []
        for name in [*warr, *(n for n in rarr if n not in warr)]:
            a, b = set(warr.get(name, ())), set(rarr.get(name, ()))
            change = ("REMOVED" if name not in rarr else "ADDED" if name not in warr
                      else "" if a == b else "EXTENDED" if b > a else "NARROWED" if a > b
                      else "CHANGED")
            if change:
                diffs.append((("dependencies", name), f"DEPENDENCY_ARRAY_{change}"))
        for name in [*wsch, *(n for n in rsch if n not in wsch)]:
            if name not in rsch or name not in wsch:
                change = "REMOVED" if name not in rsch else "ADDED"
                diffs.append((("dependencies", name), f"DEPENDENCY_SCHEMA_{change}"))
            else:
                d = self.compare(w.child(wsch[name]), r.child(rsch[name]))
                diffs += _under(("dependencies", name), d)
        return diffs

    def _extra(self, w: _At, r: _At, wval: Any, rval: Any, key: str) -> list[Diff]:
        """additionalProperties/Items, unevaluatedProperties/Items: the catch-all schemas."""
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()  # additionalItems -> ADDITIONAL_ITEMS
        a, b = _extra_value(wval), _extra_value(rval)
        if (a is False) != (b is False):
            return [((key,), f"{name}_{'REMOVED' if b is False else 'ADDED'}")]
        if a is True and isinstance(b, dict):
            return [((key,), f"{name}_NARROWED")]
        if isinstance(a, dict) and b is True:
            return [((key,), f"{name}_EXTENDED")]
        if isinstance(a, dict) and isinstance(b, dict):
            return _under((key,), self.compare(w.child(a), r.child(b)))
        return []

    def _array(self, w: _At, r: _At, wk: _Kind, rk: _Kind) -> list[Diff]:
        ws, rs = w.schema, r.schema
        (wall, wtuple, wextra), (rall, rtuple, rextra) = _items(w), _items(r)
        diffs: list[Diff] = []
        if wall is not None and rall is not None:
            diffs += _under(("items",), self.compare(w.child(wall), r.child(rall)))
        elif wall is not None or rall is not None:
            diffs.append((("items",), "SCHEMA_ADDED" if wall is None else "SCHEMA_REMOVED"))
        tuple_key = "prefixItems" if w.draft >= 2020 else "items"
        for i in range(max(len(wtuple), len(rtuple))):
            if i < len(wtuple) and i < len(rtuple):
                d = self.compare(w.child(wtuple[i]), r.child(rtuple[i]))
            elif i < len(wtuple):
                d = self._removed(w.child(wtuple[i]), _extra_item(r), "ITEM")
            else:
                d = self._added(_extra_item(w), r.child(rtuple[i]), None)
            diffs += _under((tuple_key, str(i)), d)
        diffs += self._extra(w, r, ws.get(wextra), rs.get(rextra), wextra)
        diffs += self._extra(w, r, ws.get("unevaluatedItems"), rs.get("unevaluatedItems"),
                             "unevaluatedItems")
        diffs += _limits(ws, rs, {"maxItems": "MAX_ITEMS", "minItems": "MIN_ITEMS",
                                  "maxContains": "MAX_CONTAINS", "minContains": "MIN_CONTAINS"})
        if bool(ws.get("uniqueItems")) != bool(rs.get("uniqueItems")):
            change = "REMOVED" if ws.get("uniqueItems") else "ADDED"
            diffs.append((("uniqueItems",), f"UNIQUE_ITEMS_{change}"))
        return diffs


def _unique(subs: Sequence[_At]) -> list[tuple[int, _At]]:
    # Confluent collapses equal members (a set); keep each one's first position for paths.
    firsts: dict[str, tuple[int, _At]] = {}
    for i, sub in enumerate(subs):
        firsts.setdefault(_value_key(sub.schema), (i, sub))
    return list(firsts.values())


def _shape(at: _At) -> tuple[str, ...]:
    groups = _groups(_deref(at))
    return (_kind(groups["type"]).name,) if list(groups) == ["type"] else tuple(groups)


def _matching(edges: list[list[int]]) -> dict[int, int]:
    """A maximum bipartite matching (Kuhn's augmenting paths) as {partner: i}; edges[i] = the
    partners i may take."""
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(edges)):
        augment(i, set())
    return owner


def _added_kind(rpart: _At, required: bool | None) -> str:
    if required is None:
        return "ITEM"
    if not required:
        return "OPTIONAL_PROPERTY"
    return "REQUIRED_PROPERTY_WITH_DEFAULT" if _has_default(rpart) else "REQUIRED_PROPERTY"


def _has_default(at: _At) -> bool:
    target = _deref(at).schema
    return isinstance(target, dict) and "default" in target


def _bounds(at: _At) -> dict[str, Any]:
    # Draft 4 spells an exclusive bound as a boolean beside maximum/minimum. Read as "also an
    # exclusive bound at that value", adding or dropping the flag compares like later drafts.
    bounds = dict(at.schema)
    for ex, limit in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
        if isinstance(bounds.get(ex), bool):
            bounds[ex] = bounds.get(limit) if bounds[ex] else None
    return bounds


def _deps(s: dict[str, Any]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    # Draft 7 "dependencies" mixes both kinds; 2019+ splits them into two keywords.
    deps = {**s.get("dependencies", {}), **s.get("dependentRequired", {}),
            **s.get("dependentSchemas", {})}
    arrays = {k: v for k, v in deps.items() if isinstance(v, list)}
    return arrays, {k: v for k, v in deps.items() if not isinstance(v, list)}


def _extra_for(at: _At, name: str) -> _At | None:
    """What ``at`` says about an undeclared property ``name``: a schema for it (``True`` if the
    model is fully open), or None when the model is closed to it."""
    s = at.schema
    for pattern, schema in s.get("patternProperties", {}).items():
        try:
            if re.search(pattern, name):
                return at.child(schema)
        except re.error:  # an ECMA-262 regex Python cannot compile: assume no match
            continue
    return _catch_all(at, s.get("additionalProperties"), s.get("unevaluatedProperties"))


def _extra_item(at: _At) -> _At | None:
    _, _, extra = _items(at)
    return _catch_all(at, at.schema.get(extra), at.schema.get("unevaluatedItems"))


def _catch_all(at: _At, additional: Any, unevaluated: Any) -> _At | None:
    additional, unevaluated = _extra_value(additional), _extra_value(unevaluated)
    chosen = unevaluated if additional is True else additional
    return None if chosen is False else at.child(chosen)


def _items(at: _At) -> tuple[Any, list[Any], str]:
    """(schema for every item or None, positional item schemas, keyword for the items after
    them): 2020-12 spells tuples prefixItems + items, older drafts items + additionalItems."""
    s = at.schema
    if at.draft >= 2020:
        prefix = s.get("prefixItems", [])
        if prefix:
            return None, prefix, "items"
        return _some(s.get("items")), [], "additionalItems"  # not a 2020-12 keyword: absent
    items = s.get("items")
    if isinstance(items, list):
        return None, items, "additionalItems"
    return _some(items), [], "additionalItems"


def _some(schema: Any) -> Any:
    # An "items" of true or {} constrains nothing: the same as leaving it out.
    return None if schema is True or schema == {} else schema
