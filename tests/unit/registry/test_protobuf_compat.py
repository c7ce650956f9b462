"""Tests for the PROTOBUF schema type: Confluent-compatible compatibility checks."""

from __future__ import annotations

import pytest

from registry.protobuf import differences, parse
from tests.unit.registry.protobuf_schemas import ROUND_TRIP


def proto3(body: str, extra: str = "") -> str:
    return f'syntax = "proto3";\npackage acme;\nmessage Person {{\n{body}\n}}\n{extra}'


BASE = proto3("string name = 1; int32 age = 2;")

# (case, old schema, new schema, BACKWARD ok, FORWARD ok). BACKWARD means the new schema reads
# old data (new.compatibility_errors(old) == []); FORWARD the reverse. Verdicts follow
# Confluent's Protobuf rules (io.confluent.kafka.schemaregistry.protobuf.diff).
CASES = [
    ("same", BASE, BASE, True, True),
    ("add field", BASE, proto3("string name = 1; int32 age = 2; string city = 3;"), True, True),
    ("rename field", BASE, proto3("string full_name = 1; int32 age = 2;"), True, True),
    ("change number", BASE, proto3("string name = 1; int32 age = 3;"), True, True),
    ("int32 to int64", BASE, proto3("string name = 1; int64 age = 2;"), True, True),
    ("int32 to uint64", BASE, proto3("string name = 1; uint64 age = 2;"), True, True),
    ("int32 to bool", BASE, proto3("string name = 1; bool age = 2;"), True, True),
    ("int32 to sint32", BASE, proto3("string name = 1; sint32 age = 2;"), False, False),
    ("int32 to fixed32", BASE, proto3("string name = 1; fixed32 age = 2;"), False, False),
    ("int32 to string", BASE, proto3("string name = 1; string age = 2;"), False, False),
    ("string to bytes", BASE, proto3("bytes name = 1; int32 age = 2;"), True, True),
    (
        "sint32 to sint64",
        proto3("sint32 v = 1;"),
        proto3("sint64 v = 1;"),
        True,
        True,
    ),
    ("fixed32 to sfixed32", proto3("fixed32 v = 1;"), proto3("sfixed32 v = 1;"), True, True),
    ("fixed64 to sfixed64", proto3("fixed64 v = 1;"), proto3("sfixed64 v = 1;"), True, True),
    ("fixed32 to fixed64", proto3("fixed32 v = 1;"), proto3("fixed64 v = 1;"), False, False),
    ("float to double", proto3("float v = 1;"), proto3("double v = 1;"), False, False),
    (
        "int32 to enum",
        BASE,
        proto3("string name = 1; Age age = 2;", "enum Age { ZERO = 0; }"),
        True,
        True,
    ),
    (
        "scalar to message",
        BASE,
        proto3("string name = 1; Age age = 2;", "message Age { int32 v = 1; }"),
        False,
        False,
    ),
    (
        "message to other message",
        proto3("A v = 1;", "message A { int32 x = 1; }"),
        proto3("B v = 1;", "message B { int32 x = 1; }"),
        False,
        False,
    ),
    (
        "message field type changed inside",
        proto3("A v = 1;", "message A { int32 x = 1; }"),
        proto3("A v = 1;", "message A { string x = 1; }"),
        False,
        False,
    ),
    ("add message", BASE, BASE + "message Pet { string name = 1; }\n", True, False),
    (
        "reorder messages",
        BASE + "message Pet {}\n",
        'syntax = "proto3";\npackage acme;\nmessage Pet {}\n'
        "message Person { string name = 1; int32 age = 2; }\n",
        True,
        True,
    ),
    ("add enum", BASE, BASE + "enum E { A = 0; }\n", True, True),
    (
        "enum value added",
        BASE + "enum E { A = 0; }\n",
        BASE + "enum E { A = 0; B = 1; }\n",
        True,
        True,
    ),
    (
        "enum value removed",
        BASE + "enum E { A = 0; B = 1; }\n",
        BASE + "enum E { A = 0; }\n",
        True,
        True,
    ),
    ("enum value renamed", BASE + "enum E { A = 0; }\n", BASE + "enum E { Z = 0; }\n", True, True),
    (
        "package changed",
        BASE,
        BASE.replace("package acme;", "package acme.v2;"),
        False,
        False,
    ),
    (
        "field into new oneof",
        BASE,
        proto3("string name = 1; oneof a { int32 age = 2; }"),
        True,
        True,
    ),
    (
        "field into new oneof with new fields",
        BASE,
        proto3("string name = 1; oneof a { int32 age = 2; string born = 3; }"),
        True,
        True,  # the old reader just never sees "born": Confluent reports ONEOF_REMOVED only
    ),
    (
        "two fields into one oneof",
        BASE,
        proto3("oneof a { string name = 1; int32 age = 2; }"),
        False,
        True,
    ),
    (
        "field into existing oneof",
        proto3("string name = 1; oneof a { int32 age = 2; int32 born = 3; }"),
        proto3("oneof a { string name = 1; int32 age = 2; int32 born = 3; }"),
        False,
        True,
    ),
    (
        "field added to oneof",
        proto3("oneof a { string name = 1; int32 age = 2; }"),
        proto3("oneof a { string name = 1; int32 age = 2; bool dead = 3; }"),
        True,
        False,
    ),
    (
        "oneof renamed",
        proto3("oneof a { string name = 1; int32 age = 2; }"),
        proto3("oneof b { string name = 1; int32 age = 2; }"),
        True,
        True,
    ),
    (
        "optional to repeated string",
        proto3("optional string v = 1;"),
        proto3("repeated string v = 1;"),
        True,
        True,
    ),
    (
        "optional to repeated int",
        proto3("optional int32 v = 1;"),
        proto3("repeated int32 v = 1;"),
        False,
        False,
    ),
    (
        # Confluent compares labels only when both fields have one written.
        "implicit to repeated int",
        proto3("int32 v = 1;"),
        proto3("repeated int32 v = 1;"),
        True,
        True,
    ),
    (
        "optional to repeated message",
        proto3("optional A v = 1;", "message A {}"),
        proto3("repeated A v = 1;", "message A {}"),
        True,
        True,
    ),
    (
        "map value type changed",
        proto3("map<string, int32> m = 1;"),
        proto3("map<string, string> m = 1;"),
        False,
        False,
    ),
    (
        "map value int32 to int64",
        proto3("map<string, int32> m = 1;"),
        proto3("map<string, int64> m = 1;"),
        True,
        True,
    ),
    (
        "map key changed",
        proto3("map<string, int32> m = 1;"),
        proto3("map<int32, int32> m = 1;"),
        False,
        False,
    ),
    (
        "map to repeated message",
        proto3("map<string, int32> m = 1;"),
        proto3("repeated E m = 1;", "message E { string key = 1; int32 value = 2; }"),
        False,
        False,
    ),
    (
        "required field added",
        'syntax = "proto2";\nmessage P { optional string a = 1; }\n',
        'syntax = "proto2";\nmessage P { optional string a = 1; required int32 b = 2; }\n',
        False,
        False,
    ),
    (
        "optional field added (proto2)",
        'syntax = "proto2";\nmessage P { optional string a = 1; }\n',
        'syntax = "proto2";\nmessage P { optional string a = 1; optional int32 b = 2; }\n',
        True,
        True,
    ),
    (
        "nested message field changed",
        proto3("message In { int32 x = 1; }"),
        proto3("message In { double x = 1; }"),
        False,
        False,
    ),
    (
        "nested message added",
        proto3("string name = 1;"),
        proto3("string name = 1; message In { int32 x = 1; }"),
        True,
        False,
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "backward", "forward"),
    [pytest.param(o, n, b, f, id=name) for name, o, n, b, f in CASES],
)
def test_compatibility_table(old: str, new: str, backward: bool, forward: bool) -> None:
    old_schema, new_schema = parse(old, []), parse(new, [])
    assert (new_schema.compatibility_errors(old_schema) == []) is backward
    assert (old_schema.compatibility_errors(new_schema) == []) is forward


def test_error_messages_name_path_and_difference_type() -> None:
    old = parse(BASE, [])
    new = parse(proto3("string name = 1; Age age = 2;", "message Age { int32 v = 1; }"), [])
    assert new.compatibility_errors(old) == ["#/Person/2: FIELD_KIND_CHANGED"]
    # Removing a message is MESSAGE_REMOVED at the message's path.
    assert old.compatibility_errors(new) == [
        "#/Person/2: FIELD_KIND_CHANGED",
        "#/Age: MESSAGE_REMOVED",
    ]
    oneof = parse(proto3("oneof pick { string name = 1; int32 age = 2; }"), [])
    assert oneof.compatibility_errors(old) == ["#/Person/pick: MULTIPLE_FIELDS_MOVED_TO_ONEOF"]
    nested = parse(proto3("message In { int32 x = 1; }"), [])
    changed = parse(proto3("message In { double x = 1; }"), [])
    assert changed.compatibility_errors(nested) == ["#/Person/In/1: FIELD_SCALAR_KIND_CHANGED"]


def test_all_differences_are_reported_compatible_or_not() -> None:
    old = parse(proto3("string name = 1;", "enum E { A = 0; }"), [])
    new = parse(proto3("string full = 1; int32 age = 2;", "enum E { A = 0; B = 1; }"), [])
    found = {(d.type, d.path) for d in differences(old, new)}
    assert found == {
        ("FIELD_NAME_CHANGED", "#/Person/1"),
        ("FIELD_ADDED", "#/Person/2"),
        ("ENUM_CONST_ADDED", "#/E/1"),
    }


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            proto3("string a = 1; string b = 2;"),
            proto3("oneof both { string a = 1; string b = 2; int32 c = 3; }"),
            {
                ("MULTIPLE_FIELDS_MOVED_TO_ONEOF", "#/Person/both"),
                ("ONEOF_ADDED", "#/Person/both"),
            },
        ),
        (
            proto3("oneof pick { string a = 1; int32 c = 3; }"),
            proto3("oneof pick { string a = 1; }"),
            {("ONEOF_FIELD_REMOVED", "#/Person/pick/3")},
        ),
        (
            BASE + "message Pet {}\n",
            'syntax = "proto3";\npackage acme;\nmessage Pet {}\n' + BASE.split("\n", 2)[2],
            {("MESSAGE_MOVED", "#/Person"), ("MESSAGE_MOVED", "#/Pet")},
        ),
        (
            proto3("map<string, int32> m = 1;"),
            proto3("map<string, string> tags = 1;"),
            {("FIELD_NAME_CHANGED", "#/Person/1"), ("FIELD_SCALAR_KIND_CHANGED", "#/Person/1")},
        ),
        (
            proto3("optional int64 v = 1;"),
            proto3("repeated uint64 v = 1;"),
            {("FIELD_NUMERIC_LABEL_CHANGED", "#/Person/1")},
        ),
        (
            'syntax = "proto2";\nmessage P { required string a = 1; }\n',
            'syntax = "proto2";\nmessage P { required string a = 2; }\n',
            {("REQUIRED_FIELD_REMOVED", "#/P/1"), ("REQUIRED_FIELD_ADDED", "#/P/2")},
        ),
        (
            BASE,
            BASE.replace("package acme;", "package other;"),
            {("PACKAGE_CHANGED", "#/")},
        ),
    ],
)
def test_difference_types_and_paths(old: str, new: str, expected: set[tuple[str, str]]) -> None:
    assert {(d.type, d.path) for d in differences(parse(old, []), parse(new, []))} == expected


def test_changed_reference_is_compared_like_the_schema() -> None:
    v1 = 'syntax = "proto3";\npackage dep;\nmessage Home { int32 id = 1; }\n'
    v2 = 'syntax = "proto3";\npackage dep;\nmessage Home { string id = 1; }\n'
    main = 'syntax = "proto3";\nimport "dep.proto";\nmessage Device { dep.Home home = 1; }\n'
    old, new = parse(main, [("dep.proto", v1)]), parse(main, [("dep.proto", v2)])
    assert new.compatibility_errors(old) == [
        "#/Home/1: FIELD_SCALAR_KIND_CHANGED",
        "#/Device/1: FIELD_NAMED_TYPE_CHANGED",
    ]
    assert parse(main, [("dep.proto", v1)]).compatibility_errors(old) == []
    # The same type under another package is matched by its name inside the package.
    moved = 'syntax = "proto3";\npackage dep2;\nmessage Home { int32 id = 1; }\n'
    main2 = main.replace('"dep.proto"', '"dep2.proto"').replace("dep.Home", "dep2.Home")
    assert parse(main2, [("dep2.proto", moved)]).compatibility_errors(old) == []


def test_moving_a_message_to_and_from_a_reference() -> None:
    home = 'syntax = "proto3";\npackage dep;\nmessage Home { int32 id = 1; }\n'
    local = (
        'syntax = "proto3";\nmessage Device { Home home = 1; }\nmessage Home { int32 id = 1; }\n'
    )
    imported = 'syntax = "proto3";\nimport "dep.proto";\nmessage Device { dep.Home home = 1; }\n'
    old, new = parse(local, []), parse(imported, [("dep.proto", home)])
    # Confluent: the local message is gone (MESSAGE_REMOVED), though the field still matches.
    assert new.compatibility_errors(old) == ["#/Home: MESSAGE_REMOVED"]
    assert old.compatibility_errors(new) == []


def test_ignore_extensions_format() -> None:
    schema = parse(ROUND_TRIP["proto2"], [])
    text = schema.formatted("ignore_extensions")
    assert "extend" not in text
    assert "extensions 100" not in text
    assert "required string id = 1;" in text


def test_recursive_types_terminate() -> None:
    node = 'syntax = "proto3";\npackage t;\nmessage Node { repeated Node kids = 1; int32 v = 2; }\n'
    tree = 'syntax = "proto3";\nimport "node.proto";\nmessage Tree { t.Node root = 1; }\n'
    old = parse(tree, [("node.proto", node)])
    new = parse(tree, [("node.proto", node.replace("int32 v", "int64 v"))])
    assert new.compatibility_errors(old) == []


def test_text_and_base64_forms_are_compatible_with_each_other() -> None:
    text = parse(ROUND_TRIP["proto3"], [])
    binary = parse(text.formatted("serialized"), [])
    assert text.compatibility_errors(binary) == []
    assert binary.compatibility_errors(text) == []
    assert differences(text, binary) == []


def test_other_schema_types_are_incompatible() -> None:
    class Avro:
        schema_type = "AVRO"

    errors = parse(BASE, []).compatibility_errors(Avro())  # type: ignore[arg-type]
    assert errors and "AVRO" in errors[0]
