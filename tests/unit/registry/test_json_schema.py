"""The JSON schema type: parsing, canonical forms and Confluent's compatibility rules.

The compatibility table reads like Confluent's documentation: each row is an evolution from an
old schema to a new one with the verdict under BACKWARD (the new schema reads old data:
``new.compatibility_errors(old)``) and FORWARD (the old schema reads new data:
``old.compatibility_errors(new)``), plus a message expected from the failing direction(s).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.json_schema import JsonSchema, parse
from registry.schema import SchemaError

STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
NULL = {"type": "null"}
CLOSED = {"additionalProperties": False}
D4 = "http://json-schema.org/draft-04/schema#"
D2020 = "https://json-schema.org/draft/2020-12/schema"


def js(schema: Any, references: list[tuple[str, str]] | None = None) -> JsonSchema:
    return parse(json.dumps(schema), references or [])


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required:
        schema["required"] = required
    return schema


def typed(type_: str, **keywords: Any) -> dict[str, Any]:
    return {"type": type_, **keywords}


# ---- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        STR,
        True,
        False,
        {},
        {"$schema": D4, "type": "number", "maximum": 3, "exclusiveMaximum": True},
        {"$schema": D2020, "prefixItems": [{}], "$defs": {"a": {"$ref": "#/prefixItems/0"}}},
        {"definitions": {"a": STR}, "properties": {"x": {"$ref": "#/definitions/a"}}},
        {"default": {"$ref": "not a schema, just data"}, "enum": [{"$ref": "data"}]},
        {"$id": "https://example.com/root.json",
         "properties": {"p": {"$id": "sub/x.json", "definitions": {"q": STR}},
                        "k": {"$ref": "sub/x.json#/definitions/q"}}},
    ],
)
def test_parse_accepts_valid_schemas(schema: Any) -> None:
    parsed = js(schema)
    assert parsed.schema_type == "JSON"
    assert parsed.schema == schema


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ('"string"', "object or a boolean"),
        ("[1]", "object or a boolean"),
        ('{"type": NaN}', "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ('{"type": "strung"}', "Invalid schema"),
        ('{"properties": {"a": {"minLength": -1}}}', "#/properties/a/minLength"),
        ('{"$schema": "http://json-schema.org/draft-03/schema#"}', r"unsupported \$schema"),
        ('{"$ref": "#/definitions/missing"}', r"unresolvable \$ref"),
        ('{"properties": {"a": {"$ref": "other.json"}}}', r"#/properties/a: unresolvable \$ref"),
        ('{"properties": {"enum": {"$ref": "#/nowhere"}}}', r"#/properties/enum: unresolvable"),
    ],
)
def test_parse_rejects_invalid_schemas(text: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        parse(text, [])


def test_parse_resolves_references_by_name() -> None:
    refs = [("other.json", json.dumps({"definitions": {"X": STR}, "type": "integer"}))]
    js({"properties": {"x": {"$ref": "other.json#/definitions/X"}, "y": {"$ref": "other.json"}}},
       refs)
    with pytest.raises(SchemaError, match="unresolvable"):
        js({"properties": {"x": {"$ref": "other.json#/definitions/Y"}}}, refs)
    with pytest.raises(SchemaError, match="unresolvable"):
        js({"$ref": "other.json"})  # the reference was not supplied
    # A root with its own $id resolves the reference name against that base too.
    js({"$id": "https://example.com/schemas/root.json", "$ref": "other.json"}, refs)


def test_parse_rejects_a_reference_that_is_not_json() -> None:
    with pytest.raises(SchemaError, match=r"reference 'other\.json'"):
        js({"$ref": "other.json"}, [("other.json", "{nope")])


# ---- canonical / normalized / formatted ---------------------------------------------------


def test_canonical_keeps_key_order_and_drops_whitespace() -> None:
    parsed = parse('{ "type" : "object",\n "properties": {"b": {"type": "string"}, "a": {}},\n'
                   ' "title": "é"}', [])
    expected = '{"type":"object","properties":{"b":{"type":"string"},"a":{}},"title":"é"}'
    assert parsed.canonical() == expected
    assert parsed.formatted("") == expected
    with pytest.raises(SchemaError, match="unknown format"):
        parsed.formatted("serialized")


def test_normalized_makes_equal_schemas_equal() -> None:
    one = js({"type": "object", "required": ["b", "a"],
              "properties": {"a": {"type": ["null", "string"]}}})
    two = js({"properties": {"a": {"type": ["string", "null"]}}, "required": ["a", "b"],
              "type": ["object"]})
    assert one.canonical() != two.canonical()
    assert one.normalized() == two.normalized()
    # Data is left alone: enum order and default values are part of the meaning.
    assert js({"enum": ["b", "a"]}).normalized() == '{"enum":["b","a"]}'
    assert js({"default": {"type": ["b", "a"]}}).normalized() == '{"default":{"type":["b","a"]}}'


# ---- compatibility ------------------------------------------------------------------------

# (description, old, new, BACKWARD ok, FORWARD ok, message expected from a failing direction)
EVOLUTIONS: list[tuple[str, Any, Any, bool, bool, str]] = [
    # Properties and content models (Confluent's "open / closed / partially open" rules).
    ("add optional property, open model", obj({"a": STR}), obj({"a": STR, "b": INT}),
     False, True, "#/properties/b: OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"),
    ("add optional property, closed model", obj({"a": STR}, **CLOSED),
     obj({"a": STR, "b": INT}, **CLOSED),
     True, False, "#/properties/b: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("add property with empty schema, open model", obj({"a": STR}), obj({"a": STR, "b": {}}),
     True, True, ""),
    ("remove property, open model", obj({"a": STR, "b": INT}), obj({"a": STR}),
     True, False, "#/properties/b: OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"),
    ("remove property, closed model", obj({"a": STR, "b": INT}, **CLOSED),
     obj({"a": STR}, **CLOSED),
     False, True, "#/properties/b: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("remove property whose schema is false", obj({"a": STR, "b": False}, **CLOSED),
     obj({"a": STR}, **CLOSED), True, True, ""),
    ("add required property, closed model", obj({"a": STR}, **CLOSED),
     obj({"a": STR, "b": INT}, ["b"], **CLOSED),
     False, False, "#/properties/b: REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"),
    ("add required property with default, closed model", obj({"a": STR}, **CLOSED),
     obj({"a": STR, "b": typed("integer", default=0)}, ["b"], **CLOSED),
     True, False, "#/properties/b: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("add required property, open model", obj({"a": STR}), obj({"a": STR, "b": INT}, ["b"]),
     False, True, "#/properties/b: REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"),
    ("make property required", obj({"a": STR}), obj({"a": STR}, ["a"]),
     False, True, "#/required/a: REQUIRED_ATTRIBUTE_ADDED"),
    ("make property required, with default", obj({"a": STR}),
     obj({"a": typed("string", default="")}, ["a"]), True, True, ""),
    ("make property optional", obj({"a": STR}, ["a"]), obj({"a": STR}),
     True, False, "#/required/a: REQUIRED_ATTRIBUTE_ADDED"),
    ("nested property type widened", obj({"p": obj({"n": INT})}), obj({"p": obj({"n": NUM})}),
     True, False, "#/properties/p/properties/n: TYPE_NARROWED"),
    ("additionalProperties true -> false", obj({"a": STR}, additionalProperties=True),
     obj({"a": STR}, **CLOSED),
     False, True, "#/additionalProperties: ADDITIONAL_PROPERTIES_REMOVED"),
    ("additionalProperties false -> true", obj({"a": STR}, **CLOSED),
     obj({"a": STR}, additionalProperties=True),
     True, False, "#/additionalProperties: ADDITIONAL_PROPERTIES_REMOVED"),
    ("additionalProperties open -> schema", obj({"a": STR}),
     obj({"a": STR}, additionalProperties=STR),
     False, True, "#/additionalProperties: ADDITIONAL_PROPERTIES_NARROWED"),
    ("property added, covered by partially open model", obj({"a": STR}, additionalProperties=STR),
     obj({"a": STR, "b": STR}, additionalProperties=STR), True, True, ""),
    ("property added, not covered by partially open model",
     obj({"a": STR}, additionalProperties=STR), obj({"a": STR, "b": INT}, additionalProperties=STR),
     False, False, "#/properties/b: PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"),
    ("property added, covered by patternProperties",
     obj({}, patternProperties={"^x_": STR}, **CLOSED),
     obj({"x_1": STR}, patternProperties={"^x_": STR}, **CLOSED), True, True, ""),
    ("unevaluatedProperties false added", {"$schema": D2020, **obj({"a": STR})},
     {"$schema": D2020, **obj({"a": STR}, unevaluatedProperties=False)},
     False, True, "#/unevaluatedProperties: UNEVALUATED_PROPERTIES_REMOVED"),
    ("raise maxProperties", typed("object", maxProperties=2), typed("object", maxProperties=3),
     True, False, "#/maxProperties: MAX_PROPERTIES_DECREASED"),
    ("add minProperties", typed("object"), typed("object", minProperties=1),
     False, True, "#/minProperties: MIN_PROPERTIES_ADDED"),
    ("extend a dependency array", {"dependencies": {"a": ["b"]}},
     {"dependencies": {"a": ["b", "c"]}},
     False, True, "#/dependencies/a: DEPENDENCY_ARRAY_EXTENDED"),
    ("add a dependency schema", {"type": "object"}, {"dependencies": {"a": {"required": ["b"]}}},
     False, True, "#/dependencies/a: DEPENDENCY_SCHEMA_ADDED"),
    # Types.
    ("widen integer to number", INT, NUM, True, False, "#/: TYPE_NARROWED"),
    ("narrow number to integer", NUM, INT, False, True, "#/: TYPE_NARROWED"),
    ("change string to integer", STR, INT, False, False, "#/: TYPE_CHANGED"),
    ("widen string to string|null", STR, typed(["string", "null"]), True, False, "TYPE_CHANGED"),
    ("widen a type array", typed(["string", "null"]), typed(["string", "null", "integer"]),
     True, False, "#/: SUM_TYPE_NARROWED"),
    ("widen integer|null to number|null", typed(["integer", "null"]), typed(["number", "null"]),
     True, False, "#/: TYPE_NARROWED"),
    ("true -> false", True, False, False, True, "#/: TYPE_CHANGED"),
    ("schema -> true", obj({"a": STR}), True, True, False, "#/: TYPE_CHANGED"),
    # Enums and const.
    ("add enum value", {"enum": ["a", "b"]}, {"enum": ["a", "b", "c"]},
     True, False, "#/enum: ENUM_ARRAY_NARROWED"),
    ("remove enum value", typed("string", enum=["a", "b"]), typed("string", enum=["a"]),
     False, True, "#/enum: ENUM_ARRAY_NARROWED"),
    ("replace enum value", {"enum": ["a", "b"]}, {"enum": ["a", "c"]},
     False, False, "#/enum: ENUM_ARRAY_CHANGED"),
    ("drop an enum constraint", typed("string", enum=["a"]), STR, True, False, "TYPE_CHANGED"),
    ("change const", {"const": 1}, {"const": 2}, False, False, "#/const: ENUM_ARRAY_CHANGED"),
    ("same const, 1 == 1.0", {"const": 1}, {"const": 1.0}, True, True, ""),
    # String and number constraints.
    ("tighten maxLength", typed("string", maxLength=10), typed("string", maxLength=5),
     False, True, "#/maxLength: MAX_LENGTH_DECREASED"),
    ("loosen maxLength", typed("string", maxLength=5), typed("string", maxLength=10),
     True, False, "#/maxLength: MAX_LENGTH_DECREASED"),
    ("add maxLength", STR, typed("string", maxLength=5),
     False, True, "#/maxLength: MAX_LENGTH_ADDED"),
    ("raise minLength", typed("string", minLength=1), typed("string", minLength=2),
     False, True, "#/minLength: MIN_LENGTH_INCREASED"),
    ("add pattern", STR, typed("string", pattern="^a"),
     False, True, "#/pattern: PATTERN_ADDED"),
    ("change pattern", typed("string", pattern="^a"), typed("string", pattern="^b"),
     False, False, "#/pattern: PATTERN_CHANGED"),
    ("tighten maximum", typed("number", maximum=10), typed("number", maximum=5),
     False, True, "#/maximum: MAXIMUM_DECREASED"),
    ("loosen maximum", typed("number", maximum=5), typed("number", maximum=10),
     True, False, "#/maximum: MAXIMUM_DECREASED"),
    ("lower minimum", typed("integer", minimum=5), typed("integer", minimum=0),
     True, False, "#/minimum: MINIMUM_INCREASED"),
    ("lower exclusiveMaximum", typed("number", exclusiveMaximum=5),
     typed("number", exclusiveMaximum=4),
     False, True, "#/exclusiveMaximum: EXCLUSIVE_MAXIMUM_DECREASED"),
    ("draft 4: make maximum exclusive", {"$schema": D4, **typed("number", maximum=5)},
     {"$schema": D4, **typed("number", maximum=5, exclusiveMaximum=True)},
     False, True, "#/exclusiveMaximum: EXCLUSIVE_MAXIMUM_ADDED"),
    ("multipleOf 2 -> 4", typed("integer", multipleOf=2), typed("integer", multipleOf=4),
     False, True, "#/multipleOf: MULTIPLE_OF_EXPANDED"),
    ("multipleOf 0.5 -> 0.3", typed("number", multipleOf=0.5), typed("number", multipleOf=0.3),
     False, False, "#/multipleOf: MULTIPLE_OF_CHANGED"),
    # Arrays.
    ("widen array items", typed("array", items=INT), typed("array", items=NUM),
     True, False, "#/items: TYPE_NARROWED"),
    ("add items schema", typed("array"), typed("array", items=STR),
     False, True, "#/items: SCHEMA_ADDED"),
    ("lower maxItems", typed("array", maxItems=3), typed("array", maxItems=2),
     False, True, "#/maxItems: MAX_ITEMS_DECREASED"),
    ("raise minItems", typed("array", minItems=0), typed("array", minItems=1),
     False, True, "#/minItems: MIN_ITEMS_INCREASED"),
    ("add uniqueItems", typed("array"), typed("array", uniqueItems=True),
     False, True, "#/uniqueItems: UNIQUE_ITEMS_ADDED"),
    ("add tuple item, closed tuple", typed("array", items=[STR], additionalItems=False),
     typed("array", items=[STR, INT], additionalItems=False),
     True, False, "#/items/1: ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("add tuple item, open tuple", typed("array", items=[STR]), typed("array", items=[STR, INT]),
     False, True, "#/items/1: ITEM_ADDED_TO_OPEN_CONTENT_MODEL"),
    ("additionalItems false -> true", typed("array", items=[STR], additionalItems=False),
     typed("array", items=[STR]),
     True, False, "#/additionalItems: ADDITIONAL_ITEMS_REMOVED"),
    ("2020-12: add prefixItems to a closed tuple",
     {"$schema": D2020, "prefixItems": [STR], "items": False},
     {"$schema": D2020, "prefixItems": [STR, INT], "items": False},
     True, False, "#/prefixItems/1: ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    # Combined schemas.
    ("add a oneOf branch", {"oneOf": [STR, INT]}, {"oneOf": [STR, INT, NULL]},
     True, False, "#/: SUM_TYPE_NARROWED"),
    ("change a oneOf branch", {"oneOf": [STR, obj({"a": INT})]}, {"oneOf": [STR, obj({"a": STR})]},
     False, False, "#/oneOf/1/properties/a: TYPE_CHANGED"),
    ("add an allOf member", {"allOf": [obj({"a": STR})]},
     {"allOf": [obj({"a": STR}), {"required": ["a"]}]},
     False, True, "#/: PRODUCT_TYPE_EXTENDED"),
    ("oneOf -> anyOf", {"oneOf": [STR, INT]}, {"anyOf": [STR, INT]},
     True, False, "#/: COMBINED_TYPE_CHANGED"),
    ("allOf flattened into one of its members", {"allOf": [obj({"a": STR}), {"required": ["a"]}]},
     obj({"a": STR}), True, False, "#/: TYPE_CHANGED"),
    ("type becomes a branch of a union", STR, {"oneOf": [STR, INT]}, True, False, "TYPE_CHANGED"),
    ("narrow a not", {"not": typed(["string", "integer"])}, {"not": STR},
     True, False, "#/not: NOT_TYPE_EXTENDED"),
]


@pytest.mark.parametrize(
    ("old", "new", "backward", "forward", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in EVOLUTIONS],
)
def test_compatibility(old: Any, new: Any, backward: bool, forward: bool, expected: str) -> None:
    old_schema, new_schema = js(old), js(new)
    backward_errors = new_schema.compatibility_errors(old_schema)
    forward_errors = old_schema.compatibility_errors(new_schema)
    verdict = (not backward_errors, not forward_errors)
    assert verdict == (backward, forward), (backward_errors, forward_errors)
    if expected:
        assert any(expected in e for e in backward_errors + forward_errors)
    # Every schema reads its own data, also when parsed twice (no identity shortcut).
    assert old_schema.compatibility_errors(js(old)) == []
    assert new_schema.compatibility_errors(js(new)) == []


LINKED_LIST = {
    "definitions": {
        "node": {"type": ["object", "null"],
                 "properties": {"value": INT, "next": {"$ref": "#/definitions/node"}}},
    },
    "$ref": "#/definitions/node",
}


def test_recursive_refs_terminate_and_are_compared() -> None:
    wider = json.loads(json.dumps(LINKED_LIST))
    wider["definitions"]["node"]["properties"]["value"] = NUM
    old, new = js(LINKED_LIST), js(wider)
    assert new.compatibility_errors(old) == []
    errors = old.compatibility_errors(new)
    assert "#/properties/value: TYPE_NARROWED" in errors
    assert "#/: COMBINED_TYPE_SUBSCHEMAS_CHANGED" in errors


def test_refs_into_definitions_compare_like_inline_schemas() -> None:
    via_ref = js({"definitions": {"age": INT},
                  "properties": {"age": {"$ref": "#/definitions/age"}}})
    inline_number = js({"properties": {"age": NUM}})
    assert inline_number.compatibility_errors(via_ref) == []
    assert via_ref.compatibility_errors(inline_number) == ["#/properties/age: TYPE_NARROWED"]


def test_refs_into_references_are_followed() -> None:
    def with_x(x: Any) -> JsonSchema:
        return js({"properties": {"x": {"$ref": "other.json#/definitions/X"}}},
                  [("other.json", json.dumps({"definitions": {"X": x}}))])

    old, new = with_x(STR), with_x(typed("string", maxLength=3))
    assert old.compatibility_errors(new) == []
    assert new.compatibility_errors(old) == ["#/properties/x/maxLength: MAX_LENGTH_ADDED"]


def test_draft_2019_ref_siblings_are_compared_too() -> None:
    def schema(y: Any) -> JsonSchema:
        return js({"$schema": "https://json-schema.org/draft/2019-09/schema",
                   "$defs": {"base": obj({"x": STR})}, "$ref": "#/$defs/base",
                   "properties": {"y": y}})

    assert schema(NUM).compatibility_errors(schema(INT)) == []
    assert schema(INT).compatibility_errors(schema(NUM)) == ["#/properties/y: TYPE_NARROWED"]


def test_false_writer_is_readable_by_anything() -> None:
    assert js(STR).compatibility_errors(js(False)) == []
    assert js(obj({"a": STR}, **CLOSED)).compatibility_errors(js(True)) == ["#/: TYPE_CHANGED"]


def test_other_schema_types_are_incompatible() -> None:
    class Avro:
        schema_type = "AVRO"

    errors = js(STR).compatibility_errors(Avro())  # type: ignore[arg-type]
    assert errors == ["#/: TYPE_CHANGED: the writer is a AVRO schema, not JSON"]
