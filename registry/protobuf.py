"""The PROTOBUF schema type of the registry (see :mod:`registry.schema`).

A schema arrives as ``.proto`` source text or, as confluent-kafka's Python serializer sends it,
as base64 of a serialized ``google.protobuf.FileDescriptorProto``; references are ``(import
path, text)`` pairs in either form. Text is compiled by the real compiler (protoc from
grpcio-tools) into descriptors, every descriptor is then built into a fresh ``DescriptorPool``
(which rejects unresolved names, e.g. in hand-made base64 descriptors), and the file is printed
back by :mod:`registry.protobuf_text` for ``canonical()``/``normalized()``.

Imports of well-known files (``google/protobuf/*.proto``; ``google/type/*.proto`` and
Confluent's ``confluent/meta.proto``/``confluent/type/decimal.proto`` when their Python modules
are installed) resolve without references, as in Confluent's registry.

Compatibility follows Confluent's ``io.confluent.kafka.schemaregistry.protobuf.diff`` package:
the same difference types, the same set of compatible ones and the same ``#/path`` notation.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property

import grpc_tools
from google.protobuf import descriptor_pb2 as dpb
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from registry import limits
from registry.limits import checkpoint
from registry.protobuf_text import SCALAR_NAMES, ProtoPrinter
from registry.schema import ParsedSchema, SchemaError, SchemaTooLarge

__all__ = ["COMPATIBLE_CHANGES", "ProtobufSchema", "differences", "parse"]

FieldProto = dpb.FieldDescriptorProto

_INCLUDE_DIR = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
_PROTOC_TIMEOUT_S = 30.0
_PROTOC_POLL_S = 0.02  # how often a waiting compile checks its request's budget
# Runs protoc in a child interpreter. Why a subprocess and not grpc_tools.protoc.main() in this
# process: protoc reports errors only by writing to the process's file descriptor 2 from C++, so
# capturing them in-process means dup2()-ing fd 2 away from every other thread of the gateway
# (their log lines would vanish into our buffer, and two concurrent parses would mix errors). A
# child also confines a compiler crash and can be timed out. "-I" keeps PYTHON* variables out;
# "-S" plus importing the extension module directly skip site and importlib.resources, so a
# compile costs ~16 ms instead of ~50 ms.
_RUNNER = """\
import sys
sys.path.insert(0, sys.argv[1])
args = [b"protoc", *(a.encode() for a in sys.argv[2:])]
try:
    from grpc_tools._protoc_compiler import run_main
except ImportError:
    from grpc_tools.protoc import main as run_main
    args = [a.decode() for a in args]
sys.exit(run_main(args))
"""
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_IMPORT = re.compile(r'\bimport\s+(?:public\s+|weak\s+)?"([^"]+)"')
_SEGMENT = re.compile(r"[A-Za-z0-9_.+-]+")
# protoc's stderr also carries warnings and absl log lines ("W0000 00:00:17.. parser.cc:659]").
_NOISE = re.compile(r": warning:|^WARNING: All log messages|^[IWEF]\d{4} ")
# Extra well-known files, looked up as Python modules; google/protobuf/* always resolves.
_MODULE_PREFIXES = {
    "google/protobuf/": "google.protobuf.",
    "google/type/": "google.type.",
    "confluent/type/": "confluent_kafka.schema_registry.confluent.type.",
    "confluent/": "confluent_kafka.schema_registry.confluent.",
}


# --- parsing ------------------------------------------------------------------------------------


def parse(text: str, references: Sequence[tuple[str, str]]) -> ProtobufSchema:
    """Parse a PROTOBUF schema (``.proto`` text or base64 descriptor) and its references."""
    texts: dict[str, str] = {}
    files: dict[str, dpb.FileDescriptorProto] = {}
    for name, ref_text in references:
        _check_import_path(name)
        fdp = _decode_descriptor(ref_text)
        if fdp is None:
            texts[name] = ref_text
        else:
            _check_descriptor(fdp, f"reference {name!r}")
            fdp.name = name  # the import path is the file's name (confluent-kafka does the same)
            files[name] = fdp
    main = _decode_descriptor(text)
    if main is not None:
        _check_descriptor(main, "the schema")
    if main is not None and _valid_path(main.name) and main.name not in texts.keys() | files.keys():
        name = main.name
    else:
        taken = texts.keys() | files.keys()
        name = next(
            n for i in range(len(taken) + 1) if (n := f"default{i or ''}.proto") not in taken
        )
    if main is None:
        texts[name] = text
        roots = [name]
    else:
        main.name = name
        files[name] = main
        roots = list(texts)  # text references a base64 schema may import
    if roots:
        files = {**_compile(texts, roots, files), **files}
    closure = _closure(name, files)
    pool = descriptor_pool.DescriptorPool()
    for fdp in closure.values():
        try:
            pool.Add(fdp)
        except (TypeError, ValueError, KeyError) as exc:
            raise SchemaError(f"invalid Protobuf schema {fdp.name!r}: {exc}") from None
    main = dpb.FileDescriptorProto()
    main.CopyFrom(closure[name])
    main.ClearField("source_code_info")
    return ProtobufSchema(main, closure, pool)


def _check_descriptor(fdp: dpb.FileDescriptorProto, what: str) -> None:
    """The limits a ``.proto`` text meets by its shape (see ``limits.proto_shape``), for a
    descriptor sent in binary: message nesting, and declarations (one per message, enum, field,
    enum value and service method)."""
    count = 0
    todo: list[tuple[dpb.DescriptorProto, int]] = [(m, 1) for m in fdp.message_type]
    count += sum(1 + len(e.value) for e in fdp.enum_type) + len(fdp.extension)
    count += sum(1 + len(svc.method) for svc in fdp.service)
    while todo:
        checkpoint()
        message, depth = todo.pop()
        if depth > limits.MAX_DEPTH:
            raise SchemaError(f"{what}: messages nested deeper than {limits.MAX_DEPTH} levels")
        count += 1 + len(message.field) + len(message.extension)
        count += sum(1 + len(e.value) for e in message.enum_type)
        todo += [(m, depth + 1) for m in message.nested_type]
        if count > limits.MAX_NODES:
            break
    if count > limits.MAX_NODES:
        raise SchemaTooLarge(f"{what} has more than {limits.MAX_NODES} declarations (messages, "
                             "fields, enum values)")


def _check_import_path(name: str) -> None:
    if not _valid_path(name):
        raise SchemaError(
            f"invalid Protobuf reference name {name!r}: expected a relative import path "
            'such as "other.proto" or "com/acme/other.proto"'
        )


def _valid_path(name: str) -> bool:
    # The names become files in a temporary directory: nothing absolute, no "..".
    parts = name.split("/")
    return bool(name) and all(_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts)


def _decode_descriptor(text: str) -> dpb.FileDescriptorProto | None:
    """The descriptor if ``text`` is base64 of a FileDescriptorProto, else None (= source)."""
    compact = "".join(text.split())
    # .proto source always has ';', '{', '"' or spaces, none of which base64 contains.
    if not _BASE64.fullmatch(compact):
        return None
    try:
        return dpb.FileDescriptorProto.FromString(base64.b64decode(compact, validate=True))
    except (binascii.Error, DecodeError):
        return None


def _compile(
    texts: Mapping[str, str], roots: Iterable[str], binaries: Mapping[str, dpb.FileDescriptorProto]
) -> dict[str, dpb.FileDescriptorProto]:
    """Run protoc on ``roots`` (names in ``texts``); every file they import comes back too."""
    # Files protoc cannot find on its own (base64 references, well-known files outside its
    # include directory) are handed over as a descriptor set.
    given = dict(binaries)
    wanted = [i for t in texts.values() for i in _IMPORT.findall(t)]
    wanted += [d for f in binaries.values() for d in f.dependency]
    for dep in wanted:
        if dep not in texts and dep not in given and not _in_include_dir(dep):
            given.update(_well_known_closure(dep))
    with tempfile.TemporaryDirectory(prefix="kelp-proto-") as tmp:
        src = os.path.join(tmp, "src")
        for name, body in texts.items():
            path = os.path.join(src, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as out:
                out.write(body)
        out_path = os.path.join(tmp, "out.pb")
        args = [f"--proto_path={src}", f"--proto_path={_INCLUDE_DIR}"]
        args += [f"--descriptor_set_out={out_path}", "--include_imports"]
        if given:
            in_path = os.path.join(tmp, "in.pb")
            with open(in_path, "wb") as out:
                out.write(dpb.FileDescriptorSet(file=given.values()).SerializeToString())
            args.append(f"--descriptor_set_in={in_path}")
        site_dir = os.path.dirname(os.path.dirname(grpc_tools.__file__))
        returncode, stderr = _run_protoc(
            [sys.executable, "-I", "-S", "-c", _RUNNER, site_dir, *args, *roots], tmp)
        if returncode != 0:
            raise SchemaError("invalid Protobuf schema: " + _protoc_errors(stderr, src))
        with open(out_path, "rb") as f:
            try:
                result = dpb.FileDescriptorSet.FromString(f.read())
            except DecodeError as exc:  # e.g. nested beyond the decoder's recursion limit
                raise SchemaError(f"invalid Protobuf schema: {exc}") from None
    return {f.name: f for f in result.file}


def _run_protoc(argv: list[str], cwd: str) -> tuple[int, bytes]:
    """Run the compiler child; kill it if it outlasts ``_PROTOC_TIMEOUT_S`` or the request's
    budget (checked every ``_PROTOC_POLL_S``), so that no compile outlives its request."""
    deadline = time.monotonic() + _PROTOC_TIMEOUT_S
    with subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            while True:
                try:
                    _, stderr = proc.communicate(timeout=_PROTOC_POLL_S)
                    return proc.returncode, stderr
                except subprocess.TimeoutExpired:
                    checkpoint()
                    if time.monotonic() > deadline:
                        raise SchemaError("Protobuf schema took too long to compile") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _protoc_errors(stderr: bytes, src: str) -> str:
    lines = stderr.decode("utf-8", "replace").replace(src + os.sep, "").splitlines()
    errors = [line for line in lines if line.strip() and not _NOISE.search(line)]
    return "; ".join(errors[:20] or lines[:20]) or "protoc failed without a message"


def _in_include_dir(name: str) -> bool:
    return os.path.isfile(os.path.join(_INCLUDE_DIR, *name.split("/")))


@cache
def _well_known(name: str) -> dpb.FileDescriptorProto | None:
    for prefix, package in _MODULE_PREFIXES.items():
        stem = name.removeprefix(prefix).removesuffix(".proto")
        if name.startswith(prefix) and name.endswith(".proto") and stem.isidentifier():
            try:
                module = importlib.import_module(f"{package}{stem}_pb2")
            except ImportError:
                return None
            fdp = dpb.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
            return fdp if fdp.name == name else None
    return None


def _well_known_closure(name: str) -> dict[str, dpb.FileDescriptorProto]:
    found: dict[str, dpb.FileDescriptorProto] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        fdp = _well_known(current) if current not in found else None
        if fdp is not None:
            found[current] = fdp
            todo += fdp.dependency
    return found


def _closure(
    name: str, files: Mapping[str, dpb.FileDescriptorProto]
) -> dict[str, dpb.FileDescriptorProto]:
    """``name`` and what it imports, transitively, dependencies first."""
    ordered: dict[str, dpb.FileDescriptorProto] = {}
    visiting: set[str] = set()

    def visit(current: str, importer: str) -> None:
        if current in ordered:
            return
        if current in visiting:
            raise SchemaError(f"Protobuf import cycle through {current!r}")
        fdp = files[current] if current in files else _well_known(current)
        if fdp is None:
            raise SchemaError(
                f"Protobuf import {current!r} of {importer!r} not found: "
                "register it and pass it as a reference"
            )
        visiting.add(current)
        for dep in fdp.dependency:
            visit(dep, current)
        visiting.discard(current)
        ordered[current] = fdp

    visit(name, name)
    return ordered


# --- the parsed schema --------------------------------------------------------------------------


class ProtobufSchema:
    """A validated Protobuf schema: the file's descriptor plus everything it imports."""

    schema_type = "PROTOBUF"

    def __init__(
        self,
        file: dpb.FileDescriptorProto,
        files: Mapping[str, dpb.FileDescriptorProto],
        pool: descriptor_pool.DescriptorPool,
    ) -> None:
        self.file = file
        self.files = {**files, file.name: file}  # dependencies first, this file last
        self.pool = pool

    def _print(self, *, normalize: bool = False, ignore_extensions: bool = False) -> str:
        printer = ProtoPrinter(
            self.file,
            self.files,
            self.pool,
            normalize=normalize,
            ignore_extensions=ignore_extensions,
        )
        return printer.print()

    @cached_property
    def _canonical(self) -> str:
        return self._print()

    def canonical(self) -> str:
        return self._canonical

    def normalized(self) -> str:
        return self._print(normalize=True)

    def formatted(self, fmt: str) -> str:
        if fmt in ("", "default"):
            return self.canonical()
        if fmt == "serialized":
            return base64.b64encode(self.file.SerializeToString(deterministic=True)).decode()
        if fmt == "ignore_extensions":
            return self._print(ignore_extensions=True)
        raise SchemaError(
            f"unknown format {fmt!r} for PROTOBUF: expected '', 'serialized' or 'ignore_extensions'"
        )

    def compatibility_errors(self, writer: ParsedSchema) -> list[str]:
        if not isinstance(writer, ProtobufSchema):
            return [f"incompatible schema type: reader is PROTOBUF, writer is {writer.schema_type}"]
        return [
            f"{d.path}: {d.type}"
            for d in differences(writer, self)
            if d.type not in COMPATIBLE_CHANGES
        ]


# --- compatibility ------------------------------------------------------------------------------
#
# Mirrors Confluent's SchemaDiff/MessageSchemaDiff/FieldSchemaDiff/OneOfDiff/EnumSchemaDiff:
# "original" is the writer's schema, "update" the reader's. Messages are matched by name within
# their scope, fields and enum constants by number. The reported types and the compatible set
# are Confluent's, so verdicts agree with a Confluent registry.

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
