"""JSON Schema compatibility: Confluent's JSON Schema diff between a writer and a reader.

A port of the rules of io.confluent.kafka.schemaregistry.json.diff (8.x), written anew: the
writer is Confluent's "original", the reader its "update"; every change found is a (JSON
pointer, Difference.Type) pair and the check fails on any type outside ``COMPATIBLE``. The
schemas arrive parsed (``json_schema.parse``): every ``$ref`` resolves, each node carries its
resolver and dialect (:class:`registry.json_schema.At`). See ``json_schema.py`` for how
everit's schema classes are mirrored and where the sound answer is given instead of
Confluent's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import referencing.exceptions

from registry.json_schema_shapes import (
    Diff,
    Kind,
    added_kind,
    bound_changes,
    bounds_of,
    dependencies_of,
    deref,
    extra_for,
    extra_item,
    extra_value,
    groups,
    has_default,
    is_empty,
    items_of,
    kind,
    matching,
    shape,
    under_path,
    unique,
    value_key,
)
from registry.limits import checkpoint

if TYPE_CHECKING:
    from registry.json_schema import At

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




def pointer(path: Iterable[str | int]) -> str:
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)



def all_compatible(diffs: Iterable[Diff]) -> bool:
    return all(kind in COMPATIBLE for _, kind in diffs)


def compatibility_errors(writer: At, reader: At) -> list[str]:
    """Confluent's messages ("<pointer>: <Difference.Type>") for each incompatible change."""
    try:
        diffs = _Comparer().compare(writer, reader)
    except RecursionError:
        # Long chains of distinct recursive pairs; refusing is the safe answer.
        return ["#/: TYPE_CHANGED: the schemas are nested too deeply to compare"]
    except referencing.exceptions.Unresolvable as e:  # parse looked them all up: unlikely
        return [f"#/: TYPE_CHANGED: unresolvable $ref {e}"]
    errors = [f"{pointer(path)}: {kind}" for path, kind in diffs if kind not in COMPATIBLE]
    return list(dict.fromkeys(errors))


class _Comparer:
    def __init__(self) -> None:
        self.active: set[tuple[int, int]] = set()
        # Values keep both schemas alive, so their ids cannot be reused by a new object.
        self.memo: dict[tuple[int, int], tuple[Any, Any, list[Diff]]] = {}

    def compare(self, w: At, r: At) -> list[Diff]:
        """Differences from writer ``w`` (Confluent's original) to reader ``r`` (update)."""
        checkpoint()
        w, r = deref(w), deref(r)
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

    def _groups(self, w: At, r: At) -> list[Diff]:
        wg, rg = groups(w), groups(r)
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
                diffs += next((d for d in tries if all_compatible(d)), tries[0])
        return diffs

    def _single(self, w: At, r: At) -> list[Diff]:
        wk, rk = kind(w), kind(r)
        if wk.name != "combined" and rk.name == "combined":
            if len(rk.subs) == 1:  # a singleton union is its only member
                if all_compatible(d := self.compare(w, rk.subs[0])):
                    return d
            elif rk.crit != "allOf":
                for sub in rk.subs:  # the writer became one branch of a union
                    if all_compatible(d := self.compare(w, sub)):
                        return [*d, ((), "SUM_TYPE_EXTENDED")]
        elif wk.name == "combined" and rk.name != "combined":
            if len(wk.subs) == 1 and all_compatible(d := self.compare(wk.subs[0], r)):
                return d
            if wk.crit == "allOf":  # data meets every member, so one that fits the reader will do
                for sub in wk.subs:
                    if all_compatible(d := self.compare(sub, r)):
                        return [*d, ((), "PRODUCT_TYPE_NARROWED")]
        if wk.name != rk.name:
            return [((), "TYPE_CHANGED")]
        if wk.name in ("boolean", "null"):  # nothing to constrain beyond the type
            return []
        return getattr(self, f"_{wk.name}")(w, r, wk, rk)  # type: ignore[no-any-return]

    def _enum(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        a = {value_key(v) for v in w.schema["enum"]}
        b = {value_key(v) for v in r.schema["enum"]}
        if a == b:
            return []
        kind = "EXTENDED" if b >= a else "NARROWED" if a >= b else "CHANGED"
        return [(("enum",), f"ENUM_ARRAY_{kind}")]

    def _const(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        if value_key(w.schema["const"]) == value_key(r.schema["const"]):
            return []
        return [(("const",), "ENUM_ARRAY_CHANGED")]

    def _not(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        # Reversed: the reader excludes less exactly when its "not" fits inside the writer's.
        d = self.compare(r.child(r.schema["not"]), w.child(w.schema["not"]))
        return [(("not",), "NOT_TYPE_NARROWED" if all_compatible(d) else "NOT_TYPE_EXTENDED")]

    def _string(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        ws, rs = w.schema, r.schema
        diffs = bound_changes(ws, rs, {"maxLength": "MAX_LENGTH", "minLength": "MIN_LENGTH"})
        if ws.get("pattern") != rs.get("pattern"):
            change = ("ADDED" if "pattern" not in ws else "REMOVED" if "pattern" not in rs
                      else "CHANGED")
            diffs.append((("pattern",), f"PATTERN_{change}"))
        return diffs

    def _number(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        ws, rs = bounds_of(w), bounds_of(r)
        diffs = bound_changes(ws, rs, {"maximum": "MAXIMUM", "minimum": "MINIMUM",
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

    def _combined(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        diffs: list[Diff] = []
        if wk.crit != rk.crit:
            # Only criterion changes that accept more: to anyOf, or from a singleton.
            single = len(wk.subs) == 1
            if rk.crit == "anyOf" or (single and (rk.crit == "oneOf" or len(rk.subs) == 1)):
                diffs.append(((), "COMBINED_TYPE_EXTENDED"))
            else:
                return [((), "COMBINED_TYPE_CHANGED")]
        wsubs, rsubs = unique(wk.subs), unique(rk.subs)
        if len(wsubs) != len(rsubs):
            change = "EXTENDED" if len(wsubs) < len(rsubs) else "NARROWED"
            diffs.append(((), f"{'PRODUCT' if rk.crit == 'allOf' else 'SUM'}_TYPE_{change}"))
        # Every member of the smaller side needs its own compatible partner on the other side:
        # a maximum bipartite matching over the compatible (writer, reader) member pairs.
        edges = [[j for j, (_, rs) in enumerate(rsubs) if all_compatible(self.compare(ws, rs))]
                 for _, ws in wsubs]
        matched = matching(edges)
        if len(matched) < min(len(wsubs), len(rsubs)):
            # Confluent stops here; naming why a member found no partner is kinder, and when
            # one reader member has the same shape (the "object" of ["object", "null"]) that
            # pair's differences are the likely reason.
            for index, ws in (m for i, m in enumerate(wsubs) if i not in matched.values()):
                partners = [rs for _, rs in rsubs if shape(rs) == shape(ws)]
                if len(partners) == 1:
                    prefix = (wk.crit, str(index)) if not wk.synthetic else ()
                    diffs += under_path(prefix, self.compare(ws, partners[0]))
            diffs.append(((), "COMBINED_TYPE_SUBSCHEMAS_CHANGED"))
        return diffs

    def _object(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        ws, rs = w.schema, r.schema
        wprops, rprops = ws.get("properties", {}), rs.get("properties", {})
        wreq, rreq = set(ws.get("required", ())), set(rs.get("required", ()))
        diffs: list[Diff] = []
        for name in (n for n in wprops if n in rprops):
            if name in wreq and name not in rreq:
                diffs.append((("required", name), "REQUIRED_ATTRIBUTE_REMOVED"))
            elif name in rreq and name not in wreq:
                default = "_WITH_DEFAULT" if has_default(r.child(rprops[name])) else ""
                diffs.append((("required", name), f"REQUIRED_ATTRIBUTE{default}_ADDED"))
        for name in [*wprops, *(n for n in rprops if n not in wprops)]:
            if name in wprops and name in rprops:
                d = self.compare(w.child(wprops[name]), r.child(rprops[name]))
            elif name in wprops:
                d = self._removed(w.child(wprops[name]), extra_for(r, name), "PROPERTY")
            else:
                d = self._added(extra_for(w, name), r.child(rprops[name]), name in rreq)
            diffs += under_path(("properties", name), d)
        diffs += self._dependencies(w, r)
        for key in ("additionalProperties", "unevaluatedProperties"):
            diffs += self._extra(w, r, ws.get(key), rs.get(key), key)
        return diffs + bound_changes(ws, rs, {"maxProperties": "MAX_PROPERTIES",
                                        "minProperties": "MIN_PROPERTIES"})

    def _removed(self, wpart: At, covering: At | None, what: str) -> list[Diff]:
        """A property/item the writer declares and the reader does not."""
        if covering is None:
            closed = "WITH_FALSE_" if wpart.schema is False else ""
            return [((), f"{what}_{closed}REMOVED_FROM_CLOSED_CONTENT_MODEL")]
        if covering.schema is True:
            return [((), f"{what}_REMOVED_FROM_OPEN_CONTENT_MODEL")]
        d = self.compare(wpart, covering)
        covered = "IS" if all_compatible(d) else "NOT"
        return [*d, ((), f"{what}_REMOVED_{covered}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL")]

    def _added(self, covering: At | None, rpart: At, required: bool | None) -> list[Diff]:
        """A property (``required`` says if it is) or item (None) the reader declares, not the
        writer. Confluent 8.x splits 7.x's PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL three ways."""
        what = "ITEM" if required is None else "PROPERTY"
        if covering is not None and covering.schema is True:  # the writer is open
            if is_empty(rpart):
                return [((), f"{what}_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL")]
            return [((), f"{added_kind(rpart, required)}_ADDED_TO_OPEN_CONTENT_MODEL")]
        diffs: list[Diff] = []
        if covering is not None:  # partially open: the writer's catch-all must fit the reader
            diffs += self.compare(covering, rpart)
            covered = "IS" if all_compatible(diffs) else "NOT"
            diffs.append(((), f"{what}_ADDED_{covered}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"))
        if required is None:
            return diffs or [((), "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL")]
        return [*diffs, ((), f"{added_kind(rpart, required)}_ADDED_TO_UNOPEN_CONTENT_MODEL")]

    def _dependencies(self, w: At, r: At) -> list[Diff]:
        (warr, wsch), (rarr, rsch) = dependencies_of(w.schema), dependencies_of(r.schema)
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
                diffs += under_path(("dependencies", name), d)
        return diffs

    def _extra(self, w: At, r: At, wval: Any, rval: Any, key: str) -> list[Diff]:
        """additionalProperties/Items, unevaluatedProperties/Items: the catch-all schemas."""
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()  # additionalItems -> ADDITIONAL_ITEMS
        a, b = extra_value(wval), extra_value(rval)
        if (a is False) != (b is False):
            return [((key,), f"{name}_{'REMOVED' if b is False else 'ADDED'}")]
        if a is True and isinstance(b, dict):
            return [((key,), f"{name}_NARROWED")]
        if isinstance(a, dict) and b is True:
            return [((key,), f"{name}_EXTENDED")]
        if isinstance(a, dict) and isinstance(b, dict):
            return under_path((key,), self.compare(w.child(a), r.child(b)))
        return []

    def _array(self, w: At, r: At, wk: Kind, rk: Kind) -> list[Diff]:
        ws, rs = w.schema, r.schema
        (wall, wtuple, wextra), (rall, rtuple, rextra) = items_of(w), items_of(r)
        diffs: list[Diff] = []
        if wall is not None and rall is not None:
            diffs += under_path(("items",), self.compare(w.child(wall), r.child(rall)))
        elif wall is not None or rall is not None:
            diffs.append((("items",), "SCHEMA_ADDED" if wall is None else "SCHEMA_REMOVED"))
        tuple_key = "prefixItems" if w.draft >= 2020 else "items"
        for i in range(max(len(wtuple), len(rtuple))):
            if i < len(wtuple) and i < len(rtuple):
                d = self.compare(w.child(wtuple[i]), r.child(rtuple[i]))
            elif i < len(wtuple):
                d = self._removed(w.child(wtuple[i]), extra_item(r), "ITEM")
            else:
                d = self._added(extra_item(w), r.child(rtuple[i]), None)
            diffs += under_path((tuple_key, str(i)), d)
        diffs += self._extra(w, r, ws.get(wextra), rs.get(rextra), wextra)
        diffs += self._extra(w, r, ws.get("unevaluatedItems"), rs.get("unevaluatedItems"),
                             "unevaluatedItems")
        diffs += bound_changes(ws, rs, {"maxItems": "MAX_ITEMS", "minItems": "MIN_ITEMS",
                                  "maxContains": "MAX_CONTAINS", "minContains": "MIN_CONTAINS"})
        if bool(ws.get("uniqueItems")) != bool(rs.get("uniqueItems")):
            change = "REMOVED" if ws.get("uniqueItems") else "ADDED"
            diffs.append((("uniqueItems",), f"UNIQUE_ITEMS_{change}"))
        return diffs
