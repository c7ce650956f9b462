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

Compatibility (``protobuf_diff.py``) follows Confluent's
``io.confluent.kafka.schemaregistry.protobuf.diff`` package: the same difference types, the same
set of compatible ones and the same ``#/path`` notation.
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
from functools import cache, cached_property

import grpc_tools
from google.protobuf import descriptor_pb2 as dpb
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from registry import limits
from registry.limits import checkpoint
from registry.protobuf_diff import COMPATIBLE_CHANGES, differences
from registry.protobuf_text import ProtoPrinter
from registry.schema import ParsedSchema, SchemaError, SchemaTooLarge

__all__ = ["COMPATIBLE_CHANGES", "ProtobufSchema", "differences", "parse"]


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
