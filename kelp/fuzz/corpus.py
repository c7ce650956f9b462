"""The seed corpus: real request frames, at least one per (API, version) kelp serves.

File format (deterministic: seeds sorted, duplicates dropped)::

    b"KELPFUZZ1\\n"  then per seed:  api_key int16 | version int16 | origin uint8 | size int32 |
                                     payload (header + body, no frame size prefix)

``origin`` says where a seed came from: 0 a real client, 1 kio's encoder (the synthesizer).
"""

from __future__ import annotations

import hashlib
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from kelp.fuzz.layout import WalkError, walk

MAGIC = b"KELPFUZZ1\n"
_ENTRY = struct.Struct(">hhBi")
CAPTURED, SYNTHESIZED = 0, 1
PER_VERSION = 6  # seeds kept per (api, version): enough variety, a corpus of tens of KB


@dataclass(frozen=True, slots=True)
class Seed:
    api_key: int
    version: int
    origin: int
    payload: bytes

    @property
    def key(self) -> tuple[int, int]:
        return (self.api_key, self.version)


def save(seeds: list[Seed], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [MAGIC]
    for seed in _ordered(seeds):
        out.append(_ENTRY.pack(seed.api_key, seed.version, seed.origin, len(seed.payload)))
        out.append(seed.payload)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(b"".join(out))
    tmp.replace(path)


def load(path: Path) -> list[Seed]:
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a kelp fuzz corpus")
    seeds, position = [], len(MAGIC)
    while position < len(data):
        api_key, version, origin, size = _ENTRY.unpack_from(data, position)
        position += _ENTRY.size
        seeds.append(Seed(api_key, version, origin, data[position : position + size]))
        position += size
    return seeds


def _ordered(seeds: list[Seed]) -> list[Seed]:
    unique = {hashlib.sha256(s.payload).digest(): s for s in seeds}
    return sorted(unique.values(), key=lambda s: (s.api_key, s.version, s.origin,
                                                  len(s.payload), s.payload))


def select(seeds: list[Seed], per_version: int = PER_VERSION) -> list[Seed]:
    """Keep a few seeds per (api, version), spread over sizes and, for Produce, codecs.

    A Produce seed per compression codec matters most: the record-batch mutators recompress
    with the batch's own codec, so every codec's decompression path gets its share.
    """
    groups: dict[tuple[int, int, int], list[Seed]] = defaultdict(list)
    for seed in _ordered(seeds):
        groups[(seed.api_key, seed.version, _codec(seed))].append(seed)
    kept: list[Seed] = []
    for group in groups.values():
        if len(group) <= per_version:
            kept += group
        else:  # evenly spaced by size: the smallest, the largest and some between
            step = (len(group) - 1) / (per_version - 1)
            kept += [group[round(i * step)] for i in range(per_version)]
    return _ordered(kept)


def _codec(seed: Seed) -> int:
    """The compression codec of a Produce seed's first batch (-1 for other APIs)."""
    if seed.api_key != 0:
        return -1
    try:
        layout = walk(seed.payload)
    except WalkError:
        return -1
    for records in layout.records:
        if records.end - records.start > 22:
            return seed.payload[records.start + 22] & 0x07
    return -1


def coverage(seeds: list[Seed]) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for seed in seeds:
        counts[seed.key] += 1
    return dict(counts)
