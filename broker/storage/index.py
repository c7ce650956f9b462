"""Sparse on-disk indexes of a segment: offset -> file position, and timestamp -> offset.

An entry is added every ``interval`` bytes of log, so a 1 GiB segment needs ~260 k entries
(16 bytes each, two ``array('q')`` in memory) instead of one per batch. Lookups bisect to the
nearest entry at or below the key and the log scans forward from there.

Index files are hints, not truth: they are never fsynced, and recovery rebuilds any index that
is missing, torn, or disagrees with its segment (``Segment.load``).
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array
from pathlib import Path

from kelp.files import replace_file

_ENTRY = struct.Struct(">qq")


class SparseIndex:
    """Pairs (key, value) with non-decreasing keys, mirrored to a file of 16-byte records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys = array("q")
        self.values = array("q")
        self._fd = -1

    @classmethod
    def load(cls, path: Path) -> SparseIndex | None:
        """The index stored at ``path``, or None if it is missing or not well formed."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) % _ENTRY.size:
            return None
        index = cls(path)
        for key, value in _ENTRY.iter_unpack(data):
            if index.keys and (key < index.keys[-1] or value < index.values[-1]):
                return None
            index.keys.append(key)
            index.values.append(value)
        return index

    @classmethod
    def create(cls, path: Path) -> SparseIndex:
        index = cls(path)
        path.write_bytes(b"")
        return index

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, key: int, value: int) -> None:
        self.keys.append(key)
        self.values.append(value)
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, _ENTRY.pack(key, value))

    def floor(self, key: int) -> int:
        """Position of the last entry with entry key <= ``key``, or -1."""
        return bisect.bisect_right(self.keys, key) - 1

    def rewrite(self, entries: list[tuple[int, int]]) -> None:
        """Replace the whole index (after a rebuild or truncation), atomically on disk."""
        self.close()
        self.keys = array("q", [k for k, _ in entries])
        self.values = array("q", [v for _, v in entries])
        replace_file(self.path, b"".join(_ENTRY.pack(k, v) for k, v in entries), durable=False)

    def move(self, path: Path) -> None:
        """Rename the file to ``path`` (compaction's swap); appends go on to the same file."""
        os.replace(self.path, path)
        self.path = path

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
