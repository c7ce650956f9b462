"""Compatibility levels across schema types: each evolution gets, at every level, the verdict
Confluent's documentation gives (BACKWARD: the new schema reads old data; FORWARD: old schemas
read new data; FULL: both; *_TRANSITIVE: against every earlier version, not just the latest)."""

from __future__ import annotations

import json

import pytest

from registry import avro, json_schema, protobuf
from registry.core import compatibility_messages

LEVELS = ("NONE", "BACKWARD", "FORWARD", "FULL")


def _avro(*fields: dict) -> str:
    return json.dumps({"type": "record", "name": "R", "fields": list(fields)})


def _json(properties: dict, *, closed: bool = False, required: tuple[str, ...] = ()) -> str:
    schema: dict = {"type": "object", "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    if required:
        schema["required"] = list(required)
    return json.dumps(schema)


def _proto(body: str) -> str:
    return f'syntax = "proto3";\npackage kelp.levels;\nmessage M {{\n{body}\n}}\n'


A = {"name": "a", "type": "int"}
B_DEFAULT = {"name": "b", "type": "string", "default": ""}
B = {"name": "b", "type": "string"}

# (type module, old, new, verdicts for NONE, BACKWARD, FORWARD, FULL)
CASES = [
    pytest.param(avro, _avro(A), _avro(A, B_DEFAULT), (True, True, True, True),
                 id="avro-add-field-with-default"),
    pytest.param(avro, _avro(A), _avro(A, B), (True, False, True, False),
                 id="avro-add-field-without-default"),
    pytest.param(avro, _avro(A, B_DEFAULT), _avro(A), (True, True, True, True),
                 id="avro-remove-field-with-default"),
    pytest.param(avro, _avro(A, B), _avro(A), (True, True, False, False),
                 id="avro-remove-field-without-default"),
    pytest.param(avro, _avro(A), _avro({"name": "a", "type": "long"}),
                 (True, True, False, False), id="avro-promote-int-to-long"),
    pytest.param(avro, _avro(A), _avro({"name": "a", "type": "string"}),
                 (True, False, False, False), id="avro-int-to-string"),
    pytest.param(avro,
                 json.dumps({"type": "enum", "name": "E", "symbols": ["X", "Y"]}),
                 json.dumps({"type": "enum", "name": "E", "symbols": ["X", "Y", "Z"]}),
                 (True, True, False, False), id="avro-enum-add-symbol"),
    pytest.param(json_schema, _json({"a": {"type": "integer"}}),
                 _json({"a": {"type": "integer"}, "b": {"type": "string"}}),
                 (True, False, True, False), id="json-add-property-open-model"),
    pytest.param(json_schema, _json({"a": {"type": "integer"}}, closed=True),
                 _json({"a": {"type": "integer"}, "b": {"type": "string"}}, closed=True),
                 (True, True, False, False), id="json-add-optional-property-closed-model"),
    pytest.param(json_schema, _json({"a": {"type": "integer"}}, closed=True),
                 _json({"a": {"type": "integer"}, "b": {"type": "string"}}, closed=True,
                       required=("b",)),
                 (True, False, False, False), id="json-add-required-property-closed-model"),
    pytest.param(json_schema, _json({"a": {"type": "integer"}}),
                 _json({"a": {"type": "number"}}), (True, True, False, False),
                 id="json-widen-integer-to-number"),
    pytest.param(json_schema, _json({"a": {"enum": ["x", "y"]}}),
                 _json({"a": {"enum": ["x"]}}), (True, False, True, False),
                 id="json-remove-enum-value"),
    pytest.param(protobuf, _proto("int32 a = 1;"), _proto("int32 a = 1;\nstring b = 2;"),
                 (True, True, True, True), id="protobuf-add-field"),
    pytest.param(protobuf, _proto("int32 a = 1;\nstring b = 2;"), _proto("int32 a = 1;"),
                 (True, True, True, True), id="protobuf-remove-field"),
    pytest.param(protobuf, _proto("int32 a = 1;"), _proto("int32 renamed = 1;"),
                 (True, True, True, True), id="protobuf-rename-field"),
    pytest.param(protobuf, _proto("int32 a = 1;"), _proto("string a = 1;"),
                 (True, False, False, False), id="protobuf-int-to-string"),
    pytest.param(protobuf, _proto("int32 a = 1;"), _proto("int64 a = 1;"),
                 (True, True, True, True), id="protobuf-int32-to-int64"),
]


@pytest.mark.parametrize(("module", "old", "new", "verdicts"), CASES)
def test_levels(module, old: str, new: str, verdicts: tuple[bool, ...]) -> None:
    old_parsed, new_parsed = module.parse(old, []), module.parse(new, [])
    got = tuple(not compatibility_messages(level, new_parsed, [old_parsed])
                for level in LEVELS)
    assert got == verdicts, dict(zip(LEVELS, got, strict=True))


def test_transitive_levels_look_past_the_latest_version() -> None:
    v1 = avro.parse(_avro(A), [])
    v2 = avro.parse(_avro(A, B_DEFAULT), [])
    v3 = avro.parse(_avro(A, {"name": "b", "type": "string", "default": ""},
                          {"name": "c", "type": "int"}), [])
    # v3 adds c without a default: it cannot read v1 or v2 data. v2->v3 alone shows that too;
    # the interesting case is a version that only breaks against an older one.
    v3_ok_vs_v2 = avro.parse(_avro(A, B), [])  # b loses its default: reads v2, not v1
    assert compatibility_messages("BACKWARD", v3_ok_vs_v2, [v1, v2]) == []
    assert compatibility_messages("BACKWARD_TRANSITIVE", v3_ok_vs_v2, [v1, v2]) != []
    assert compatibility_messages("BACKWARD", v3, [v1, v2]) != []
    assert compatibility_messages("FORWARD_TRANSITIVE", v3, [v1, v2]) == []
    assert compatibility_messages("FULL_TRANSITIVE", v3, [v1, v2]) != []
