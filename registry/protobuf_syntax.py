"""How pieces of ``.proto`` source are spelled (string and number literals, ranges, blocks)
and laid out (where explicit nested messages go among the fields), for the printer in
``protobuf_text.py``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from google.protobuf import descriptor_pb2 as dpb
from google.protobuf.message import Message

FieldProto = dpb.FieldDescriptorProto

SCALAR_NAMES: dict[int, str] = {
    FieldProto.TYPE_DOUBLE: "double",
    FieldProto.TYPE_FLOAT: "float",
    FieldProto.TYPE_INT64: "int64",
    FieldProto.TYPE_UINT64: "uint64",
    FieldProto.TYPE_INT32: "int32",
    FieldProto.TYPE_FIXED64: "fixed64",
    FieldProto.TYPE_FIXED32: "fixed32",
    FieldProto.TYPE_BOOL: "bool",
    FieldProto.TYPE_STRING: "string",
    FieldProto.TYPE_BYTES: "bytes",
    FieldProto.TYPE_UINT32: "uint32",
    FieldProto.TYPE_SFIXED32: "sfixed32",
    FieldProto.TYPE_SFIXED64: "sfixed64",
    FieldProto.TYPE_SINT32: "sint32",
    FieldProto.TYPE_SINT64: "sint64",
}
FIELD_MAX = 536_870_911  # largest field number; "max" in reserved/extensions ranges
ENUM_MAX = 2_147_483_647


def default_json_name(name: str) -> str:
    """protoc's default JSON name: drop underscores, upper-case the letter after each."""
    out: list[str] = []
    upper_next = False
    for ch in name:
        if ch == "_":
            upper_next = True
        else:
            out.append(ch.upper() if upper_next else ch)
            upper_next = False
    return "".join(out)


def quote_string(text: str) -> str:
    """A proto string literal for ``text``; non-ASCII stays as UTF-8 (protoc reads UTF-8)."""
    simple = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
    out = [
        simple.get(ch) or (f"\\{ord(ch):03o}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch)
        for ch in text
    ]
    return '"' + "".join(out) + '"'


def quote_bytes(data: bytes) -> str:
    return (
        '"'
        + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03o}" for b in data)
        + '"'
    )


def float_literal(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


class Interleaver:
    """Collects a body's sections, printing explicit nested messages just before the first unit
    whose fields create an implicit one (map entry, group) that protoc would otherwise number
    ahead of them."""

    def __init__(
        self,
        print_message: Callable[[dpb.DescriptorProto, str], list[str]],
        messages: Iterable[dpb.DescriptorProto],
        scope: str,
        fields: Iterable[dpb.FieldDescriptorProto],
        sections: list[list[str]] | None = None,
    ) -> None:
        self._print_message = print_message
        self._scope = scope
        self._messages = list(messages)
        self._index = {f".{join_name(scope, m.name)}": i for i, m in enumerate(self._messages)}
        implicit = {
            f.type_name
            for f in fields
            if f.type == FieldProto.TYPE_GROUP and f.type_name in self._index
        }
        implicit |= {name for name, i in self._index.items() if self._messages[i].options.map_entry}
        self._implicit = implicit
        self._pending = [i for name, i in self._index.items() if name not in implicit]
        self.sections = sections if sections is not None else []
        self._run: list[str] = []

    def flush_before(self, fields: Iterable[dpb.FieldDescriptorProto]) -> None:
        created = [self._index[f.type_name] for f in fields if f.type_name in self._implicit]
        upto = min(created, default=len(self._messages))
        while self._pending and self._pending[0] < upto:
            self.close_run()
            m = self._messages[self._pending.pop(0)]
            self.sections.append(self._print_message(m, self._scope))

    def add(self, lines: list[str], fields: Iterable[dpb.FieldDescriptorProto]) -> None:
        fields = list(fields)
        if any(f.type_name in self._implicit for f in fields):
            self.flush_before(fields)
        self._run += lines

    def close_run(self) -> None:
        if self._run:
            self.sections.append(self._run)
            self._run = []

    def flush(self) -> None:
        self.close_run()
        self.flush_before(())


def join_name(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def range_text(start: int, end: int, top: int) -> str:
    if start == end:
        return str(start)
    return f"{start} to {'max' if end >= top else end}"


def has_repeated(msg: Message) -> bool:
    return any(
        fd.is_repeated or (fd.message_type is not None and has_repeated(v))
        for fd, v in msg.ListFields()
    )


def block(header: str, sections: list[list[str]]) -> list[str]:
    """``header { ... }`` with the non-empty sections separated by blank lines."""
    body: list[str] = []
    for section in sections:
        if section:
            if body:
                body.append("")
            body += ["  " + line if line else "" for line in section]
    return [header + " {", *body, "}"] if body else [header + " {}"]
