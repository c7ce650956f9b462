"""Print a ``FileDescriptorProto`` back as ``.proto`` source text.

The registry stores Protobuf schemas as text it prints itself, from the descriptor the compiler
produced (or the client sent), so that the same schema always reads back the same way whatever
its original formatting, comments or input form were. The printed text must compile back to an
equivalent descriptor; ``tests/unit/registry/test_protobuf.py`` checks that round trip.

Two modes:

* canonical: declaration order is kept and type names are written as short as they can be while
  still resolving to the same type (protoc's scoping rules are simulated, see ``_type_ref``);
* normalized (``normalize=True``, Confluent's ``normalize=true``): fields sorted by number, oneofs
  after the plain fields, enum values, imports, reserved ranges and options sorted, and every type
  name fully qualified with a leading dot.

Message and nested-message order is never changed: Confluent's wire format for Protobuf carries
the index of the message within the file, so reordering messages would change what ids mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import descriptor_pb2 as dpb
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from registry.limits import checkpoint
from registry.protobuf_syntax import (
    ENUM_MAX,
    FIELD_MAX,
    SCALAR_NAMES,
    Interleaver,
    block,
    default_json_name,
    float_literal,
    has_repeated,
    join_name,
    quote_bytes,
    quote_string,
    range_text,
)

FieldProto = dpb.FieldDescriptorProto
_UNINTERPRETED_OPTION = 999  # protoc's leftovers; never part of a compiled descriptor's meaning


class ProtoPrinter:
    """Prints one file of a validated descriptor set.

    ``files`` holds the file and everything it imports (transitively); ``pool`` is a descriptor
    pool built from them, used to decode custom options (extensions of ``*Options``)."""

    def __init__(
        self,
        file: dpb.FileDescriptorProto,
        files: Mapping[str, dpb.FileDescriptorProto],
        pool: descriptor_pool.DescriptorPool,
        *,
        normalize: bool = False,
        ignore_extensions: bool = False,
    ) -> None:
        self._file = file
        self._pool = pool
        self._normalize = normalize
        self._ignore_extensions = ignore_extensions
        self._editions = file.syntax == "editions"
        self._proto3 = file.syntax == "proto3"
        # Every symbol of every file, fully qualified without the leading dot: protoc resolves a
        # relative name by its first component against *any* symbol (a field or an enum value
        # can shadow a type), so all of them are needed to know whether a short name is safe.
        self._symbols: set[str] = set()
        self._messages: dict[str, dpb.DescriptorProto] = {}
        for f in files.values():
            self._collect(f)

    # --- symbol table -------------------------------------------------------------------------

    def _collect(self, f: dpb.FileDescriptorProto) -> None:
        parts = f.package.split(".") if f.package else []
        for i in range(1, len(parts) + 1):
            self._symbols.add(".".join(parts[:i]))
        scope = f.package
        for m in f.message_type:
            self._collect_message(m, scope)
        for e in f.enum_type:
            self._collect_enum(e, scope)
        self._symbols.update(join_name(scope, x.name) for x in f.extension)
        for s in f.service:
            self._symbols.add(join_name(scope, s.name))
            self._symbols.update(join_name(scope, s.name, m.name) for m in s.method)

    def _collect_message(self, m: dpb.DescriptorProto, scope: str) -> None:
        full = join_name(scope, m.name)
        self._symbols.add(full)
        self._messages["." + full] = m
        self._symbols.update(
            join_name(full, x.name) for x in [*m.field, *m.extension, *m.oneof_decl])
        for n in m.nested_type:
            self._collect_message(n, full)
        for e in m.enum_type:
            self._collect_enum(e, full)

    def _collect_enum(self, e: dpb.EnumDescriptorProto, scope: str) -> None:
        self._symbols.add(join_name(scope, e.name))
        # C++ scoping: enum values are siblings of their enum, not children.
        self._symbols.update(join_name(scope, v.name) for v in e.value)
        self._symbols.update(join_name(scope, e.name, v.name) for v in e.value)

    def _type_ref(self, type_name: str, scope: str) -> str:
        """``type_name`` (".pkg.Msg") as written from inside ``scope``: the shortest suffix that
        protoc resolves back to the same type, else the fully-qualified name."""
        if self._normalize or not type_name.startswith("."):
            return type_name
        target = type_name[1:]
        parts = target.split(".")
        chain = scope.split(".") if scope else []
        for k in range(len(parts) - 1, -1, -1):
            candidate = parts[k:]
            for depth in range(len(chain), -1, -1):
                first = join_name(".".join(chain[:depth]), candidate[0])
                if first in self._symbols:
                    # protoc binds the first component here; the rest must follow from it.
                    if join_name(first, *candidate[1:]) == target:
                        return ".".join(candidate)
                    break
        return type_name

    def _option_name(self, full_name: str) -> str:
        """An extension's name inside ``(...)``: as is when its first component names nothing
        but the root package (so no scope can shadow it), else with a leading dot."""
        first = full_name.split(".")[0]
        if self._normalize or any(s.endswith("." + first) for s in self._symbols):
            return "." + full_name
        return full_name

    # --- options ------------------------------------------------------------------------------

    def _options(self, opts: Message, skip: Iterable[str] = ()) -> list[tuple[str, str]]:
        """``(name, value)`` pairs for the set options, custom options decoded via the pool."""
        if not opts.ByteSize():
            return []
        msg = opts
        try:
            # Custom options are unknown fields of descriptor_pb2's class; the pool's own class
            # for the same options message knows the extensions the schema defines.
            desc = self._pool.FindMessageTypeByName(opts.DESCRIPTOR.full_name)
            msg = message_factory.GetMessageClass(desc)()
            msg.MergeFromString(opts.SerializeToString())
        except KeyError:
            pass  # descriptor.proto is not imported, so there are no custom options to decode
        items: list[tuple[str, str]] = []
        for fd, value in msg.ListFields():
            if fd.number == _UNINTERPRETED_OPTION or fd.name in skip:
                continue
            if fd.is_extension:
                name = f"({self._option_name(fd.full_name)})"
                if self._ignore_extensions and not fd.full_name.startswith("confluent."):
                    continue
            else:
                name = fd.name
            for v in value if fd.is_repeated else [value]:
                items.extend(self._option_value(name, fd, v))
        # Sorted by name only: the order of a repeated option's values is significant.
        return sorted(items, key=lambda item: item[0]) if self._normalize else items

    def _option_value(self, name: str, fd: FieldDescriptor, value: object) -> list[tuple[str, str]]:
        if fd.message_type is None:
            return [(name, self._scalar(fd, value))]
        assert isinstance(value, Message)
        # protoc only accepts aggregates ("{ ... }") for repeated or repeated-holding messages.
        if not fd.is_repeated and value.ListFields() and not has_repeated(value):
            # Dotted form (``features.field_presence = IMPLICIT``) is how people write these.
            out: list[tuple[str, str]] = []
            for sub, v in value.ListFields():
                sub_name = f"({self._option_name(sub.full_name)})" if sub.is_extension else sub.name
                out.extend(self._option_value(f"{name}.{sub_name}", sub, v))
            return out
        body = text_format.MessageToString(
            value, as_one_line=True, as_utf8=True, descriptor_pool=self._pool
        )
        return [(name, "{ " + body + " }" if body else "{}")]

    @staticmethod
    def _scalar(fd: FieldDescriptor, value: object) -> str:
        if fd.enum_type is not None:
            v = fd.enum_type.values_by_number.get(value)  # type: ignore[arg-type]
            return v.name if v is not None else str(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return quote_string(value)
        if isinstance(value, bytes):
            return quote_bytes(value)
        if isinstance(value, float):
            return float_literal(value)
        return str(value)

    @staticmethod
    def _brackets(items: list[tuple[str, str]]) -> str:
        return " [" + ", ".join(f"{k} = {v}" for k, v in items) + "]" if items else ""

    def _statements(self, opts: Message, skip: Iterable[str] = ()) -> list[str]:
        return [f"option {k} = {v};" for k, v in self._options(opts, skip)]

    # --- file ---------------------------------------------------------------------------------

    def print(self) -> str:
        f = self._file
        head: list[str] = []
        if self._editions:
            head.append(f'edition = "{dpb.Edition.Name(f.edition).removeprefix("EDITION_")}";')
        else:
            head.append(f'syntax = "{f.syntax or "proto2"}";')
        if f.package:
            head.append(f"package {f.package};")
        imports = []
        for i, dep in enumerate(f.dependency):
            kind = (
                "public " if i in f.public_dependency else "weak " if i in f.weak_dependency else ""
            )
            imports.append(f'import {kind}"{dep}";')
        sections = [
            head,
            sorted(imports) if self._normalize else imports,
            self._statements(f.options),
        ]
        emitter = Interleaver(self._message, f.message_type, f.package, f.extension, sections)
        emitter.flush_before(f.extension)
        sections += [self._enum(e) for e in f.enum_type]
        for lines, fields in self._extends(f.extension, f.package):
            emitter.add(lines, fields)
            emitter.close_run()
        emitter.flush()
        sections += [self._service(s, f.package) for s in f.service]
        return "\n\n".join("\n".join(s) for s in sections if s) + "\n"

    # --- messages -----------------------------------------------------------------------------
    #
    # protoc appends a map field's entry message and a group's message to the enclosing
    # nested_type list at the point the field is declared. Confluent's wire format identifies a
    # message by its index in these lists, so explicit nested messages are printed between the
    # fields when needed to keep every index where it was.

    def _message(self, m: dpb.DescriptorProto, scope: str, header: str = "") -> list[str]:
        checkpoint()
        full = join_name(scope, m.name)
        emitter = Interleaver(self._message, m.nested_type, full, [*m.field, *m.extension])
        emitter.sections += [
            # Message ranges are stored end-exclusive, enum ranges end-inclusive.
            self._reserved(
                [(r.start, r.end - 1) for r in m.reserved_range], m.reserved_name, FIELD_MAX
            ),
            self._statements(m.options, skip={"map_entry"}),
        ]
        for lines, fields in self._field_units(m, full):
            emitter.add(lines, fields)
        emitter.close_run()
        if not self._ignore_extensions:
            emitter.sections.append(
                [
                    f"extensions {range_text(r.start, r.end - 1, FIELD_MAX)}"
                    f"{self._brackets(self._options(r.options))};"
                    for r in m.extension_range
                ]
            )
        for lines, fields in self._extends(m.extension, full):
            emitter.add(lines, fields)
            emitter.close_run()
        emitter.flush()
        emitter.sections += [self._enum(e) for e in m.enum_type]
        return block(header or f"message {m.name}", emitter.sections)

    def _field_units(
        self, m: dpb.DescriptorProto, scope: str
    ) -> list[tuple[list[str], list[dpb.FieldDescriptorProto]]]:
        """The message's fields as printable units: one per plain field, one per oneof."""

        def real_oneof(f: dpb.FieldDescriptorProto) -> int | None:
            return f.oneof_index if f.HasField("oneof_index") and not f.proto3_optional else None

        def oneof_unit(index: int) -> tuple[list[str], list[dpb.FieldDescriptorProto]]:
            members = [f for f in m.field if real_oneof(f) == index]
            if self._normalize:
                members.sort(key=lambda f: f.number)
            decl = m.oneof_decl[index]
            body = self._statements(decl.options)
            for f in members:
                body += self._field(f, scope, in_oneof=True)
            return block(f"oneof {decl.name}", [body]), members

        units = []
        if self._normalize:
            # Confluent's normalized form: plain fields by number, then oneofs by first number.
            for f in sorted(m.field, key=lambda f: f.number):
                if real_oneof(f) is None:
                    units.append((self._field(f, scope), [f]))
            firsts: dict[int, int] = {}
            for f in m.field:
                if (i := real_oneof(f)) is not None:
                    firsts[i] = min(firsts.get(i, f.number), f.number)
            units += [oneof_unit(i) for i in sorted(firsts, key=firsts.__getitem__)]
            return units
        done: set[int] = set()
        for f in m.field:
            i = real_oneof(f)
            if i is None:
                units.append((self._field(f, scope), [f]))
            elif i not in done:
                done.add(i)
                units.append(oneof_unit(i))
        return units

    def _field(
        self, f: dpb.FieldDescriptorProto, scope: str, *, in_oneof: bool = False
    ) -> list[str]:
        checkpoint()
        items: list[tuple[str, str]] = []
        if f.HasField("default_value"):
            items.append(("default", self._default(f)))
        if f.HasField("json_name") and f.json_name != default_json_name(f.name):
            items.append(("json_name", quote_string(f.json_name)))
        items += self._options(f.options)
        if self._normalize:
            items.sort(key=lambda item: item[0])
        opts = self._brackets(items)
        entry = self._messages.get(f.type_name)
        if entry is not None and entry.options.map_entry:
            key, value = (self._type_name(x, scope) for x in entry.field[:2])
            return [f"map<{key}, {value}> {f.name} = {f.number}{opts};"]
        label = ""
        if f.label == FieldProto.LABEL_REPEATED:
            label = "repeated "
        elif in_oneof or self._editions:
            label = ""  # editions spell presence as features, which are printed as options
        elif f.label == FieldProto.LABEL_REQUIRED:
            label = "required "
        elif not self._proto3 or f.proto3_optional:
            label = "optional "
        if f.type == FieldProto.TYPE_GROUP and entry is not None:
            header = f"{label}group {entry.name} = {f.number}{opts}"
            return self._message(entry, scope, header=header)
        return [f"{label}{self._type_name(f, scope)} {f.name} = {f.number}{opts};"]

    def _type_name(self, f: dpb.FieldDescriptorProto, scope: str) -> str:
        if f.type in SCALAR_NAMES:
            return SCALAR_NAMES[f.type]
        return self._type_ref(f.type_name, scope)

    def _default(self, f: dpb.FieldDescriptorProto) -> str:
        # descriptor.proto: strings hold the raw text, bytes are already C-escaped, enums are
        # value names, numbers/bools/inf/nan are literals as written.
        if f.type == FieldProto.TYPE_STRING:
            return quote_string(f.default_value)
        if f.type == FieldProto.TYPE_BYTES:
            return f'"{f.default_value}"'
        return f.default_value

    def _extends(
        self, fields: Iterable[dpb.FieldDescriptorProto], scope: str
    ) -> list[tuple[list[str], list[dpb.FieldDescriptorProto]]]:
        if self._ignore_extensions:
            return []
        by_extendee: dict[str, list[dpb.FieldDescriptorProto]] = {}
        for f in fields:
            by_extendee.setdefault(f.extendee, []).append(f)
        units = []
        for extendee, members in by_extendee.items():
            if self._normalize:
                members.sort(key=lambda f: f.number)
            body = [line for f in members for line in self._field(f, scope)]
            units.append((block(f"extend {self._type_ref(extendee, scope)}", [body]), members))
        return units

    def _reserved(self, spans: list[tuple[int, int]], names: Iterable[str], top: int) -> list[str]:
        """``reserved`` statements for inclusive number ranges and names."""
        names = list(names)
        if self._normalize:
            spans = sorted(spans)
            names.sort()
        lines = []
        if spans:
            lines.append("reserved " + ", ".join(range_text(a, b, top) for a, b in spans) + ";")
        if names:
            # Edition 2023 writes reserved names as identifiers; older syntaxes as strings.
            shown = names if self._editions else [quote_string(n) for n in names]
            lines.append("reserved " + ", ".join(shown) + ";")
        return lines

    # --- enums and services -------------------------------------------------------------------

    def _enum(self, e: dpb.EnumDescriptorProto) -> list[str]:
        values = list(e.value)
        if self._normalize:
            values.sort(key=lambda v: (v.number, v.name))
        body = [f"{v.name} = {v.number}{self._brackets(self._options(v.options))};" for v in values]
        return block(
            f"enum {e.name}",
            [
                self._reserved(
                    [(r.start, r.end) for r in e.reserved_range], e.reserved_name, ENUM_MAX
                ),
                self._statements(e.options),
                body,
            ],
        )

    def _service(self, s: dpb.ServiceDescriptorProto, scope: str) -> list[str]:
        inner = join_name(scope, s.name)
        body: list[str] = []
        for m in s.method:
            req = ("stream " if m.client_streaming else "") + self._type_ref(m.input_type, inner)
            resp = ("stream " if m.server_streaming else "") + self._type_ref(m.output_type, inner)
            line = f"rpc {m.name} ({req}) returns ({resp})"
            options = self._statements(m.options)
            body += block(line, [options]) if options else [line + ";"]
        return block(f"service {s.name}", [self._statements(s.options), body])
