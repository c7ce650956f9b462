"""Tests for the PROTOBUF schema type: parsing text, base64 descriptors and references."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2 as dpb
from google.protobuf import timestamp_pb2

from registry.protobuf import parse
from registry.schema import SchemaError
from tests.unit.registry.protobuf_schemas import b64, descriptor

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
