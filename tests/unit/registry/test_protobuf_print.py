"""Tests for the PROTOBUF schema type: printing canonical and normalized text."""

from __future__ import annotations

from pathlib import Path

import grpc_tools
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.protobuf import parse
from tests.unit.registry.protobuf_schemas import ROUND_TRIP, descriptor


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
