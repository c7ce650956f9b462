"""Where the lengths sit in a request: a walk of its bytes driven by kio's schema.

A mutator that knows the offset of every array count, string/bytes length and compact
(varint) length can hit exactly the fields a decoder trusts, instead of hoping a random bit
flip lands on one. ``walk`` reads a *valid* request (a corpus seed) once and returns its
``Layout``: every length/count field (``Site``), every array with the byte span of each
element (for duplication), every tagged-field section (for unknown tags) and every record set
(for the record-batch mutators). The walk follows Kafka's encodings: legacy int16/int32
prefixes in old versions, unsigned varints (``n + 1``, 0 = null) in flexible ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from gateway.kafka import apis, messages, schema, vet
from gateway.kafka.schema import FIXED_SIZES, LEGACY_PREFIX_SIZES, Kind


class WalkError(ValueError):
    """The bytes are not a request of the type they claim (only valid seeds are walked)."""


@dataclass(frozen=True, slots=True)
class Site:
    """A length or count field: how it is encoded, where, and what it says."""

    encoding: str  # "int16" | "int32" | "uvarint"
    role: str      # "string" | "bytes" | "records" | "array" | "tags" | "tag-size"
    offset: int
    width: int
    value: int     # as encoded (a compact length is n + 1)
    label: str


@dataclass(frozen=True, slots=True)
class Array:
    count: Site
    elements: tuple[tuple[int, int], ...]  # [start, end) of each element


@dataclass(frozen=True, slots=True)
class RecordSet:
    length: Site
    start: int
    end: int


@dataclass
class Layout:
    api_key: int
    version: int
    flexible: bool
    body: int  # where the body starts (after the header)
    sites: list[Site] = field(default_factory=list)
    arrays: list[Array] = field(default_factory=list)
    tag_sections: list[Site] = field(default_factory=list)  # their count varints
    records: list[RecordSet] = field(default_factory=list)
    end: int = 0


def walk(payload: bytes) -> Layout:
    """The layout of a whole request payload (header + body, no size prefix)."""
    if len(payload) < 10:
        raise WalkError("shorter than a request header")
    api_key, version = struct.unpack_from(">hh", payload)
    try:
        entity_type = messages.request_type(api_key, version)
    except Exception as exc:
        raise WalkError(f"no schema for api {api_key} v{version}") from exc
    flexible = schema.flexible(entity_type)
    layout = Layout(api_key, version, flexible, 0)
    walker = _Walker(payload, layout)
    position = walker.legacy_bytes(8, 2, "string", "RequestHeader.client_id")
    if flexible:
        position = walker.tags(position)
    layout.body = position
    # Legacy Produce (v0-v2) is kio's first Produce layout without ``transactional_id``.
    skip = {"transactional_id"} if apis.is_legacy(api_key, version) else set()
    layout.end = walker.entity(entity_type, position, skip)
    if layout.end != len(payload):
        raise WalkError(f"walk ended at {layout.end} of {len(payload)} bytes")
    return layout


class _Walker:
    def __init__(self, data: bytes, layout: Layout) -> None:
        self.data = data
        self.layout = layout

    def entity(self, entity_type: type, position: int, skip: set[str] | None = None) -> int:
        flexible = schema.flexible(entity_type)
        for f in schema.fields(entity_type):
            if f.tag is not None or (skip and f.name in skip):
                continue  # tagged fields live in the section walked below
            position = self.field(f, flexible, position)
        return self.tags(position) if flexible else position

    def field(self, f: schema.Field, flexible: bool, position: int) -> int:
        if f.is_array:
            return self.array(f, flexible, position)
        if f.kind is Kind.ENTITY:
            assert f.entity is not None
            if f.optional:
                marker = self._int(position, 1)
                position += 1
                if marker == -1:
                    return position
            return self.entity(f.entity, position)
        return self.primitive(f.kafka_type or "", f.label, flexible, position)

    def primitive(self, kafka_type: str, label: str, flexible: bool, position: int) -> int:
        size = FIXED_SIZES.get(kafka_type)
        if size is not None:
            return self._check(position + size)
        if flexible:
            site, position = self.uvarint(position, kafka_type, label)
            if kafka_type == "records" and site.value > 0:
                self.layout.records.append(RecordSet(site, position, position + site.value - 1))
            return self._check(position + max(site.value - 1, 0))
        return self.legacy_bytes(position, LEGACY_PREFIX_SIZES[kafka_type], kafka_type, label)

    def legacy_bytes(self, position: int, prefix: int, role: str, label: str) -> int:
        length = self._int(position, prefix)
        site = Site(f"int{prefix * 8}", role, position, prefix, length, label)
        self.layout.sites.append(site)
        position += prefix
        if role == "records" and length > 0:
            self.layout.records.append(RecordSet(site, position, position + length))
        return self._check(position + max(length, 0))

    def array(self, f: schema.Field, flexible: bool, position: int) -> int:
        if flexible:
            site, position = self.uvarint(position, "array", f.label)
            count = site.value - 1
        else:
            count = self._int(position, 4)
            site = Site("int32", "array", position, 4, count, f.label)
            self.layout.sites.append(site)
            position += 4
        elements = []
        for _ in range(max(count, 0)):
            start = position
            if f.entity is not None:
                position = self.entity(f.entity, position)
            else:
                position = self.primitive(f.kafka_type or "", f.label, flexible, position)
            elements.append((start, position))
        self.layout.arrays.append(Array(site, tuple(elements)))
        return position

    def tags(self, position: int) -> int:
        count_site, position = self.uvarint(position, "tags", "tagged fields")
        self.layout.tag_sections.append(count_site)
        for _ in range(count_site.value):
            _tag, position = self.uvarint(position, None, "tag")
            size, position = self.uvarint(position, "tag-size", "tag size")
            position = self._check(position + size.value)
        return position

    def uvarint(self, position: int, role: str | None, label: str) -> tuple[Site, int]:
        value, width = read_uvarint(self.data, position)
        site = Site("uvarint", role or "tag", position, width, value, label)
        if role is not None:
            self.layout.sites.append(site)
        return site, position + width

    def _int(self, position: int, size: int) -> int:
        self._check(position + size)
        return int.from_bytes(self.data[position : position + size], "big", signed=True)

    def _check(self, position: int) -> int:
        if position > len(self.data):
            raise WalkError("runs past the end of the payload")
        return position


def read_uvarint(data: bytes, position: int) -> tuple[int, int]:
    """(value, width) of an unsigned varint; at most five bytes, as Kafka allows."""
    try:
        value, end = vet.read_uvarint(data, position, len(data))
    except vet.Malformed as exc:
        raise WalkError(f"bad varint: {exc}") from None
    return value, end - position


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def overlong_uvarint(value: int, width: int) -> bytes:
    """``value`` padded with continuation bytes to ``width`` bytes (width > 5 is invalid)."""
    out = bytearray()
    for _ in range(width - 1):
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value & 0x7F)
    return bytes(out)
