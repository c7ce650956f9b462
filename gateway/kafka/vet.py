"""Vet a request body against its schema before any decoder allocates for it (sans-IO).

kio's native reader trusts the counts it reads: a compact array whose count is varint 0xffffffff
makes it reserve 34 GB before reading one element, and the allocation failure aborts the
process, which no ``except`` can catch. So every request body is first walked here, driven by
the same kio schema the decoder will use, and refused as ``Malformed`` unless:

- every string, bytes and records length fits in the bytes left in the frame;
- every array count times its element's smallest encoding fits in the bytes left;
- varints are at most five bytes;
- null appears only where the schema allows it (a non-nullable array sent as null would reach
  a handler as ``None``);
- nullable structs carry a valid marker, and tagged fields stay inside their declared size.

Tagged fields the schema does not know are allowed (the protocol says to ignore them) and
reported as edits; ``strip`` cuts them out, because kio's decoder refuses them.

The walk allocates nothing per element; a plan (one closure per field, from ``schema``'s
description of the type) is built once per request type. It mirrors kio's encoder: legacy
(int16/int32-prefixed) encodings in old versions, compact (varint-prefixed) ones and
tagged-field sections in flexible versions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from gateway.kafka import schema
from gateway.kafka.schema import FIXED_SIZES, LEGACY_PREFIX_SIZES, Kind


class Malformed(ValueError):
    """The bytes do not encode a request of this type."""


# A step reads one field at ``position`` within ``data[:end]`` and returns where it ends.
Step = Callable[[bytes, int, int, list["Edit"]], int]
# A byte range to replace, found while vetting: unknown tagged fields are cut out (see ``strip``).
Edit = tuple[int, int, bytes]


def vet(entity_type: type, data: bytes, position: int) -> tuple[int, list[Edit]]:
    """Check that ``data[position:]`` holds a well-formed ``entity_type``.

    Returns where it ends and the edits that remove tagged fields the schema does not know
    (apply them with ``strip``; usually there are none). Raises ``Malformed`` naming the
    field at fault.
    """
    edits: list[Edit] = []
    return _plan(entity_type)(data, position, len(data), edits), edits


def read_uvarint(data: bytes, position: int, end: int) -> tuple[int, int]:
    """An unsigned varint of at most five bytes (Kafka's limit for 32-bit values)."""
    value = shift = 0
    while True:
        if position >= end:
            raise Malformed("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift >= 35:
            raise Malformed("varint longer than five bytes")


def _int(data: bytes, position: int, size: int, end: int) -> int:
    if position + size > end:
        raise Malformed("truncated length")
    return int.from_bytes(data[position : position + size], "big", signed=True)


@functools.cache
def _plan(entity_type: type) -> Step:
    flexible = schema.flexible(entity_type)
    steps: list[Step] = []
    tagged: dict[int, Step] = {}
    fixed_run = 0  # consecutive fixed-size fields are checked as one block

    for field in schema.fields(entity_type):
        step, size = _field_step(field, flexible)
        if field.tag is not None:
            tagged[field.tag] = step
            continue
        if size is not None:
            fixed_run += size
            continue
        if fixed_run:
            steps.append(_skip(fixed_run))
            fixed_run = 0
        steps.append(step)
    if fixed_run:
        steps.append(_skip(fixed_run))
    if flexible:
        steps.append(_tagged_section(tagged))
    name = entity_type.__name__

    def walk(data: bytes, position: int, end: int, edits: list[Edit]) -> int:
        for step in steps:
            position = step(data, position, end, edits)
        if position > end:
            raise Malformed(f"{name} runs past the end of the frame")
        return position

    return walk


@functools.cache
def min_size(entity_type: type) -> int:
    """The fewest bytes any encoding of ``entity_type`` takes (bounds array counts)."""
    flexible = schema.flexible(entity_type)
    total = 1 if flexible else 0  # the tagged-field count
    for field in schema.fields(entity_type):
        if field.tag is not None:
            continue
        if field.is_array:
            total += 1 if flexible else 4
        elif field.kind is Kind.ENTITY:
            assert field.entity is not None
            total += 1 if field.optional else min_size(field.entity)
        elif field.fixed_size is not None:
            total += field.fixed_size
        else:
            total += 1 if flexible else LEGACY_PREFIX_SIZES[field.kafka_type or ""]
    return total


def _field_step(field: schema.Field, flexible: bool) -> tuple[Step, int | None]:
    """The step for one field, and its size when that is fixed (None otherwise)."""
    label = field.label
    # Tagged fields are optional by their presence, never by a null encoding (as kio writes).
    nullable = field.tag is None and field.optional
    if field.kind is Kind.ENTITY_ARRAY:
        assert field.entity is not None
        return _array(label, flexible, nullable, _plan(field.entity),
                      min_size(field.entity)), None
    if field.kind is Kind.ENTITY:
        assert field.entity is not None
        inner = _plan(field.entity)
        return (_nullable_struct(label, inner) if nullable else inner), None
    kafka_type = field.kafka_type or ""
    if field.kind is Kind.PRIMITIVE_ARRAY:
        element, size = _primitive(label, kafka_type, flexible, nullable=False)
        return _array(label, flexible, nullable, element, size or 1), None
    return _primitive(label, kafka_type, flexible, nullable)


def _primitive(label: str, kafka_type: str, flexible: bool,
               nullable: bool) -> tuple[Step, int | None]:
    size = FIXED_SIZES.get(kafka_type)
    if size is not None:
        return _skip(size), size
    if kafka_type not in LEGACY_PREFIX_SIZES:
        raise NotImplementedError(f"no vetting rule for kafka_type {kafka_type!r} ({label})")
    if flexible:
        return _compact_bytes(label, nullable), None
    return _legacy_bytes(label, LEGACY_PREFIX_SIZES[kafka_type], nullable), None


def _skip(size: int) -> Step:
    def skip(data: bytes, position: int, end: int, edits: list[Edit]) -> int:
        position += size
        if position > end:
            raise Malformed("truncated request body")
        return position

    return skip


def _compact_bytes(label: str, nullable: bool) -> Step:
    def compact(data: bytes, position: int, end: int, edits: list[Edit]) -> int:
        length, position = read_uvarint(data, position, end)
        if length == 0:
            if not nullable:
                raise Malformed(f"{label} is null where the schema forbids null")
            return position
        position += length - 1
        if position > end:
            raise Malformed(f"{label}: length {length - 1} runs past the end of the frame")
        return position

    return compact


def _legacy_bytes(label: str, prefix: int, nullable: bool) -> Step:
    def legacy(data: bytes, position: int, end: int, edits: list[Edit]) -> int:
        length = _int(data, position, prefix, end)
        position += prefix
        if length < 0:
            if length != -1 or not nullable:
                raise Malformed(f"{label}: invalid length {length}")
            return position
        position += length
        if position > end:
            raise Malformed(f"{label}: length {length} runs past the end of the frame")
        return position

    return legacy


def _array(label: str, flexible: bool, nullable: bool, element: Step,
           element_min: int) -> Step:
    def array(data: bytes, position: int, end: int, edits: list[Edit]) -> int:
        if flexible:
            raw, position = read_uvarint(data, position, end)
            count = raw - 1  # 0 encodes null
        else:
            count = _int(data, position, 4, end)
            position += 4
        if count < 0:
            if count != -1 or not nullable:
                raise Malformed(f"{label}: invalid array count {count}"
                                if count != -1 else
                                f"{label} is null where the schema forbids null")
            return position
        if count * element_min > end - position:
            raise Malformed(f"{label}: {count} elements cannot fit in the "
                            f"{end - position} bytes left")
        for _ in range(count):
            position = element(data, position, end, edits)
        return position

    return array


def _nullable_struct(label: str, inner: Step) -> Step:
    def struct(data: bytes, position: int, end: int, edits: list[Edit]) -> int:
        marker = _int(data, position, 1, end)
        position += 1
        if marker == -1:
            return position
        if marker != 1:
            raise Malformed(f"{label}: invalid null marker {marker}")
        return inner(data, position, end, edits)

    return struct


def _tagged_section(known: dict[int, Step]) -> Step:
    def section(data: bytes, position: int, end: int, edits: list[Edit]) -> int:
        count_start = position
        count, position = read_uvarint(data, position, end)
        count_end = position
        unknown: list[Edit] = []
        for _ in range(count):  # every field takes >= 2 bytes, so a lie runs out of data
            field_start = position
            tag, position = read_uvarint(data, position, end)
            size_start = position
            size, position = read_uvarint(data, position, end)
            field_end = position + size
            if field_end > end:
                raise Malformed(f"tagged field {tag} runs past the end of the frame")
            step = known.get(tag)
            if step is None:
                unknown.append((field_start, field_end, b""))
            else:
                inner: list[Edit] = []
                if step(data, position, field_end, inner) > field_end:
                    raise Malformed(f"tagged field {tag} overruns its size")
                if inner:  # cutting inside this field shrinks the size it declares
                    edits.append((size_start, position, _uvarint(size - _shrinkage(inner))))
                    edits.extend(inner)
            position = field_end
        if unknown:
            edits.append((count_start, count_end, _uvarint(count - len(unknown))))
            edits.extend(unknown)
        return position

    return section


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _shrinkage(edits: list[Edit]) -> int:
    return sum(stop - start - len(replacement) for start, stop, replacement in edits)


def strip(data: bytes, edits: list[Edit]) -> bytes:
    """``data`` with the edits ``vet`` found applied: unknown tagged fields removed.

    Kafka ignores tagged fields it does not know (that is what lets a newer client add them
    without a version bump), but kio's decoder refuses them; cutting them out first gives
    kio the bytes an older client would have sent.
    """
    pieces: list[bytes] = []
    position = 0
    for start, stop, replacement in sorted(edits):
        pieces.append(data[position:start])
        pieces.append(replacement)
        position = stop
    pieces.append(data[position:])
    return b"".join(pieces)
