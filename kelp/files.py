"""Replacing a small file atomically: readers see the old contents or the new, never a mix.

Every state file kelp keeps (checkpoints, snapshots, indexes, the topic catalogue, the
producer-id block) is replaced the same way: write ``<name>.tmp`` beside it, rename it over
the old one. What differs is durability, chosen per file:

- ``durable=True``: the data is fsynced before the rename and the directory after it, so
  once the call returns the new contents survive a power loss (a lost rename would bring
  the old file back, which for the producer-id block means ids handed out twice).
- ``durable=False``: a *hint* that recovery can rebuild or do without (indexes, the
  producer snapshot, the recovery point written on every sync); a crash may leave the old
  contents, never torn ones on a filesystem that orders a rename after the data it names.

Leftover ``*.tmp`` files are an interrupted write: the file they were meant to replace is
whole, so owners delete them on start.
"""

from __future__ import annotations

import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """Where ``replace_file`` writes before renaming (``<name>.tmp``)."""
    return path.with_name(path.name + ".tmp")


def replace_file(path: Path, data: bytes | str, *, durable: bool, mode: int = 0o644) -> None:
    """Make ``data`` the contents of ``path`` in one rename (see the module's docstring)."""
    tmp = temp_path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # a file left by a crash keeps its old mode otherwise
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so the names created, renamed or removed in it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
