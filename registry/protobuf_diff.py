"""Protobuf compatibility, as Confluent's ``io.confluent.kafka.schemaregistry.protobuf.diff``.

Mirrors Confluent's SchemaDiff/MessageSchemaDiff/FieldSchemaDiff/OneOfDiff/EnumSchemaDiff:
"original" is the writer's schema, "update" the reader's. Messages are matched by name within
their scope, fields and enum constants by number. The reported types and the compatible set
are Confluent's, so verdicts agree with a Confluent registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf import descriptor_pb2 as dpb

from registry.limits import checkpoint
from registry.protobuf_syntax import SCALAR_NAMES

if TYPE_CHECKING:
    from registry.protobuf import ProtobufSchema

FieldProto = dpb.FieldDescriptorProto

COMPATIBLE_CHANGES = frozenset(
    {
        *("MESSAGE_ADDED", "MESSAGE_MOVED", "ENUM_ADDED", "ENUM_REMOVED"),
        *("ENUM_CONST_ADDED", "ENUM_CONST_CHANGED", "ENUM_CONST_REMOVED"),
        *("FIELD_ADDED", "FIELD_REMOVED", "FIELD_NAME_CHANGED"),
        "FIELD_STRING_OR_BYTES_LABEL_CHANGED",
        *("ONEOF_ADDED", "ONEOF_REMOVED", "ONEOF_FIELD_ADDED"),
    }
)

# Wire-compatible scalar groups (protobuf's "Updating A Message Type" rules, as Confluent
# groups them); enums count as GENERAL_NUMBER.
_SCALAR_KIND = {
    name: kind
    for kind, names in {
        "GENERAL_NUMBER": "int32 int64 uint32 uint64 bool",
        "SIGNED_NUMBER": "sint32 sint64",
        "STRING_OR_BYTES": "string bytes",
        "FIXED32": "fixed32 sfixed32",
        "FIXED64": "fixed64 sfixed64",
        "FLOAT": "float",
        "DOUBLE": "double",
    }.items()
    for name in names.split()
}


@dataclass(frozen=True)
class Difference:
    type: str
    path: str


@dataclass
class _TypeInfo:
    proto: dpb.DescriptorProto | dpb.EnumDescriptorProto
    package: str
    syntax: str
    source: tuple[str, bytes] | None  # (file, bytes) of a dependency; None for the schema itself


@dataclass
class _Field:
    """A field as Confluent's diff sees it (a wire FieldElement)."""

    proto: FieldProto
    label: str | None  # "optional"/"required"/"repeated" when written, None when not
    oneof: str | None


def _index(schema: ProtobufSchema) -> dict[str, _TypeInfo]:
    types: dict[str, _TypeInfo] = {}
    for fdp in schema.files.values():
        own = fdp is schema.file
        source = None if own else (fdp.name, fdp.SerializeToString(deterministic=True))

        def add(
            scope: str,
            messages: Iterable[dpb.DescriptorProto],
            enums: Iterable[dpb.EnumDescriptorProto],
            fdp: dpb.FileDescriptorProto = fdp,
            source: tuple[str, bytes] | None = source,
        ) -> None:
            for e in enums:
                types[f"{scope}.{e.name}"] = _TypeInfo(e, fdp.package, fdp.syntax, source)
            for m in messages:
                full = f"{scope}.{m.name}"
                types[full] = _TypeInfo(m, fdp.package, fdp.syntax, source)
                add(full, m.nested_type, m.enum_type)

        add(f".{fdp.package}" if fdp.package else "", fdp.message_type, fdp.enum_type)
    return types


def differences(original: ProtobufSchema, update: ProtobufSchema) -> list[Difference]:
    """Every difference from ``original`` (writer) to ``update`` (reader), compatible or not."""
    diff = _Diff(_index(original), _index(update))
    if original.file.package != update.file.package:
        diff.add("PACKAGE_CHANGED")
    o_scope = f".{original.file.package}" if original.file.package else ""
    u_scope = f".{update.file.package}" if update.file.package else ""
    diff.compare_types(o_scope, u_scope, original.file, update.file)
    return list(dict.fromkeys(diff.found))  # the same type can be reached twice; report it once


@dataclass
class _Diff:
    original: dict[str, _TypeInfo]
    update: dict[str, _TypeInfo]
    path: list[str] = field(default_factory=list)
    found: list[Difference] = field(default_factory=list)
    visiting: set[str] = field(default_factory=set)  # original messages being compared

    def add(self, kind: str, *extra: str) -> None:
        self.found.append(Difference(kind, "#/" + "/".join([*self.path, *extra])))

    def enter(self, *parts: str) -> _Diff:
        return _Diff(self.original, self.update, [*self.path, *parts], self.found, self.visiting)

    def compare_types(
        self,
        o_scope: str,
        u_scope: str,
        original: dpb.FileDescriptorProto | dpb.DescriptorProto,
        update: dpb.FileDescriptorProto | dpb.DescriptorProto,
    ) -> None:
        o_msgs, u_msgs = _user_messages(original), _user_messages(update)
        for name in dict.fromkeys([*o_msgs, *u_msgs]):
            sub = self.enter(name)
            if name not in u_msgs:
                sub.add("MESSAGE_REMOVED")
            elif name not in o_msgs:
                sub.add("MESSAGE_ADDED")
            else:
                sub.compare_message(f"{o_scope}.{name}", f"{u_scope}.{name}")
                if list(o_msgs).index(name) != list(u_msgs).index(name):
                    sub.add("MESSAGE_MOVED")
        o_enums = {e.name: e for e in original.enum_type}
        u_enums = {e.name: e for e in update.enum_type}
        for name in dict.fromkeys([*o_enums, *u_enums]):
            sub = self.enter(name)
            if name not in u_enums:
                sub.add("ENUM_REMOVED")
            elif name not in o_enums:
                sub.add("ENUM_ADDED")
            else:
                sub.compare_enum(o_enums[name], u_enums[name])

    def compare_enum(
        self, original: dpb.EnumDescriptorProto, update: dpb.EnumDescriptorProto
    ) -> None:
        o_values = {v.number: v.name for v in original.value}
        u_values = {v.number: v.name for v in update.value}
        for number in sorted(o_values.keys() | u_values.keys()):
            if number not in u_values:
                self.add("ENUM_CONST_REMOVED", str(number))
            elif number not in o_values:
                self.add("ENUM_CONST_ADDED", str(number))
            elif o_values[number] != u_values[number]:
                self.add("ENUM_CONST_CHANGED", str(number))

    def compare_message(self, o_name: str, u_name: str) -> None:
        checkpoint()
        o_info, u_info = self.original[o_name], self.update[u_name]
        original, update = o_info.proto, u_info.proto
        assert isinstance(original, dpb.DescriptorProto)
        assert isinstance(update, dpb.DescriptorProto)
        if o_name in self.visiting:  # a recursive type: this level is being compared already
            return
        self.visiting.add(o_name)
        try:
            self._compare_fields(
                _fields(original, o_info.syntax, self.original),
                _fields(update, u_info.syntax, self.update),
            )
            self.compare_types(o_name, u_name, original, update)
        finally:
            self.visiting.discard(o_name)

    def _compare_fields(self, original: list[_Field], update: list[_Field]) -> None:
        o_all = {f.proto.number: f for f in original}
        u_all = {f.proto.number: f for f in update}
        o_plain = {n: f for n, f in o_all.items() if f.oneof is None}
        u_plain = {n: f for n, f in u_all.items() if f.oneof is None}
        o_oneofs = _oneofs(original)
        u_oneofs = _oneofs(update)
        for name, members in u_oneofs.items():
            # Old data may carry any combination of fields that were independent before; a oneof
            # gathering more than one such "group" makes some of that data unreadable.
            groups: set[str] = set()
            moved_in = 0
            for number in members:
                o_field = o_all.get(number)
                o_plain.pop(number, None)  # moved into a oneof: not a FIELD_REMOVED
                if o_field is not None and o_field.oneof is not None:
                    groups.add("oneof:" + o_field.oneof)
                elif o_field is not None:
                    groups.add(f"field:{number}")
                    moved_in += 1
            if len(groups) > 1:
                kind = (
                    "MULTIPLE_FIELDS_MOVED_TO_ONEOF"
                    if moved_in > 1
                    else "FIELD_MOVED_TO_EXISTING_ONEOF"
                )
                self.add(kind, name)
        for name in sorted(o_oneofs.keys() | u_oneofs.keys()):
            if name not in u_oneofs:
                self.add("ONEOF_REMOVED", name)
            elif name not in o_oneofs:
                self.add("ONEOF_ADDED", name)
            else:
                for number in sorted(set(o_oneofs[name]) | set(u_oneofs[name])):
                    sub = self.enter(name, str(number))
                    if number not in u_oneofs[name]:
                        if number not in u_all:  # moved out of the oneof is no removal
                            sub.add("ONEOF_FIELD_REMOVED")
                    elif number not in o_oneofs[name]:
                        sub.add("ONEOF_FIELD_ADDED")
                    else:
                        sub.compare_field(o_all[number], u_all[number])
        for number in sorted(o_plain.keys() | u_plain.keys()):
            sub = self.enter(str(number))
            if number not in u_plain:
                required = o_plain[number].label == "required"
                sub.add("REQUIRED_FIELD_REMOVED" if required else "FIELD_REMOVED")
            elif number not in o_plain:
                required = u_plain[number].label == "required"
                sub.add("REQUIRED_FIELD_ADDED" if required else "FIELD_ADDED")
            else:
                sub.compare_field(o_plain[number], u_plain[number])
        # Fields whose oneof membership changed were skipped above; compare their contents.
        for number in sorted(o_all.keys() & u_all.keys()):
            o_field, u_field = o_all[number], u_all[number]
            if o_field.oneof != u_field.oneof:
                self.enter(str(number)).compare_field(o_field, u_field)

    def compare_field(self, original: _Field, update: _Field) -> None:
        checkpoint()
        if original.proto.name != update.proto.name:
            self.add("FIELD_NAME_CHANGED")
        self._compare_types(
            original.label,
            update.label,
            _field_type(original.proto, self.original),
            _field_type(update.proto, self.update),
        )

    def _compare_types(
        self, o_label: str | None, u_label: str | None, original: tuple, update: tuple
    ) -> None:
        o_kind, u_kind = original[0], update[0]
        if o_kind != u_kind:
            self.add("FIELD_KIND_CHANGED")
        elif o_kind == "scalar":
            if original[1] != update[1]:
                self.add("FIELD_SCALAR_KIND_CHANGED")
            elif o_label is not None and u_label is not None and o_label != u_label:
                strings = original[1] == "STRING_OR_BYTES"
                self.add(
                    "FIELD_STRING_OR_BYTES_LABEL_CHANGED"
                    if strings
                    else "FIELD_NUMERIC_LABEL_CHANGED"
                )
        elif o_kind == "map":
            self._compare_types(None, None, original[1], update[1])
            self._compare_types(None, None, original[2], update[2])
        else:
            self._compare_message_types(original[1], update[1])

    def _compare_message_types(self, o_name: str, u_name: str) -> None:
        o_info, u_info = self.original.get(o_name), self.update.get(u_name)
        if o_info is None or u_info is None:  # unresolvable: all one can compare is the name
            if o_name != u_name:
                self.add("FIELD_NAMED_TYPE_CHANGED")
            return
        if _local_name(o_name, o_info) != _local_name(u_name, u_info):
            self.add("FIELD_NAMED_TYPE_CHANGED")
            return
        # Confluent skips types of the same reference version (and the schema's own types,
        # which are compared on their own); a changed dependency is compared like the schema.
        if o_info.source == u_info.source:
            return
        sub = _Diff(
            self.original, self.update, _local_name(o_name, o_info).split("."), [], self.visiting
        )
        sub.compare_message(o_name, u_name)
        self.found += sub.found
        if any(d.type not in COMPATIBLE_CHANGES for d in sub.found):
            self.add("FIELD_NAMED_TYPE_CHANGED")


def _user_messages(
    parent: dpb.FileDescriptorProto | dpb.DescriptorProto,
) -> dict[str, dpb.DescriptorProto]:
    # Map entries are synthetic: Confluent's parsed schemas have map<K, V> fields instead.
    messages = (
        parent.message_type if isinstance(parent, dpb.FileDescriptorProto) else parent.nested_type
    )
    return {m.name: m for m in messages if not m.options.map_entry}


def _fields(m: dpb.DescriptorProto, syntax: str, types: Mapping[str, _TypeInfo]) -> list[_Field]:
    out = []
    for f in m.field:
        in_oneof = f.HasField("oneof_index") and not f.proto3_optional
        oneof = m.oneof_decl[f.oneof_index].name if in_oneof else None
        label: str | None = None
        if oneof is None and _field_type(f, types)[0] != "map":
            if f.label == FieldProto.LABEL_REPEATED:
                label = "repeated"
            elif (
                f.label == FieldProto.LABEL_REQUIRED
                or f.options.features.field_presence == dpb.FeatureSet.LEGACY_REQUIRED
            ):
                label = "required"
            elif syntax in ("", "proto2") or f.proto3_optional:
                label = "optional"
        out.append(_Field(f, label, oneof))
    return out


def _oneofs(fields: Iterable[_Field]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for f in fields:
        if f.oneof is not None:
            found.setdefault(f.oneof, []).append(f.proto.number)
    return found


def _field_type(f: FieldProto, types: Mapping[str, _TypeInfo]) -> tuple:
    """("scalar", group) | ("message", full name) | ("map", key type, value type)."""
    if f.type in SCALAR_NAMES:
        return ("scalar", _SCALAR_KIND[SCALAR_NAMES[f.type]])
    info = types.get(f.type_name)
    if info is None:
        return ("message", f.type_name)
    if isinstance(info.proto, dpb.EnumDescriptorProto):
        return ("scalar", "GENERAL_NUMBER")
    if info.proto.options.map_entry:
        key, value = info.proto.field[:2]
        return ("map", _field_type(key, types), _field_type(value, types))
    return ("message", f.type_name)


def _local_name(full_name: str, info: _TypeInfo) -> str:
    name = full_name.lstrip(".")
    return name.removeprefix(info.package + ".") if info.package else name
