"""How Confluent's JSON Schema diff sees a schema: as the everit schema objects it would
become. A schema dict is split into keyword groups (``groups``: everit makes a synthetic
``allOf`` of them), each group is classified like the everit class it would become (``kind``),
and ``$ref`` chains are followed (``deref``). Plus the small readings of keywords the
comparison (``json_schema_diff.py``) needs: bounds, dependencies, items, the schema covering an
extra property or item.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.json_schema import At

Diff = tuple[tuple[str, ...], str]  # (path relative to the compared pair, Difference.Type)

# Keyword groups: each becomes its own everit schema, so each is compared on its own.
GROUP_KEYS = ("$ref", "allOf", "anyOf", "oneOf", "not", "enum", "const")
COMBINERS = ("allOf", "anyOf", "oneOf")
# Keywords that imply a type when "type" is absent (everit infers the schema class from them).
TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "object": {"properties", "required", "additionalProperties", "patternProperties",
               "minProperties", "maxProperties", "dependencies", "dependentRequired",
               "dependentSchemas", "propertyNames", "unevaluatedProperties"},
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
              "contains", "minContains", "maxContains", "unevaluatedItems"},
}


def value_key(value: Any) -> str:
    # JSON equality for enum/const values: 1 == 1.0, but true != 1 (json.dumps keeps bools).
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        return {k: norm(x) for k, x in v.items()} if isinstance(v, dict) else v

    return json.dumps(norm(value), sort_keys=True)


def validation_keys(schema: dict[str, Any]) -> list[str]:
    keys = [k for k in GROUP_KEYS if k in schema]
    if "type" in schema or any(kws & schema.keys() for kws in TYPE_KEYWORDS.values()):
        keys.append("type")
    return keys


def deref(at: At) -> At:
    seen: set[int] = set()
    while isinstance(at.schema, dict) and isinstance(at.schema.get("$ref"), str):
        # Draft 7 and older ignore a $ref's siblings; 2019+ apply them too (see groups).
        if at.draft >= 2019 and len(validation_keys(at.schema)) > 1:
            break
        if id(at.schema) in seen:  # a $ref chain that loops constrains nothing
            return at.part(True)
        seen.add(id(at.schema))
        resolved = at.resolver.lookup(at.schema["$ref"])
        at = dataclasses.replace(at, schema=resolved.contents, resolver=resolved.resolver)
    return at


def groups(at: At) -> dict[str, At]:
    """Split a schema into its keyword groups, like everit's synthetic allOf; {} = anything."""
    if not isinstance(at.schema, dict):
        return {}
    keys = validation_keys(at.schema)
    if len(keys) <= 1:
        return {key: at for key in keys}
    rest = {k: v for k, v in at.schema.items() if k not in GROUP_KEYS}
    return {key: at.part(rest if key == "type" else {key: at.schema[key]}) for key in keys}


@dataclass(frozen=True)
class Kind:
    """What everit class a single-group schema would be; number covers integer too."""

    name: str
    crit: str = ""
    subs: tuple[At, ...] = ()
    integer: bool = False
    synthetic: bool = False  # an anyOf made from a type array, not written as a keyword


def kind(at: At) -> Kind:
    s = at.schema
    for crit in COMBINERS:
        if crit in s:
            return Kind("combined", crit, tuple(at.child(x) for x in s[crit]))
    for key in ("not", "enum", "const"):
        if key in s:
            return Kind(key)
    types = s.get("type") or [t for t, kws in TYPE_KEYWORDS.items() if kws & s.keys()]
    types = [types] if isinstance(types, str) else list(dict.fromkeys(types))
    if len(types) == 1:
        integer = types[0] == "integer"
        return Kind("number" if integer else types[0], integer=integer)
    # A type array is everit's anyOf of one schema per type, each with all the keywords.
    subs = tuple(at.part({**s, "type": t}) for t in types)
    return Kind("combined", "anyOf", subs, synthetic=True)


def under_path(prefix: tuple[str, ...], diffs: Iterable[Diff]) -> list[Diff]:
    return [((*prefix, *path), kind) for path, kind in diffs]


def bound_changes(w: dict[str, Any], r: dict[str, Any], names: dict[str, str]) -> list[Diff]:
    diffs: list[Diff] = []
    for key, name in names.items():
        a, b = w.get(key), r.get(key)
        if a != b:
            change = ("ADDED" if a is None else "REMOVED" if b is None
                      else "INCREASED" if a < b else "DECREASED")
            diffs.append(((key,), f"{name}_{change}"))
    return diffs


def is_empty(at: At) -> bool:
    target = deref(at)
    return target.schema is not False and not groups(target)


def extra_value(value: Any) -> Any:
    # An absent, true or {} additionalX/unevaluatedX all let anything through.
    return True if value is None or value == {} else value


def unique(subs: Sequence[At]) -> list[tuple[int, At]]:
    # Confluent collapses equal members (a set); keep each one's first position for paths.
    firsts: dict[str, tuple[int, At]] = {}
    for i, sub in enumerate(subs):
        firsts.setdefault(value_key(sub.schema), (i, sub))
    return list(firsts.values())


def shape(at: At) -> tuple[str, ...]:
    parts = groups(deref(at))
    return (kind(parts["type"]).name,) if list(parts) == ["type"] else tuple(parts)


def matching(edges: list[list[int]]) -> dict[int, int]:
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


def added_kind(rpart: At, required: bool | None) -> str:
    if required is None:
        return "ITEM"
    if not required:
        return "OPTIONAL_PROPERTY"
    return "REQUIRED_PROPERTY_WITH_DEFAULT" if has_default(rpart) else "REQUIRED_PROPERTY"


def has_default(at: At) -> bool:
    target = deref(at).schema
    return isinstance(target, dict) and "default" in target


def bounds_of(at: At) -> dict[str, Any]:
    # Draft 4 spells an exclusive bound as a boolean beside maximum/minimum. Read as "also an
    # exclusive bound at that value", adding or dropping the flag compares like later drafts.
    bounds = dict(at.schema)
    for ex, limit in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
        if isinstance(bounds.get(ex), bool):
            bounds[ex] = bounds.get(limit) if bounds[ex] else None
    return bounds


def dependencies_of(s: dict[str, Any]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    # Draft 7 "dependencies" mixes both kinds; 2019+ splits them into two keywords.
    deps = {**s.get("dependencies", {}), **s.get("dependentRequired", {}),
            **s.get("dependentSchemas", {})}
    arrays = {k: v for k, v in deps.items() if isinstance(v, list)}
    return arrays, {k: v for k, v in deps.items() if not isinstance(v, list)}


def extra_for(at: At, name: str) -> At | None:
    """What ``at`` says about an undeclared property ``name``: a schema for it (``True`` if the
    model is fully open), or None when the model is closed to it."""
    s = at.schema
    for pattern, schema in s.get("patternProperties", {}).items():
        try:
            if re.search(pattern, name):
                return at.child(schema)
        except re.error:  # an ECMA-262 regex Python cannot compile: assume no match
            continue
    return catch_all(at, s.get("additionalProperties"), s.get("unevaluatedProperties"))


def extra_item(at: At) -> At | None:
    _, _, extra = items_of(at)
    return catch_all(at, at.schema.get(extra), at.schema.get("unevaluatedItems"))


def catch_all(at: At, additional: Any, unevaluated: Any) -> At | None:
    additional, unevaluated = extra_value(additional), extra_value(unevaluated)
    chosen = unevaluated if additional is True else additional
    return None if chosen is False else at.child(chosen)


def items_of(at: At) -> tuple[Any, list[Any], str]:
    """(schema for every item or None, positional item schemas, keyword for the items after
    them): 2020-12 spells tuples prefixItems + items, older drafts items + additionalItems."""
    s = at.schema
    if at.draft >= 2020:
        prefix = s.get("prefixItems", [])
        if prefix:
            return None, prefix, "items"
        return some_schema(s.get("items")), [], "additionalItems"  # not a 2020-12 keyword: absent
    items = s.get("items")
    if isinstance(items, list):
        return None, items, "additionalItems"
    return some_schema(items), [], "additionalItems"


def some_schema(schema: Any) -> Any:
    # An "items" of true or {} constrains nothing: the same as leaving it out.
    return None if schema is True or schema == {} else schema
