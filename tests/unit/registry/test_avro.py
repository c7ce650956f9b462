"""Unit tests for the AVRO schema type (registry.avro).

The compatibility table follows Confluent's "Schema Evolution and Compatibility" summary
(BACKWARD: delete fields, add optional fields; FORWARD: add fields, delete optional fields;
FULL: add/delete optional fields only) and the "Schema Resolution" section of the Avro spec.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.avro import AvroSchema, parse
from registry.schema import SchemaError


def avro(schema: Any, references: list[tuple[str, Any]] | None = None) -> AvroSchema:
    refs = [(name, json.dumps(text)) for name, text in references or []]
    return parse(json.dumps(schema), refs)


def record(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


ADDRESS = record("Address", f("street", "string"), namespace="com.acme")
LINKED = record("Node", f("value", "int"), f("next", ["null", "Node"], default=None))


# --- parse: valid ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        "string",
        {"type": "long"},
        ["null", "int", "string"],
        {"type": "int", "logicalType": "date"},
        {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
        {"type": "array", "items": {"type": "map", "values": "double"}},
        {"type": "enum", "name": "Suit", "symbols": ["SPADES", "HEARTS"], "default": "SPADES"},
        {"type": "fixed", "name": "md5", "namespace": "com.acme", "size": 16},
        {"type": "error", "name": "Oops", "fields": [{"name": "why", "type": "string"}]},
        LINKED,
        record(
            "Everything",
            f("n", "null", default=None),
            f("b", "boolean", default=True),
            f("i", "int", default=-(2**31)),
            f("l", "long", default=2**63 - 1),
            f("x", "float", default=1),
            f("d", "double", default="NaN"),  # Java accepts numeric strings for float/double
            f("s", "string", default="é"),
            f("y", "bytes", default="\u00ff"),
            f("a", {"type": "array", "items": "int"}, default=[1, 2]),
            f("m", {"type": "map", "values": "long"}, default={"k": 1}),
            f("u", ["null", "string"], default="any branch may match"),  # Avro 1.12 rule
            f("e", {"type": "enum", "name": "E", "symbols": ["A", "B"]}, default="B"),
            f("r", record("Inner", f("z", "int", default=0)), default={}),
            f("again", "E", order="descending", aliases=["old"], doc="reuses E"),
            f("spelled", {"type": "Inner"}),  # Java accepts a name as an object's "type"
        ),
        record("Outer", f("inner", record("Inner", f("x", "int"))), namespace="a.b"),
        record("a.b.Outer", f("inner", record("Inner", f("x", "int")), aliases=["in"])),
    ],
)
def test_parse_valid(schema: Any) -> None:
    parsed = avro(schema)
    assert parsed.schema_type == "AVRO"
    assert parsed.canonical() == json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    assert parse(parsed.normalized(), []).normalized() == parsed.normalized()


# --- parse: invalid --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "record",', "not valid JSON"),
        ('{"type": "double", "default": NaN}', "not valid JSON"),
        ("5", "a schema is a JSON string, object or array"),
        ('"strin"', "unknown type 'strin'"),
        (record("R", f("a", "com.acme.Missing")), "/fields/0/type: unknown type"),
        ({"name": "x"}, "needs a string 'type'"),
        ({"type": ["int"]}, "needs a string 'type'"),
        ({"type": "record", "fields": []}, "needs a string 'name'"),
        (record("1st"), "invalid name '1st'"),
        (record("R", namespace="com..acme"), "invalid name 'com..acme.R'"),
        (record("int"), "already defined"),
        ({"type": "record", "name": "R"}, "needs 'fields'"),
        (record("R", f("a-b", "int")), "/fields/0/name: invalid field name 'a-b'"),
        (record("R", f("a", "int"), f("a", "long")), "/fields/1: duplicate field name 'a'"),
        (record("R", {"name": "a"}), "has no 'type'"),
        (record("R", f("a", "int", order="up")), "order must be"),
        (record("R", f("a", "int"), aliases="R0"), "aliases must be an array"),
        (record("R", f("a", record("R"))), "'R' is already defined"),
        ({"type": "enum", "name": "E", "symbols": ["A", "A"]}, "duplicate enum symbol 'A'"),
        ({"type": "enum", "name": "E", "symbols": ["A-"]}, "invalid enum symbol"),
        ({"type": "enum", "name": "E", "symbols": ["A"], "default": "B"}, "not a symbol"),
        ({"type": "enum", "name": "E"}, "needs 'symbols'"),
        ({"type": "fixed", "name": "F"}, "non-negative integer 'size'"),
        ({"type": "fixed", "name": "F", "size": -1}, "non-negative integer 'size'"),
        ({"type": "fixed", "name": "F", "size": "16"}, "non-negative integer 'size'"),
        ({"type": "array"}, "needs 'items'"),
        ({"type": "map"}, "needs 'values'"),
        (["null", ["int", "string"]], "/1: a union cannot directly contain another union"),
        (["int", "string", "int"], "/2: the union has more than one 'int' branch"),
        ([{"type": "array", "items": "int"}, {"type": "array", "items": "long"}], "'array'"),
        # Defaults must match the field type (Confluent validates defaults).
        (record("R", f("a", "int", default="1")), "/fields/0/default: invalid default"),
        (record("R", f("a", "int", default=1.5)), "invalid default 1.5"),
        (record("R", f("a", "int", default=2**31)), "invalid default"),
        (record("R", f("a", "long", default=True)), "invalid default true"),
        (record("R", f("a", "string", default=None)), "invalid default null"),
        (record("R", f("a", "boolean", default=0)), "invalid default 0"),
        (record("R", f("a", "double", default="many")), "invalid default"),
        (record("R", f("a", ["null", "int"], default="x")), "invalid default"),
        (record("R", f("a", {"type": "array", "items": "int"}, default=["x"])), "invalid"),
        (record("R", f("a", {"type": "map", "values": "int"}, default=[])), "invalid"),
        (record("R", f("a", record("S", f("x", "int")), default={})), "invalid default {}"),
        (record("R", f("next", "R", default={})), "invalid default"),  # an infinite value
        # fastavro's own checks still apply.
        ({"type": "bytes", "logicalType": "decimal", "precision": -1}, "precision"),
    ],
)
def test_parse_invalid(text: Any, message: str) -> None:
    with pytest.raises(SchemaError, match="Invalid schema") as info:
        parse(text if isinstance(text, str) else json.dumps(text), [])
    assert message in str(info.value)


def test_parse_with_references() -> None:
    user = record(
        "User",
        f("home", "Address"),  # resolved in the enclosing namespace com.acme
        f("work", ["null", "com.acme.Address"], default=None),
        namespace="com.acme",
    )
    parsed = avro(user, [("com.acme.Address", ADDRESS)])
    assert parsed.canonical() == json.dumps(user, separators=(",", ":"))
    # Without the reference the name is unknown.
    with pytest.raises(SchemaError, match="unknown type 'Address'"):
        avro(user)


def test_references_are_transitive_and_may_use_the_null_namespace() -> None:
    country = record("Country", f("code", "string"))  # null namespace
    city = record("City", f("country", "Country"), namespace="geo")
    place = record("Place", f("city", "geo.City"), f("country", "Country"), namespace="app")
    # "Country" inside namespace app falls back to the null namespace, as in Avro Java.
    parsed = avro(place, [("Country", country), ("geo.City", city)])
    assert parsed.normalized() == (
        '{"type":"record","name":"app.Place","fields":[{"name":"city","type":"geo.City"},'
        '{"name":"country","type":"Country"}]}'
    )


def test_reference_errors_name_the_reference() -> None:
    with pytest.raises(SchemaError, match=r"reference 'com\.acme\.Address'.*unknown type"):
        avro("string", [("com.acme.Address", record("Address", f("x", "Nope")))])
    with pytest.raises(SchemaError, match="reference 'bad': not valid JSON"):
        parse('"string"', [("bad", "{")])


def test_redefining_a_referenced_type_is_an_error() -> None:
    with pytest.raises(SchemaError, match=r"'com\.acme\.Address' is already defined"):
        avro(ADDRESS, [("com.acme.Address", ADDRESS)])


# --- canonical / normalized / formatted ------------------------------------------------------


def test_canonical_ignores_whitespace_and_keeps_key_order() -> None:
    compact = '{"type":"record","name":"R","fields":[{"type":"int","name":"a"}]}'
    spaced = '{\n  "type" : "record",\n  "name": "R",\n  "fields": [ {"type": "int", "name": "a"}]}'
    assert parse(spaced, []).canonical() == parse(compact, []).canonical() == compact
    assert parse(' "string" ', []).canonical() == '"string"'
    assert parse('{ "type" : "string" }', []).canonical() == '{"type":"string"}'


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("int", {"type": "int"}),
        (
            record("R", f("a", "int"), namespace="com.acme"),
            {"fields": [{"type": {"type": "int"}, "name": "a"}], "name": "com.acme.R",
             "type": "record"},
        ),
        (
            record("R", f("e", {"type": "enum", "name": "E", "symbols": ["A"]}), f("g", "E"),
                   namespace="x"),
            record("x.R", f("e", {"type": "enum", "name": "x.E", "symbols": ["A"]}), f("g", "x.E")),
        ),
        (
            record("R", f("a", "int", aliases=["b", "c"]), aliases=["S", "T"], doc="d"),
            record("R", f("a", "int", aliases=["c", "b"], order="ascending"), doc="d",
                   aliases=["T", "S"]),
        ),
        (
            {"type": "string", "logicalType": "uuid", "connect.name": "x"},
            {"connect.name": "x", "logicalType": "uuid", "type": "string"},
        ),
    ],
)
def test_normalized_is_equal_for_equivalent_schemas(one: Any, other: Any) -> None:
    assert avro(one).normalized() == avro(other).normalized()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("int", "long"),
        (record("R", f("a", "int")), record("R", f("a", "int", default=0))),
        (record("R", f("a", "int")), record("R", f("a", "int"), namespace="n")),
        (record("R", f("a", "int")), record("R", f("a", "int", order="descending"))),
        (record("R", f("a", "int")), record("R", f("a", "int"), doc="kept: tools show it")),
    ],
)
def test_normalized_keeps_meaningful_differences(one: Any, other: Any) -> None:
    assert avro(one).normalized() != avro(other).normalized()


def _shuffled(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: _shuffled(value[k], rnd) for k in keys}
    return [_shuffled(v, rnd) for v in value] if isinstance(value, list) else value


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(), indent=st.sampled_from([None, 0, 2, "\t"]))
def test_key_order_and_whitespace_never_change_normalized(seed: int, indent: Any) -> None:
    schema = record(
        "Order", f("id", "long"), f("items", {"type": "array", "items": LINKED}),
        f("tags", {"type": "map", "values": ["null", "string"]}, default={}),
        namespace="shop", aliases=["Purchase"], doc="an order",
    )
    base = avro(schema)
    moved = parse(json.dumps(_shuffled(schema, random.Random(seed)), indent=indent), [])
    assert moved.normalized() == base.normalized()
    spaced = parse(json.dumps(schema, indent=indent), [])
    assert spaced.canonical() == base.canonical()


def test_formatted() -> None:
    parsed = avro(LINKED)
    assert parsed.formatted("") == parsed.canonical()
    with pytest.raises(SchemaError, match="unknown format"):
        parsed.formatted("serialized")


def test_formatted_resolved_inlines_references_once() -> None:
    status = {"type": "enum", "name": "Status", "symbols": ["ON", "OFF"]}
    address = record("Address", f("street", "string"), f("status", status), namespace="com.acme")
    box = record("Box", f("address", "Address"), namespace="com.acme")
    user = record(
        "User",
        f("status", "Status"),  # nested in the Address reference, used first here
        f("box", "com.acme.Box"),
        f("again", ["null", "Address"], default=None),
        namespace="com.acme",
    )
    refs = [("com.acme.Address", address), ("com.acme.Box", box)]
    resolved = json.loads(avro(user, refs).formatted("resolved"))
    fields = resolved["fields"]
    assert fields[0]["type"] == status
    assert fields[1]["type"]["fields"][0]["type"]["name"] == "Address"
    assert fields[1]["type"]["fields"][0]["type"]["fields"][1]["type"] == "com.acme.Status"
    assert fields[2]["type"] == ["null", "Address"]
    # The resolved text stands alone and means the same as the schema with its references.
    standalone = json.loads(avro(resolved).normalized())
    assert standalone["name"] == "com.acme.User"
    assert avro(user, refs).compatibility_errors(avro(resolved)) == []
    assert avro(resolved).compatibility_errors(avro(user, refs)) == []


def test_formatted_resolved_keeps_the_meaning_of_null_namespace_types() -> None:
    country = record("Country", f("code", "string"))
    place = record("Place", f("country", "Country"), namespace="app")
    resolved = json.loads(avro(place, [("Country", country)]).formatted("resolved"))
    assert resolved["fields"][0]["type"]["namespace"] == ""  # not app.Country
    assert json.loads(avro(resolved).normalized())["fields"][0]["type"]["name"] == "Country"


# --- compatibility ---------------------------------------------------------------------------


def verdicts(old: Any, new: Any) -> tuple[bool, bool]:
    """(BACKWARD ok, FORWARD ok): new reads old / old reads new."""
    old_s, new_s = avro(old), avro(new)
    return not new_s.compatibility_errors(old_s), not old_s.compatibility_errors(new_s)


V1 = record("User", f("id", "long"), f("name", "string"))
COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}


def with_color(symbols: list[str], default: str | None = None) -> dict[str, Any]:
    enum = {**COLOR, "symbols": symbols} | ({"default": default} if default else {})
    return record("User", f("color", enum))


# (case, old schema, new schema, BACKWARD ok, FORWARD ok)
EVOLUTIONS: list[tuple[str, Any, Any, bool, bool]] = [
    ("identical", V1, V1, True, True),
    ("add field with default", V1,
     record("User", *V1["fields"], f("age", "int", default=0)), True, True),
    ("add field without default", V1,
     record("User", *V1["fields"], f("age", "int")), False, True),
    ("remove field with default", record("User", *V1["fields"], f("age", "int", default=0)),
     V1, True, True),
    ("remove field without default", record("User", *V1["fields"], f("age", "int")),
     V1, True, False),
    ("int to long", record("R", f("a", "int")), record("R", f("a", "long")), True, False),
    ("int to double", record("R", f("a", "int")), record("R", f("a", "double")), True, False),
    ("long to float", "long", "float", True, False),
    ("float to double", "float", "double", True, False),
    ("string to bytes", "string", "bytes", True, True),
    ("string to int", record("R", f("a", "string")), record("R", f("a", "int")), False, False),
    ("enum add symbol", with_color(["RED", "GREEN"]), with_color(["RED", "GREEN", "BLUE"]),
     True, False),
    ("enum add symbol, old has default", with_color(["RED", "GREEN"], "RED"),
     with_color(["RED", "GREEN", "BLUE"], "RED"), True, True),
    ("enum remove symbol", with_color(["RED", "GREEN"]), with_color(["RED"]), False, True),
    ("enum remove symbol, new has default", with_color(["RED", "GREEN"]),
     with_color(["RED"], "RED"), True, True),
    ("union widening", ["null", "string"], ["null", "string", "int"], True, False),
    ("union narrowing", ["null", "string", "int"], ["null", "string"], False, True),
    ("union reordered", ["null", "string"], ["string", "null"], True, True),
    ("make a field nullable", record("R", f("a", "string")),
     record("R", f("a", ["null", "string"], default=None)), True, False),
    ("promotion inside a union", ["null", "int"], ["null", "long"], True, False),
    ("rename record with alias", record("Old", f("a", "int")),
     record("New", f("a", "int"), aliases=["Old"]), True, False),
    ("rename record without alias", record("Old", f("a", "int")),
     record("New", f("a", "int")), False, False),
    # Avro Java (and so Confluent) compares unqualified names: a new namespace is fine.
    ("change namespace", record("R", f("a", "int"), namespace="x"),
     record("R", f("a", "int"), namespace="y"), True, True),
    ("rename field with alias", record("R", f("name", "string")),
     record("R", f("full_name", "string", aliases=["name"])), True, False),
    # Writer aliases play no part: an old reader needs a default for the renamed field.
    ("rename field with alias, both with defaults", record("R", f("name", "string", default="")),
     record("R", f("full_name", "string", aliases=["name"], default="")), True, True),
    ("nested record adds required field",
     record("Outer", f("in", record("Inner", f("x", "int")))),
     record("Outer", f("in", record("Inner", f("x", "int"), f("y", "int")))), False, True),
    ("nested record adds optional field",
     record("Outer", f("in", record("Inner", f("x", "int")))),
     record("Outer", f("in", record("Inner", f("x", "int"), f("y", "int", default=1)))),
     True, True),
    ("array items int to long", {"type": "array", "items": "int"},
     {"type": "array", "items": "long"}, True, False),
    ("array items string to int", {"type": "array", "items": "string"},
     {"type": "array", "items": "int"}, False, False),
    ("map values int to double", {"type": "map", "values": "int"},
     {"type": "map", "values": "double"}, True, False),
    ("array to map", {"type": "array", "items": "int"}, {"type": "map", "values": "int"},
     False, False),
    ("fixed size change", {"type": "fixed", "name": "F", "size": 8},
     {"type": "fixed", "name": "F", "size": 16}, False, False),
    ("fixed rename with alias", {"type": "fixed", "name": "F", "size": 8},
     {"type": "fixed", "name": "G", "size": 8, "aliases": ["F"]}, True, False),
    ("linked list unchanged", LINKED, LINKED, True, True),
    ("linked list adds field with default", LINKED,
     record("Node", *LINKED["fields"], f("label", "string", default="")), True, True),
    ("linked list value int to long", LINKED,
     record("Node", f("value", "long"), f("next", ["null", "Node"], default=None)),
     True, False),
    ("record into a union with it", V1, ["null", V1], True, False),
]


@pytest.mark.parametrize(
    ("old", "new", "backward", "forward"),
    [pytest.param(*case[1:], id=case[0]) for case in EVOLUTIONS],
)
def test_compatibility_table(old: Any, new: Any, backward: bool, forward: bool) -> None:
    assert verdicts(old, new) == (backward, forward)


@pytest.mark.parametrize(
    ("reader", "writer", "expected"),
    [
        (record("User", *V1["fields"], f("age", "int")), V1,
         "/fields/2: READER_FIELD_MISSING_DEFAULT_VALUE: reader field 'age' has no default"),
        (record("R", f("a", "int")), record("R", f("a", "string")),
         "/fields/0/type: TYPE_MISMATCH: reader type int cannot read writer type string"),
        ("int", "long", "/: TYPE_MISMATCH: reader type int cannot read writer type long"),
        (with_color(["RED"]), with_color(["RED", "GREEN", "BLUE"]),
         "/fields/0/type/symbols: MISSING_ENUM_SYMBOLS: writer symbols ['BLUE', 'GREEN']"),
        ({"type": "fixed", "name": "F", "size": 16}, {"type": "fixed", "name": "F", "size": 8},
         "/size: FIXED_SIZE_MISMATCH: reader size 16, writer size 8"),
        (record("New", f("a", "int")), record("Old", f("a", "int")),
         "/name: NAME_MISMATCH: reader record New does not match writer name Old"),
        (["null", "string"], ["null", "string", "int"],
         "/2: MISSING_UNION_BRANCH: the reader union has no branch that can read writer type int"),
        (record("R", f("a", {"type": "array", "items": "int"})),
         record("R", f("a", {"type": "array", "items": "long"})),
         "/fields/0/type/items: TYPE_MISMATCH"),
        (record("R", f("a", "int", aliases=["b"])), record("R", f("a", "int"), f("b", "int")),
         "/fields/0: READER_FIELD_AMBIGUOUS"),
    ],
)
def test_compatibility_messages_name_path_and_rule(reader: Any, writer: Any, expected: str) -> None:
    errors = avro(reader).compatibility_errors(avro(writer))
    assert any(e.startswith(expected) for e in errors), errors


def test_compatibility_reports_every_problem() -> None:
    reader = record("R", f("a", "int"), f("b", "string"), f("c", "long"))
    writer = record("R", f("a", "string"), f("b", "int"))
    errors = avro(reader).compatibility_errors(avro(writer))
    assert [e.split(":")[0] for e in errors] == ["/fields/0/type", "/fields/1/type", "/fields/2"]


def test_compatibility_terminates_on_mutually_recursive_schemas() -> None:
    def tree(leaf: str) -> dict[str, Any]:
        forest = record("Forest", f("trees", {"type": "array", "items": "Tree"}))
        return record("Tree", f("leaf", leaf), f("children", ["null", forest], default=None))

    assert avro(tree("long")).compatibility_errors(avro(tree("int"))) == []
    errors = avro(tree("int")).compatibility_errors(avro(tree("long")))
    assert errors == ["/fields/0/type: TYPE_MISMATCH: reader type int cannot read writer type long"]


def test_compatibility_with_references_compares_the_referenced_types() -> None:
    old = avro(record("User", f("a", "com.acme.Address")), [("com.acme.Address", ADDRESS)])
    wider = record("Address", f("street", "string"), f("zip", "string"), namespace="com.acme")
    new = avro(record("User", f("a", "com.acme.Address")), [("com.acme.Address", wider)])
    assert old.compatibility_errors(new) == []
    assert new.compatibility_errors(old) == [
        "/fields/0/type/fields/1: READER_FIELD_MISSING_DEFAULT_VALUE: reader field 'zip' has "
        "no default and is missing in the writer"
    ]


def test_compatibility_with_another_schema_type() -> None:
    class Json:
        schema_type = "JSON"

    errors = avro("string").compatibility_errors(Json())  # type: ignore[arg-type]
    assert errors and "JSON" in errors[0]


@pytest.mark.parametrize("depth", [201, 100_000])
def test_deep_nesting_is_a_schema_error_not_a_crash(depth: int) -> None:
    text = '{"type":"array","items":' * depth + '"int"' + "}" * depth
    with pytest.raises(SchemaError, match="nested"):
        parse(text, [])


def test_deep_but_allowed_nesting_works_everywhere() -> None:
    text = '{"type":"array","items":' * 200 + '"int"' + "}" * 200
    parsed = parse(text, [])
    assert parsed.compatibility_errors(parsed) == []
    assert parsed.formatted("resolved") == parsed.canonical() == parsed.normalized()
