"""Tests for the PROTOBUF schema type: parsing, printing and Confluent-compatible compatibility."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2 as dpb
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.protobuf import ProtobufSchema, differences, parse
from registry.schema import SchemaError


def b64(fdp: dpb.FileDescriptorProto) -> str:
    return base64.standard_b64encode(fdp.SerializeToString()).decode()


def descriptor(schema: ProtobufSchema) -> dpb.FileDescriptorProto:
    return dpb.FileDescriptorProto.FromString(base64.b64decode(schema.formatted("serialized")))


# --- parsing ------------------------------------------------------------------------------------

PERSON = """
syntax = "proto3";   // comments and odd spacing are not significant
package acme.people;
option java_package = "com.acme.people";
message Person {
    string name = 1;
    int32   id = 2;
    repeated string emails = 3;
}
"""


def test_parse_text() -> None:
    schema = parse(PERSON, [])
    assert schema.schema_type == "PROTOBUF"
    assert schema.canonical() == (
        'syntax = "proto3";\n'
        "package acme.people;\n"
        "\n"
        'option java_package = "com.acme.people";\n'
        "\n"
        "message Person {\n"
        "  string name = 1;\n"
        "  int32 id = 2;\n"
        "  repeated string emails = 3;\n"
        "}\n"
    )
    assert schema.formatted("") == schema.canonical()
    assert parse(PERSON.replace("    ", "\t"), []).canonical() == schema.canonical()


def test_parse_base64_of_generated_module() -> None:
    # What confluent-kafka's ProtobufSerializer sends: base64 of FileDescriptor.serialized_pb.
    text = base64.standard_b64encode(timestamp_pb2.DESCRIPTOR.serialized_pb).decode()
    schema = parse(text, [])
    assert "message Timestamp {\n  int64 seconds = 1;\n  int32 nanos = 2;\n}" in schema.canonical()
    assert descriptor(schema) == dpb.FileDescriptorProto.FromString(
        timestamp_pb2.DESCRIPTOR.serialized_pb
    )


def test_parse_base64_compiled_on_the_fly_matches_text() -> None:
    from_text = parse(PERSON, [])
    from_b64 = parse(from_text.formatted("serialized"), [])
    assert from_b64.canonical() == from_text.canonical()
    # Whitespace inside base64 (line-wrapped by some tools) is tolerated.
    wrapped = "\n".join(from_text.formatted("serialized")[i : i + 20] for i in range(0, 200, 20))
    assert parse(wrapped + from_text.formatted("serialized")[200:], []).canonical() == (
        from_text.canonical()
    )


@pytest.mark.parametrize(
    ("path", "type_name"),
    [
        ("google/protobuf/timestamp.proto", "google.protobuf.Timestamp"),
        ("google/protobuf/duration.proto", "google.protobuf.Duration"),
        ("google/protobuf/any.proto", "google.protobuf.Any"),
        ("google/protobuf/struct.proto", "google.protobuf.Struct"),
        ("google/protobuf/wrappers.proto", "google.protobuf.StringValue"),
        ("google/protobuf/empty.proto", "google.protobuf.Empty"),
        ("google/protobuf/field_mask.proto", "google.protobuf.FieldMask"),
        ("google/protobuf/descriptor.proto", "google.protobuf.FileDescriptorProto"),
    ],
)
def test_well_known_imports_need_no_reference(path: str, type_name: str) -> None:
    text = f'syntax = "proto3";\nimport "{path}";\nmessage M {{ {type_name} v = 1; }}\n'
    schema = parse(text, [])
    assert f'import "{path}";' in schema.canonical()
    assert f"  {type_name} v = 1;" in schema.canonical()
    # The same schema as base64 resolves the import from the runtime's own descriptors.
    assert parse(schema.formatted("serialized"), []).canonical() == schema.canonical()


COMMON = 'syntax = "proto3";\npackage acme.common;\nmessage Money { int64 cents = 1; }\n'
ORDER = """
syntax = "proto3";
package acme.orders;
import "acme/common.proto";
message Order { acme.common.Money total = 1; }
"""


def test_references_as_text_and_as_base64() -> None:
    schema = parse(ORDER, [("acme/common.proto", COMMON)])
    assert "  common.Money total = 1;" in schema.canonical()  # shortest name protoc resolves
    common_b64 = parse(COMMON, []).formatted("serialized")
    assert parse(ORDER, [("acme/common.proto", common_b64)]).canonical() == schema.canonical()
    # A base64 schema whose import is a text reference, as confluent-kafka may register them.
    both_b64 = parse(schema.formatted("serialized"), [("acme/common.proto", common_b64)])
    assert both_b64.canonical() == schema.canonical()
    mixed = parse(schema.formatted("serialized"), [("acme/common.proto", COMMON)])
    assert mixed.canonical() == schema.canonical()


def test_transitive_references_in_dependency_order() -> None:
    base = 'syntax = "proto3";\npackage b;\nmessage Id { string v = 1; }\n'
    mid = 'syntax = "proto3";\npackage m;\nimport "b.proto";\nmessage Ref { b.Id id = 1; }\n'
    top = 'syntax = "proto3";\nimport "m.proto";\nmessage Top { m.Ref ref = 1; }\n'
    schema = parse(top, [("b.proto", base), ("m.proto", mid)])
    assert list(schema.files) == ["b.proto", "m.proto", schema.file.name]


def test_missing_reference_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"acme/common\.proto"):
        parse(ORDER, [])
    with pytest.raises(SchemaError, match=r"acme/common\.proto.*not found"):
        parse(parse(ORDER, [("acme/common.proto", COMMON)]).formatted("serialized"), [])


def test_invalid_text_reports_the_compiler_message() -> None:
    bad = 'syntax = "proto3";\nmessage M {\n  Missing m = 1;\n  int32 a = 1;\n}\n'
    with pytest.raises(SchemaError) as info:
        parse(bad, [])
    message = str(info.value)
    assert '3:3: "Missing" is not defined.' in message
    assert "Field number 1 has already been used" in message
    with pytest.raises(SchemaError) as info:
        parse("message {", [])
    # Only the error itself: no absl log lines or warnings about the missing syntax.
    assert str(info.value) == "invalid Protobuf schema: default.proto:1:9: Expected message name."


def test_unresolvable_base64_descriptor_is_rejected_by_the_pool() -> None:
    fdp = dpb.FileDescriptorProto(name="x.proto", package="x", syntax="proto3")
    fdp.message_type.add(name="A").field.add(
        name="f", number=1, type=dpb.FieldDescriptorProto.TYPE_MESSAGE, type_name=".x.Nope"
    )
    with pytest.raises(SchemaError, match=r"\.x\.Nope"):
        parse(b64(fdp), [])


@pytest.mark.parametrize("name", ["../evil.proto", "/etc/passwd", "a//b.proto", "", "a\\b.proto"])
def test_reference_names_must_be_relative_import_paths(name: str) -> None:
    with pytest.raises(SchemaError, match="reference name"):
        parse(ORDER, [(name, COMMON)])


def test_temporary_files_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    parse(ORDER, [("acme/common.proto", COMMON)])
    with pytest.raises(SchemaError):
        parse("message {", [])
    assert list(tmp_path.iterdir()) == []


def test_confluent_and_google_type_imports_need_no_reference() -> None:
    pytest.importorskip("google.type.date_pb2")
    pytest.importorskip("confluent_kafka.schema_registry.confluent.meta_pb2")
    text = """syntax = "proto3";
        import "confluent/meta.proto";
        import "google/type/date.proto";
        message M {
          string ssn = 1 [(confluent.field_meta) = { tags: "PII" }];
          google.type.Date born = 2;
        }"""
    schema = parse(text, [])
    assert '  string ssn = 1 [(confluent.field_meta) = { tags: "PII" }];' in schema.canonical()
    assert parse(schema.formatted("serialized"), []).canonical() == schema.canonical()


def test_formatted() -> None:
    schema = parse(PERSON, [])
    assert schema.formatted("default") == schema.canonical()
    raw = base64.b64decode(schema.formatted("serialized"))
    assert dpb.FileDescriptorProto.FromString(raw).message_type[0].name == "Person"
    with pytest.raises(SchemaError, match="unknown format"):
        schema.formatted("json")


# --- printing -----------------------------------------------------------------------------------

ROUND_TRIP = {
    "proto3": """
        syntax = "proto3";
        package shop.v1;
        import "google/protobuf/timestamp.proto";
        option java_package = "com.shop.v1";
        option java_multiple_files = true;
        option go_package = "example.com/shop/v1;shopv1";
        option optimize_for = SPEED;
        message Item {
          message Price { int64 units = 1; string currency = 2; }
          enum Kind { KIND_UNSPECIFIED = 0; BOOK = 1; FOOD = 2 [deprecated = true]; }
          map<string, Price> prices = 1;
          string sku = 2 [json_name = "SKU"];
          optional int32 stock = 3;
          Kind kind = 4;
          oneof choice { string text = 5; bytes blob = 6; Price alt = 7; }
          repeated int64 tags = 8 [packed = false];
          google.protobuf.Timestamp created = 9;
          map<int32, Kind> kinds = 10;
          reserved 20, 22 to 25, 100 to max;
          reserved "old", "older";
        }
        enum Status {
          option allow_alias = true;
          STATUS_UNKNOWN = 0; STATUS_OK = 1; STATUS_FINE = 1;
          reserved 5 to 7, 10 to max;
          reserved "GONE";
        }
        service Shop {
          rpc Get (Item) returns (Item);
          rpc Watch (stream Item) returns (stream Item) { option deprecated = true; }
        }
    """,
    "proto2": r"""
        syntax = "proto2";
        package legacy;
        message Msg {
          required string id = 1;
          optional int32 count = 2 [default = -7];
          optional string label = 3 [default = "tab\there \"q\" é"];
          optional bytes raw = 4 [default = "\000\001\377"];
          optional double ratio = 5 [default = inf];
          optional float f = 6 [default = -1.5e-3];
          optional Color color = 7 [default = GREEN];
          repeated group Line = 8 { required int32 no = 1; optional string text = 2; }
          optional bool flag = 9 [default = true];
          extensions 100 to 199;
          extend Msg { optional int32 nested_ext = 150; }
        }
        enum Color { RED = 1; GREEN = 2; }
        extend Msg { optional string note = 100; repeated int64 nums = 101; }
    """,
    "editions": """
        edition = "2023";
        package ed;
        option features.field_presence = IMPLICIT;
        message Rec {
          int32 a = 1;
          int32 b = 2 [features.field_presence = LEGACY_REQUIRED];
          Rec child = 3 [features.message_encoding = DELIMITED];
          reserved first, second;
          reserved 10;
        }
    """,
    "custom options": """
        syntax = "proto3";
        package opt;
        import "google/protobuf/descriptor.proto";
        message Meta { string doc = 1; repeated string tags = 2; }
        extend google.protobuf.FieldOptions { Meta meta = 50001; int32 level = 50002; }
        extend google.protobuf.MessageOptions { string table = 50003; }
        message Row {
          option (table) = "rows";
          string id = 1 [(meta) = { doc: "key" tags: "pii" tags: "id" }, (level) = 3];
          string note = 2 [(meta).doc = "free text", deprecated = true];
        }
    """,
    # Nested messages declared before map fields: printing must keep nested_type order
    # (map entries included), since Confluent's message indexes follow it.
    "nested order": """
        syntax = "proto3";
        message Outer {
          message A { int32 x = 1; }
          map<string, A> by_name = 1;
          message B { A a = 1; }
          map<string, B> by_key = 2;
          B b = 3;
        }
        message Second {}
    """,
    # Short names that would resolve to the wrong symbol must be qualified.
    "shadowing": """
        syntax = "proto3";
        package p;
        message Value { int32 v = 1; }
        message Holder {
          message Value { string s = 1; }
          p.Value outer = 1;
          Value inner = 2;
          int32 Thing = 3;
          .p.Thing thing = 4;
        }
        message Thing { int32 t = 1; }
    """,
    "no package": """
        syntax = "proto3";
        message A { B b = 1; message C { A a = 1; } }
        message B { A.C c = 1; }
    """,
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_printed_text_compiles_back_to_the_same_descriptor(name: str) -> None:
    schema = parse(ROUND_TRIP[name], [])
    again = parse(schema.canonical(), [])
    assert descriptor(again) == descriptor(schema)
    assert again.canonical() == schema.canonical()
    from_b64 = parse(schema.formatted("serialized"), [])
    assert from_b64.canonical() == schema.canonical()
    # The normalized text compiles too, and normalizing is idempotent.
    normalized = parse(schema.normalized(), [])
    assert normalized.normalized() == schema.normalized()
    assert [m.name for m in descriptor(normalized).message_type] == [
        m.name for m in descriptor(schema).message_type
    ]


def _drop_empty_options(msg: Message) -> Message:
    # protoc keeps an empty options message when it strips source-retention options (such as
    # extension declarations); printed text cannot say "empty options", and need not.
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        for item in value if fd.is_repeated else [value]:
            _drop_empty_options(item)
        if fd.name == "options" and not value.ByteSize():
            msg.ClearField(fd.name)
    return msg


_INCLUDE_DIR = Path(grpc_tools.__file__).parent / "_proto"
WELL_KNOWN_SOURCES = sorted(str(p.relative_to(_INCLUDE_DIR)) for p in _INCLUDE_DIR.rglob("*.proto"))


@pytest.mark.parametrize("name", WELL_KNOWN_SOURCES)
def test_real_world_files_round_trip(name: str) -> None:
    # descriptor.proto and friends use every corner: proto2 defaults, extension ranges with
    # options, editions features, repeated message options, reserved names.
    schema = parse((_INCLUDE_DIR / name).read_text(), [])
    again = parse(schema.canonical(), [])
    assert _drop_empty_options(descriptor(again)) == _drop_empty_options(descriptor(schema))
    assert parse(schema.normalized(), []).normalized() == schema.normalized()


# Random proto3 files whose names repeat across scopes (a nested "Value" next to a top-level
# one, fields named like types), with every reference written fully qualified: the printer must
# find names that are short yet still resolve to the same types.
_NAMES = ["Value", "Thing", "p", "Inner", "a"]
_SCALARS = ["int32", "string", "bytes", "double", "bool", "sint64", "fixed32"]


@st.composite
def proto3_files(draw: st.DrawFn) -> str:
    package = draw(st.sampled_from(["", "p", "p.q"]))
    types: list[tuple[str, str]] = []  # (fully-qualified name, "message" | "enum")

    def declare(scope: str, depth: int) -> list[tuple[str, str, list]]:
        names = draw(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3, unique=True))
        out = []
        for i, name in enumerate(names):
            kind = "enum" if i == len(names) - 1 and draw(st.booleans()) else "message"
            full = f"{scope}.{name}"
            types.append((full, kind))
            nested = declare(full, depth + 1) if kind == "message" and depth < 2 else []
            out.append((name, kind, nested))
        return out

    tree = declare(f".{package}" if package else "", 0)
    refs = [full for full, _ in types]

    def field_type() -> str:
        return draw(st.sampled_from(_SCALARS + refs))

    def render(name: str, kind: str, nested: list, scope: str, taken: set[str]) -> list[str]:
        if kind == "enum":
            values = [f"{name.upper()}_{scope.replace('.', '_').upper()}_{i}" for i in range(2)]
            return [f"enum {name} {{", *(f"  {v} = {i};" for i, v in enumerate(values)), "}"]
        inner = {n for n, _, _ in nested}
        lines = [f"message {name} {{"]
        fields = draw(
            st.lists(st.sampled_from([*_NAMES, "b", "c"]), max_size=4, unique=True).map(
                lambda names: [n for n in names if n not in inner]
            )
        )
        oneof_from = draw(st.integers(0, len(fields)))
        for number, fname in enumerate(fields, start=1):
            if number > oneof_from:
                lines.append(f"  oneof o_{fname} {{ {field_type()} {fname} = {number}; }}")
            elif draw(st.booleans()):
                lines.append(f"  map<string, {field_type()}> {fname} = {number};")
            else:
                label = draw(st.sampled_from(["", "repeated ", "optional "]))
                lines.append(f"  {label}{field_type()} {fname} = {number};")
        for n, k, sub in nested:
            lines += ["  " + line for line in render(n, k, sub, f"{scope}_{name}", inner)]
        return [*lines, "}"]

    body = [line for n, k, sub in tree for line in render(n, k, sub, "", set())]
    head = ['syntax = "proto3";'] + ([f"package {package};"] if package else [])
    return "\n".join(head + body) + "\n"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proto3_files())
def test_printer_round_trips_random_schemas(text: str) -> None:
    schema = parse(text, [])
    again = parse(schema.canonical(), [])
    assert descriptor(again) == descriptor(schema)
    assert parse(schema.normalized(), []).normalized() == schema.normalized()


def test_shadowed_names_are_qualified() -> None:
    text = parse(ROUND_TRIP["shadowing"], []).canonical()
    assert "  p.Value outer = 1;" in text
    assert "  Value inner = 2;" in text
    assert "  p.Thing thing = 4;" in text


def test_custom_option_names_are_qualified_when_shadowed() -> None:
    text = parse(ROUND_TRIP["custom options"], []).canonical()
    assert '  option (opt.table) = "rows";' in text
    assert '(opt.meta) = { doc: "key" tags: "pii" tags: "id" }, (opt.level) = 3];' in text
    shadowed = ROUND_TRIP["custom options"].replace("string id = 1", "string opt = 1")
    text = parse(shadowed, []).canonical()
    assert '  option (.opt.table) = "rows";' in text
    assert parse(text, []).canonical() == text


def test_canonical_hides_synthetic_declarations() -> None:
    text = parse(ROUND_TRIP["proto3"], []).canonical()
    assert "map<string, Price> prices = 1;" in text
    assert "PricesEntry" not in text
    assert "optional int32 stock = 3;" in text
    assert "_stock" not in text  # proto3 optional's synthetic oneof
    assert 'string sku = 2 [json_name = "SKU"];' in text
    assert "json_name" not in text.replace('json_name = "SKU"', "")


def test_canonical_of_proto2_details() -> None:
    text = parse(ROUND_TRIP["proto2"], []).canonical()
    assert '  optional string label = 3 [default = "tab\\there \\"q\\" é"];' in text
    assert '  optional bytes raw = 4 [default = "\\000\\001\\377"];' in text
    assert "  repeated group Line = 8 {\n    required int32 no = 1;" in text
    assert "  extensions 100 to 199;" in text
    assert "extend Msg {\n  optional string note = 100;" in text


def test_normalized_ignores_field_and_option_order() -> None:
    a = """syntax = "proto3";
        import "google/protobuf/timestamp.proto";
        import "google/protobuf/duration.proto";
        option java_package = "x"; option go_package = "y";
        message M { int32 b = 2 [deprecated = true, json_name = "bee"];
                    google.protobuf.Timestamp a = 1;
                    oneof o { string z = 9; string y = 8; } }"""
    b = """syntax = "proto3";
        import "google/protobuf/duration.proto";
        import "google/protobuf/timestamp.proto";
        option go_package = "y"; option java_package = "x";
        message M { .google.protobuf.Timestamp a = 1;
                    oneof o { string y = 8; string z = 9; }
                    int32 b = 2 [json_name = "bee", deprecated = true]; }"""
    sa, sb = parse(a, []), parse(b, [])
    assert sa.canonical() != sb.canonical()
    assert sa.normalized() == sb.normalized()
    assert "  .google.protobuf.Timestamp a = 1;" in sa.normalized()


# --- compatibility ------------------------------------------------------------------------------


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
