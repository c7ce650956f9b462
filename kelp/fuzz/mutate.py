"""Structure-aware mutations of corpus seeds, all drawn from one seeded ``random.Random``.

The same seed and corpus give the same sequence of frames. Each seed is walked once
(``layout.walk``) so the length-aware mutators know where every count, length, tagged-field
section and record set sits. A mutation is one structural change, sometimes followed by a
blind byte-level one on top; the frame's size prefix normally matches the mutated payload and
occasionally lies (a server must not trust it either).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from gateway.kafka.apis import SUPPORTED
from kelp.fuzz import batches
from kelp.fuzz.corpus import Seed
from kelp.fuzz.layout import Layout, Site, WalkError, overlong_uvarint, uvarint, walk

MAX_PAYLOAD = 512 * 1024  # array duplication stops growing a frame here
_INT_EDGES = {2: [-1, 0, -2, 0x7FFF, -0x8000, 1], 4: [-1, 0, -2, 0x7FFFFFFF, -0x80000000, 1]}
_SPECIAL_BYTES = (0x00, 0xFF, 0x7F, 0x80)


@dataclass(frozen=True, slots=True)
class Mutant:
    payload: bytes
    prefix: int       # the frame size prefix to send (== len(payload) unless it lies)
    how: str          # the mutation, for statistics and crash triage
    seed: Seed

    def frame(self) -> bytes:
        return struct.pack(">i", self.prefix) + self.payload


class Mutator:
    def __init__(self, seeds: list[Seed], seed: int) -> None:
        if not seeds:
            raise ValueError("an empty corpus")
        self.rng = random.Random(seed)
        self.seeds = seeds
        self.layouts: list[Layout | None] = [_try_walk(s.payload) for s in seeds]
        self.producing = [i for i, lay in enumerate(self.layouts) if lay and lay.records]
        self.flexible = [i for i, lay in enumerate(self.layouts) if lay and lay.flexible]
        self._ops: list[tuple[float, str, Callable[[int], bytes]]] = [
            (0.03, "seed", lambda i: self.seeds[i].payload),
            (0.25, "length", self.length_field),
            (0.18, "batch", self.record_batch),
            (0.07, "dup-array", self.duplicate_element),
            (0.07, "tag", self.unknown_tag),
            (0.05, "header", self.header),
            (0.07, "splice", self.splice),
            (0.10, "flip", lambda i: self.bit_flips(self.seeds[i].payload)),
            (0.10, "overwrite", lambda i: self.overwrite(self.seeds[i].payload)),
            (0.08, "truncate", lambda i: self.truncate(self.seeds[i].payload)),
        ]
        self._weights = [w for w, _, _ in self._ops]

    def next(self) -> Mutant:
        rng = self.rng
        _, how, op = rng.choices(self._ops, self._weights)[0]
        pool = self.producing if how == "batch" else self.flexible if how == "tag" else None
        index = rng.choice(pool) if pool else rng.randrange(len(self.seeds))
        payload = op(index)
        if how not in ("seed", "flip", "overwrite") and rng.random() < 0.15:
            payload = rng.choice([self.bit_flips, self.overwrite])(payload)
            how += "+blind"
        payload = payload[:MAX_PAYLOAD]
        prefix = len(payload)
        if how == "truncate" and rng.random() < 0.2:  # the prefix still claims the whole
            prefix = len(self.seeds[index].payload)
            how += "+prefix"
        elif rng.random() < 0.02:  # a size prefix that lies
            prefix = rng.choice([len(self.seeds[index].payload), prefix + 1, max(prefix - 1, 0),
                                 0, -1, 0x7FFFFFFF, rng.getrandbits(20)])
            how += "+prefix"
        return Mutant(payload, prefix, how, self.seeds[index])

    # -- structure-aware ------------------------------------------------------------------

    def length_field(self, index: int) -> bytes:
        """Set one count or length to an edge: -1, 0, huge, off by one, an overlong varint."""
        payload, layout = self.seeds[index].payload, self.layouts[index]
        if layout is None or not layout.sites:
            return self.bit_flips(payload)
        site = self.rng.choice(layout.sites)
        return _replace(payload, site, self._site_value(site))

    def _site_value(self, site: Site) -> bytes:
        rng = self.rng
        if site.encoding == "uvarint":
            return rng.choice([
                uvarint(0xFFFFFFFF), uvarint(0), uvarint(1), uvarint(site.value + 1),
                uvarint(max(site.value - 1, 0)), uvarint(0x7FFFFFFF), uvarint(2**35 - 1),
                uvarint(rng.getrandbits(rng.choice([7, 14, 21, 28]))),
                overlong_uvarint(site.value, rng.choice([5, 6, 10])),
                b"\x80" * rng.randrange(5, 12) + b"\x00",
            ])
        size = site.width
        value = rng.choice([*_INT_EDGES[size], site.value + 1, site.value - 1,
                            rng.getrandbits(size * 8 - 1)])
        limit = 1 << (size * 8 - 1)
        value = (value + limit) % (2 * limit) - limit
        return value.to_bytes(size, "big", signed=True)

    def duplicate_element(self, index: int) -> bytes:
        """Repeat one array element (1, 2 or many times) and raise the count to match."""
        payload, layout = self.seeds[index].payload, self.layouts[index]
        arrays = [a for a in (layout.arrays if layout else []) if a.elements]
        if not arrays:
            return self.length_field(index)
        array = self.rng.choice(arrays)
        start, end = self.rng.choice(array.elements)
        copies = self.rng.choice([1, 1, 2, 50, 1000])
        copies = max(1, min(copies, MAX_PAYLOAD // max(end - start, 1)))
        site = array.count
        value = site.value + copies
        count = uvarint(value) if site.encoding == "uvarint" else struct.pack(
            ">i", min(value, 0x7FFFFFFF))
        grown = payload[:end] + payload[start:end] * copies + payload[end:]
        return grown[: site.offset] + count + grown[site.offset + site.width :]

    def unknown_tag(self, index: int) -> bytes:
        """Add a tagged field kelp does not know to a flexible section (the protocol says to
        skip it), sometimes with a size that runs past the frame."""
        payload, layout = self.seeds[index].payload, self.layouts[index]
        if layout is None or not layout.tag_sections:
            return self.length_field(index)
        rng = self.rng
        section = rng.choice(layout.tag_sections)
        tag = rng.choice([0, 1, 2, 7, 100, 10_000, 2**31 - 1])
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 4, 64])))
        size = rng.choice([len(data)] * 4 + [len(data) + 1000, 0xFFFFFFFF])
        fields = rng.choice([1, 1, 2])
        entry = (uvarint(tag) + uvarint(size) + data) * fields
        # Inserted before any fields the section has: an out-of-order tag is a test too.
        at = section.offset
        return payload[:at] + uvarint(section.value + fields) + entry + payload[
            at + section.width :]

    def record_batch(self, index: int) -> bytes:
        """Mutate one batch inside one of a Produce request's record sets."""
        payload, layout = self.seeds[index].payload, self.layouts[index]
        if layout is None or not layout.records:
            return self.length_field(index)
        rng = self.rng
        records = rng.choice(layout.records)
        blob = payload[records.start : records.end]
        parts = batches.split_batches(blob) or [blob]
        which = rng.randrange(len(parts))
        parts[which] = batches.mutate_batch(parts[which], rng)
        if rng.random() < 0.1:
            parts.append(parts[which])  # the same batch twice in one request
        new_blob = b"".join(parts)
        site = records.length
        if rng.random() < 0.9:  # usually keep the record set's own length honest
            if site.encoding == "uvarint":
                length = uvarint(len(new_blob) + 1)
            else:
                length = struct.pack(">i", len(new_blob))
        else:
            length = payload[site.offset : site.offset + site.width]
        return (payload[: site.offset] + length + payload[site.offset + site.width :
                records.start] + new_blob + payload[records.end :])

    def header(self, index: int) -> bytes:
        """Another version (or API) on the same body: flexible/legacy encodings collide."""
        payload = self.seeds[index].payload
        rng = self.rng
        api_key, version = struct.unpack_from(">hh", payload)
        if rng.random() < 0.7 and api_key in SUPPORTED:
            low, high = SUPPORTED[api_key]
            version = rng.randint(low, high + 1)  # high + 1: just past what kelp serves
        else:
            api_key = rng.choice([*SUPPORTED, -1, 0x7FFF, 99])
        return struct.pack(">hh", api_key, version) + payload[4:]

    def splice(self, index: int) -> bytes:
        """The front of one request and the back of another."""
        a = self.seeds[index].payload
        b = self.rng.choice(self.seeds).payload
        return a[: self.rng.randrange(len(a) + 1)] + b[self.rng.randrange(len(b) + 1) :]

    # -- blind ----------------------------------------------------------------------------

    def bit_flips(self, payload: bytes) -> bytes:
        data = bytearray(payload)
        for _ in range(self.rng.choice([1, 1, 2, 4, 8])):
            if data:
                data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def overwrite(self, payload: bytes) -> bytes:
        data = bytearray(payload)
        run = self.rng.choice([1, 1, 2, 4])
        if data:
            at = self.rng.randrange(len(data))
            data[at : at + run] = bytes([self.rng.choice(_SPECIAL_BYTES)]) * run
        return bytes(data)

    def truncate(self, payload: bytes) -> bytes:
        return payload[: self.rng.randrange(len(payload) + 1)]


def _replace(payload: bytes, site: Site, value: bytes) -> bytes:
    return payload[: site.offset] + value + payload[site.offset + site.width :]


def _try_walk(payload: bytes) -> Layout | None:
    try:
        return walk(payload)
    except WalkError:
        return None
