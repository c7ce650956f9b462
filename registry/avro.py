"""The AVRO schema type: parsing, canonical forms and reader/writer compatibility.

``parse`` decodes the JSON and walks it once with the rules of Avro Java's ``Schema.Parser``
(what Confluent runs), building a small graph of :class:`Node` objects. A named type is
registered before its body is walked, so recursive types become cycles in the graph, and
references (walked first, into the same name table) resolve exactly like names defined earlier
in the same document. Every error names its JSON-pointer path. Defaults are checked against
their field types once the graph is complete. fastavro then parses the normalized documents as
a second opinion (it also checks logical-type parameters such as decimal precision).

The graph serves the other operations: ``normalized`` prints it in one fixed shape, and
``compatibility_errors`` applies the rules of Avro Java's ``SchemaCompatibility`` (the checker
behind Confluent's AvroCompatibilityChecker; ``avro_resolution.py``) to a reader graph and a
writer graph.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fastavro
from fastavro.schema import UnknownType

from registry.avro_resolution import Resolution
from registry.limits import checkpoint
from registry.schema import ParsedSchema, SchemaError

__all__ = ["AvroSchema", "parse"]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_KEYWORDS = PRIMITIVES | _NAMED | {"array", "map"}
# Keys that shape a schema or field; every other key is a property kept as written (doc,
# logicalType, connect.* ...), because tools rely on them even though Avro ignores them.
_FIELD_KEYS = frozenset({"name", "type", "default", "aliases"})
_SCHEMA_KEYS = _FIELD_KEYS | {"namespace", "fields", "symbols", "items", "values", "size"}
# Java's Character.isLetter / isLetterOrDigit rule (what Avro Java enforces), plus '_'.
_NAME_RE = re.compile(r"[^\W\d]\w*")
_NO_DEFAULT: Any = object()
_MAX_DEPTH = 200  # JSON-pointer segments
_Defs = dict[str, tuple[dict[str, Any], str]]  # full name -> (definition JSON, outer namespace)


def _fail(path: str, message: str) -> SchemaError:
    return SchemaError(f"Invalid schema: {path + ': ' if path else ''}{message}")


@dataclass(eq=False)
class _Field:
    name: str
    type: Node
    default: Any  # _NO_DEFAULT when the field has none (JSON null is a real default)
    aliases: list[str]
    props: dict[str, Any]
    pos: int

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


@dataclass(eq=False)  # identity semantics: the compatibility memo keys on id()
class Node:
    type: str  # a primitive, "record" (also for "error"), "enum", "fixed", "array", "map", "union"
    name: str | None = None  # full name of a named type
    aliases: list[str] = field(default_factory=list)  # full names
    fields: list[_Field] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    default: str | None = None  # an enum's default symbol
    size: int = 0
    child: Node | None = None  # array items / map values
    branches: list[Node] = field(default_factory=list)
    props: dict[str, Any] = field(default_factory=dict)
    error: bool = False  # declared as "error" rather than "record"

    def describe(self) -> str:
        return f"{self.type} {self.name}" if self.name else self.type

    @property
    def primitive(self) -> bool:
        return self.type in PRIMITIVES


def _qualify(name: str, space: str) -> str:
    """Avro's name rule: a dotted name is already full, otherwise it joins the namespace."""
    return name if "." in name or not space else f"{space}.{name}"


def _check_name(full: str, path: str, what: str) -> None:
    if not all(_NAME_RE.fullmatch(part) for part in full.split(".")):
        raise _fail(path, f"invalid {what} {full!r}: each part must match [A-Za-z_][A-Za-z0-9_]*")


def _full_name(js: dict[str, Any], space: str) -> str:
    """The full name a named type's definition gives it; its namespace is also the one its
    nested definitions and references start from."""
    explicit = js.get("namespace")  # absent or null inherits, "" means the null namespace
    full = _qualify(js["name"], explicit if isinstance(explicit, str) else space)
    return full.lstrip(".")  # Java reads ".R" as R in the null namespace


class _Builder:
    def __init__(self) -> None:
        self.names: dict[str, Node] = {}
        self.defs: _Defs = {}
        self.defaults: list[tuple[str, _Field]] = []  # checked once every type is complete

    def lookup(self, name: str, space: str, path: str) -> Node:
        if name in PRIMITIVES:
            return Node(name)
        # Like Java's Names.get: the enclosing namespace first, then the null namespace.
        for full in (_qualify(name, space), name):
            if full in self.names:
                return self.names[full]
        raise _fail(path, f"unknown type {name!r}: not a primitive and not a named type "
                    "defined earlier or in a reference")

    def build(self, js: Any, space: str, path: str) -> Node:
        checkpoint()
        if path.count("/") > _MAX_DEPTH:  # keeps every recursive pass far from Python's limit
            raise _fail(path[:60] + "...", f"nested deeper than {_MAX_DEPTH} levels")
        if isinstance(js, str):
            return self.lookup(js, space, path)
        if isinstance(js, list):
            return self._union(js, space, path)
        if not isinstance(js, dict):
            raise _fail(path, f"a schema is a JSON string, object or array, not {json.dumps(js)}")
        kind = js.get("type")
        if not isinstance(kind, str):
            raise _fail(path, "a schema object needs a string 'type'")
        props = {k: v for k, v in js.items() if k not in _SCHEMA_KEYS}
        if kind in PRIMITIVES:
            return Node(kind, props=props)
        if kind in ("array", "map"):
            key = "items" if kind == "array" else "values"
            if key not in js:
                raise _fail(path, f"an {kind} needs '{key}'")
            return Node(kind, child=self.build(js[key], space, f"{path}/{key}"), props=props)
        if kind in _NAMED:
            return self._named(js, kind, space, path, props)
        return self.lookup(kind, space, f"{path}/type")  # {"type": "some.Name"} is allowed

    def _union(self, js: list[Any], space: str, path: str) -> Node:
        seen: set[str] = set()
        node = Node("union")
        for i, item in enumerate(js):
            branch = self.build(item, space, f"{path}/{i}")
            key = branch.name or branch.type  # unnamed types may appear once each
            if branch.type == "union":
                raise _fail(f"{path}/{i}", "a union cannot directly contain another union")
            if key in seen:
                raise _fail(f"{path}/{i}", f"the union has more than one {key!r} branch")
            seen.add(key)
            node.branches.append(branch)
        return node

    def _named(
        self, js: dict[str, Any], kind: str, space: str, path: str, props: dict[str, Any]
    ) -> Node:
        if not isinstance(js.get("name"), str):
            raise _fail(path, f"a {kind} needs a string 'name'")
        if not isinstance(js.get("namespace", ""), str | None):
            raise _fail(f"{path}/namespace", "the namespace must be a string")
        full = _full_name(js, space)
        own = full.rpartition(".")[0]
        _check_name(full, f"{path}/name", "name")
        if full in PRIMITIVES or full in self.names:
            raise _fail(f"{path}/name", f"the type {full!r} is already defined")
        aliases = [_qualify(a, own) for a in self._aliases(js, path)]
        for alias in aliases:
            _check_name(alias, f"{path}/aliases", "alias")
        node = Node("record" if kind == "error" else kind, full, aliases, props=props)
        node.error = kind == "error"
        self.names[full] = node  # before the body: a record may refer to itself
        self.defs[full] = (js, space)
        if kind == "enum":
            self._enum(node, js, path)
        elif kind == "fixed":
            size = js.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _fail(path, "a fixed needs a non-negative integer 'size'")
            node.size = size
        else:
            self._fields(node, js, own, path)
        return node

    @staticmethod
    def _aliases(js: dict[str, Any], path: str) -> list[str]:
        aliases = js.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise _fail(f"{path}/aliases", "aliases must be an array of strings")
        return aliases

    @staticmethod
    def _enum(node: Node, js: dict[str, Any], path: str) -> None:
        symbols = js.get("symbols")
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise _fail(path, "an enum needs 'symbols', an array of strings")
        seen: set[str] = set()
        for i, symbol in enumerate(symbols):
            if not _NAME_RE.fullmatch(symbol):
                raise _fail(f"{path}/symbols/{i}", f"invalid enum symbol {symbol!r}")
            if symbol in seen:
                raise _fail(f"{path}/symbols/{i}", f"duplicate enum symbol {symbol!r}")
            seen.add(symbol)
        node.symbols = symbols
        default = js.get("default")
        if default is not None and default not in symbols:
            raise _fail(f"{path}/default", f"the enum default {default!r} is not a symbol")
        node.default = default

    def _fields(self, node: Node, js: dict[str, Any], space: str, path: str) -> None:
        if not isinstance(js.get("fields"), list):
            raise _fail(path, "a record needs 'fields', an array")
        names: set[str] = set()
        for i, fjs in enumerate(js["fields"]):
            fpath = f"{path}/fields/{i}"
            if not isinstance(fjs, dict) or not isinstance(fjs.get("name"), str):
                raise _fail(fpath, "a field must be an object with a string 'name'")
            name = fjs["name"]
            if not _NAME_RE.fullmatch(name):
                raise _fail(f"{fpath}/name", f"invalid field name {name!r}")
            if name in names:
                raise _fail(fpath, f"duplicate field name {name!r} in {node.name}")
            names.add(name)
            if "type" not in fjs:
                raise _fail(fpath, f"the field {name!r} has no 'type'")
            if fjs.get("order", "ascending") not in ("ascending", "descending", "ignore"):
                raise _fail(f"{fpath}/order", "order must be ascending, descending or ignore")
            ftype = self.build(fjs["type"], space, f"{fpath}/type")
            props = {k: v for k, v in fjs.items() if k not in _FIELD_KEYS}
            fld = _Field(name, ftype, fjs.get("default", _NO_DEFAULT), self._aliases(fjs, fpath),
                         props, i)
            node.fields.append(fld)
            if fld.default is not _NO_DEFAULT:
                self.defaults.append((f"{fpath}/default", fld))

    def check_defaults(self) -> None:
        # Confluent validates defaults (Avro Java's Schema.validateDefaults, on by default).
        for path, fld in self.defaults:
            if not _valid_default(fld.type, fld.default, set()):
                raise _fail(path, f"invalid default {json.dumps(fld.default)} for field "
                            f"{fld.name!r}: it does not match type {fld.type.describe()}")
        self.defaults.clear()


def _valid_default(node: Node, value: Any, active: set[tuple[int, int]]) -> bool:
    """Avro Java's isValidDefault, except that a union default may match any branch (Avro 1.12,
    AVRO-3649; older releases required the first branch)."""
    checkpoint()  # unions of records with defaults can make this exponential
    t = node.type
    if t in ("string", "bytes", "enum", "fixed"):
        return isinstance(value, str)
    if t in ("int", "long"):
        bits = 31 if t == "int" else 63
        return type(value) is int and -(2**bits) <= value < 2**bits
    if t in ("float", "double"):
        if isinstance(value, str):  # Java accepts "NaN", "Infinity", "1.5" for float/double
            try:
                float(value)
            except ValueError:
                return False
            return True
        return type(value) in (int, float)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    if t == "array":
        return isinstance(value, list) and all(_valid_default(node.child, v, active) for v in value)
    if t == "map":
        return isinstance(value, dict) and all(
            _valid_default(node.child, v, active) for v in value.values())
    if t == "union":
        return any(_valid_default(b, value, active) for b in node.branches)
    # A record: missing fields fall back to their own defaults. A recursive record whose
    # default leads back to itself would describe an infinite value: reject it.
    key = (id(node), id(value))
    if not isinstance(value, dict) or key in active:
        return False
    active.add(key)
    ok = all(_valid_default(f.type, value.get(f.name, f.default), active) for f in node.fields)
    active.discard(key)
    return ok


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (TypeError, ValueError) as e:
        raise SchemaError(f"Invalid schema: {where}not valid JSON: {e}") from e


def parse(text: str, references: Sequence[tuple[str, str]]) -> AvroSchema:
    """Parse an AVRO schema whose named types may come from ``references`` (see schema.py)."""
    try:
        return _parse(text, references)
    except RecursionError as e:  # every pass here recurses along the nesting of the JSON
        raise SchemaError("Invalid schema: nested too deeply") from e


def _parse(text: str, references: Sequence[tuple[str, str]]) -> AvroSchema:
    builder = _Builder()
    # fastavro sees each document in normalized form (full names, referenced types stay
    # references), which also avoids its rejecting Java's {"type": "some.Name"} spelling.
    plain: list[Any] = []
    done: set[str] = set()
    for ref_name, ref_text in references:
        where = f"reference {ref_name!r}: "
        ref_js = _load(ref_text, where)
        try:
            plain.append(_normal(builder.build(ref_js, "", ""), done))
            builder.check_defaults()
        except SchemaError as e:
            message = str(e).replace("Invalid schema: ", f"Invalid schema: {where}", 1)
            raise SchemaError(message) from e
    ref_defs = dict(builder.defs)
    js = _load(text, "")
    schema = AvroSchema(js, builder.build(js, "", ""), ref_defs)
    builder.check_defaults()
    named: dict[str, Any] = {}
    try:
        for doc in [*plain, _normal(schema._root, set(ref_defs))]:
            fastavro.parse_schema(doc, named_schemas=named)
    except UnknownType:
        # Name lookup is the builder's job: Java falls back to the null namespace when a name
        # is not found in the enclosing one, fastavro does not, and the builder succeeded.
        pass
    except Exception as e:  # fastavro raises assorted types (SchemaParseException, KeyError...)
        raise SchemaError(f"Invalid schema: {e}") from e
    return schema


class AvroSchema:
    """A parsed AVRO schema; implements :class:`registry.schema.ParsedSchema`."""

    schema_type = "AVRO"

    def __init__(self, js: Any, root: Node, ref_defs: _Defs) -> None:
        self._js = js
        self._root = root
        self._ref_defs = ref_defs

    def canonical(self) -> str:
        return _dump(self._js)

    def normalized(self) -> str:
        # Every representational freedom removed, nothing written dropped: names are full
        # (no "namespace"), a named type is spelled out once and then referred to by full name
        # (as in Parsing Canonical Form), {"type": "int"} becomes "int", structural keys come
        # in a fixed order followed by the other properties sorted, aliases are sorted full
        # names and a field's default "order": "ascending" is left out. Unlike Parsing
        # Canonical Form, defaults, aliases, doc and custom properties stay: they change what
        # readers see, and the registry must not hand back a schema missing them.
        # Referenced types stay references (the registry keeps the references alongside).
        return _dump(_normal(self._root, set(self._ref_defs)))

    def formatted(self, fmt: str) -> str:
        if fmt == "":
            return self.canonical()
        if fmt == "resolved":  # referenced named types inlined where first used
            return _dump(_inline(self._js, "", self._ref_defs, set()))
        raise SchemaError(f"unknown format {fmt!r} for an AVRO schema (known: '', 'resolved')")

    def compatibility_errors(self, writer: ParsedSchema) -> list[str]:
        if not isinstance(writer, AvroSchema):
            return [f"/: TYPE_MISMATCH: the writer is a {writer.schema_type} schema, not AVRO"]
        try:
            errors = Resolution().check(self._root, writer._root, "")
        except RecursionError:
            return ["/: the schemas are nested too deeply to compare"]
        return list(dict.fromkeys(errors))  # a memoized pair can report the same error twice


def _dump(js: Any) -> str:
    return json.dumps(js, separators=(",", ":"), ensure_ascii=False)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return [_sorted(v) for v in value] if isinstance(value, list) else value


def _normal(node: Node, done: set[str]) -> Any:
    checkpoint()
    if node.type == "union":
        return [_normal(b, done) for b in node.branches]
    if node.type in PRIMITIVES and not node.props:
        return node.type
    if node.name in done:
        return node.name
    out: dict[str, Any] = {"type": "error" if node.error else node.type}
    if node.name:
        done.add(node.name)
        out["name"] = node.name
        if node.aliases:
            out["aliases"] = sorted(set(node.aliases))
    if node.type == "record":
        out["fields"] = [_normal_field(f, done) for f in node.fields]
    elif node.type == "enum":
        out["symbols"] = node.symbols
        if node.default is not None:
            out["default"] = node.default
    elif node.type == "fixed":
        out["size"] = node.size
    elif node.child is not None:
        out["items" if node.type == "array" else "values"] = _normal(node.child, done)
    return out | _sorted(node.props)


def _normal_field(fld: _Field, done: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": fld.name, "type": _normal(fld.type, done)}
    if fld.default is not _NO_DEFAULT:
        out["default"] = fld.default
    if fld.aliases:
        out["aliases"] = sorted(set(fld.aliases))
    props = {k: v for k, v in fld.props.items() if (k, v) != ("order", "ascending")}
    return out | _sorted(props)


def _inline(js: Any, space: str, defs: _Defs, done: set[str]) -> Any:
    """Copy ``js`` with the first use of each referenced named type replaced by its definition,
    given an explicit namespace where the new surroundings would change its meaning."""
    checkpoint()
    if isinstance(js, list):
        return [_inline(b, space, defs, done) for b in js]
    if isinstance(js, str):
        full = next((n for n in (_qualify(js, space), js) if n in defs), None)
        if js in PRIMITIVES or full is None or full in done:
            return js
        frag, frag_space = defs[full]
        out = _inline(frag, frag_space, defs, done)
        if frag_space != space and not isinstance(frag.get("namespace"), str) and (
            "." not in frag["name"]
        ):
            head = {k: out[k] for k in ("type", "name") if k in out}
            out = head | {"namespace": frag_space} | out
        return out
    if not isinstance(js, dict):
        return js
    kind = js.get("type")
    out = dict(js)
    if kind in _NAMED:
        full = _full_name(js, space)
        space = full.rpartition(".")[0]
        if full in done:  # a type nested in a definition, already inlined on its own
            return full
        done.add(full)
        if kind in ("record", "error"):
            out["fields"] = [
                f | {"type": _inline(f["type"], space, defs, done)} for f in js["fields"]
            ]
    elif kind in ("array", "map"):
        key = "items" if kind == "array" else "values"
        out[key] = _inline(js[key], space, defs, done)
    elif isinstance(kind, str) and kind not in _KEYWORDS:  # {"type": "some.Name"}
        inlined = _inline(kind, space, defs, done)
        return js if inlined == kind else inlined
    return out
