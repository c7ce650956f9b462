"""Avro schema resolution: can data written with one schema be read with another?

The rules of Avro Java's ``SchemaCompatibility`` (the checker behind Confluent's
AvroCompatibilityChecker), applied to the reader's and the writer's parsed graphs
(:class:`registry.avro.Node`): types must match or promote, every union branch the writer may
use must be readable, named types match by unqualified name or reader alias, and a reader field
missing in the writer needs a default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registry.limits import checkpoint

if TYPE_CHECKING:
    from registry.avro import Node

# Writer types a reader type accepts besides its own (spec, "Schema Resolution").
PROMOTIONS = {"long": {"int"}, "float": {"int", "long"}, "double": {"int", "long", "float"},
               "bytes": {"string"}, "string": {"bytes"}}


class Resolution:
    """Avro Java's SchemaCompatibility rules. ``check(reader, writer)`` lists why data written
    with ``writer`` cannot be read with ``reader``; paths point into the reader schema."""

    def __init__(self) -> None:
        self.memo: dict[tuple[int, int], list[str]] = {}

    def check(self, r: Node, w: Node, path: str) -> list[str]:
        checkpoint()
        key = (id(r), id(w))
        if key in self.memo:
            # Done before, or in progress further up a recursive schema; like Java, a pair in
            # progress counts as compatible unless something else proves otherwise.
            return self.memo[key]
        self.memo[key] = []
        self.memo[key] = errors = self._calc(r, w, path)
        return errors

    def _calc(self, r: Node, w: Node, path: str) -> list[str]:
        at = path or "/"
        if r.type == w.type:
            if r.primitive:
                return []
            if r.type in ("array", "map"):
                assert r.child is not None and w.child is not None
                key = "items" if r.type == "array" else "values"
                return self.check(r.child, w.child, f"{path}/{key}")
            if r.type == "union":  # every branch the writer may have used must be readable
                pairs = [(b, f"{path}/{i}") for i, b in enumerate(w.branches)]
                return [e for b, at_b in pairs for e in self.check(r, b, at_b)]
            return self._named(r, w, path)
        if w.type == "union":
            return [e for b in w.branches for e in self.check(r, b, path)]
        if r.type == "union":
            if any(not self.check(b, w, f"{path}/{i}") for i, b in enumerate(r.branches)):
                return []
            return [f"{at}: MISSING_UNION_BRANCH: the reader union has no branch that can read "
                    f"writer type {w.describe()}"]
        if w.type in PROMOTIONS.get(r.type, ()):
            return []
        return [f"{at}: TYPE_MISMATCH: reader type {r.describe()} cannot read writer type "
                f"{w.describe()}"]

    def _named(self, r: Node, w: Node, path: str) -> list[str]:
        errors = []
        assert r.name is not None and w.name is not None
        # Java compares unqualified names (the spec: "the same (unqualified) name"); reader
        # aliases are full names and match the writer's full name.
        if r.name.rpartition(".")[2] != w.name.rpartition(".")[2] and w.name not in r.aliases:
            errors.append(f"{path}/name: NAME_MISMATCH: reader {r.type} {r.name} does not match "
                          f"writer name {w.name} (a reader alias could allow it)")
        if r.type == "fixed" and r.size != w.size:
            errors.append(f"{path}/size: FIXED_SIZE_MISMATCH: reader size {r.size}, writer size "
                          f"{w.size}")
        if r.type == "enum":
            missing = sorted(set(w.symbols) - set(r.symbols))
            if missing and r.default is None:
                errors.append(f"{path}/symbols: MISSING_ENUM_SYMBOLS: writer symbols {missing} "
                              "are missing from the reader enum, which has no default")
        if r.type == "record":
            errors += self._fields(r, w, path)
        return errors

    def _fields(self, r: Node, w: Node, path: str) -> list[str]:
        errors = []
        by_name = {f.name: f for f in w.fields}
        for rf in r.fields:
            fpath = f"{path}/fields/{rf.pos}"
            # The writer field is found by the reader field's name or one of its aliases.
            found = {id(by_name[n]): by_name[n] for n in [rf.name, *rf.aliases] if n in by_name}
            if len(found) > 1:
                errors.append(f"{fpath}: READER_FIELD_AMBIGUOUS: reader field {rf.name!r} matches "
                              f"several writer fields through its aliases")
            elif found:
                errors += self.check(rf.type, next(iter(found.values())).type, f"{fpath}/type")
            elif not rf.has_default:
                errors.append(f"{fpath}: READER_FIELD_MISSING_DEFAULT_VALUE: reader field "
                              f"{rf.name!r} has no default and is missing in the writer")
        return errors
