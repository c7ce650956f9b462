"""The mount's file tree, built from the broker's listings (sans-IO: listings in, nodes out).

::

    /topics/<topic>/<partition>/<base offset, 20 digits>.log   a segment file, byte for byte
    /topics/<topic>/<partition>/info                           JSON: log start, high-water mark,
                                                               segments

Inode numbers are stable for a path for the life of the mount (a segment deleted and a new one
with the same name would share it, which is what a path-based reader expects). A segment file's
bytes are located by binary search over its chunks' starting offsets: each chunk is one
SeaweedFS file id the sidecar reads.
"""

from __future__ import annotations

import bisect
import json
import stat
import time
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

ROOT = pyfuse3.ROOT_INODE
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
INFO_NAME = "info"


@dataclass(frozen=True)
class Chunk:
    file_id: str
    offset: int  # in the segment file
    size: int


@dataclass
class Node:
    inode: int
    name: str
    parent: int
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    children: dict[str, int] = field(default_factory=dict)
    # Segment files: the chunk map; the partition they belong to (for refreshes).
    chunks: list[Chunk] = field(default_factory=list)
    chunk_starts: list[int] = field(default_factory=list)
    partition: tuple[str, int] | None = None
    info: bytes = b""  # the info file's content

    def locate(self, offset: int, size: int) -> list[tuple[Chunk, int, int]]:
        """(chunk, offset in the chunk, bytes) pieces covering ``[offset, offset + size)``,
        clipped to the file's size."""
        end = min(offset + size, self.size)
        pieces = []
        position = offset
        index = bisect.bisect_right(self.chunk_starts, position) - 1
        while position < end and 0 <= index < len(self.chunks):
            chunk = self.chunks[index]
            inside = position - chunk.offset
            take = min(chunk.size - inside, end - position)
            if take <= 0:
                break
            pieces.append((chunk, inside, take))
            position += take
            index += 1
        return pieces


class Tree:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {ROOT: Node(ROOT, "", ROOT, True)}
        self._inodes: dict[tuple[str, ...], int] = {(): ROOT}
        self._next = ROOT + 1
        self._dir(("topics",))

    def _inode(self, path: tuple[str, ...]) -> int:
        if path not in self._inodes:
            self._inodes[path] = self._next
            self._next += 1
        return self._inodes[path]

    def _dir(self, path: tuple[str, ...]) -> Node:
        return self._node(path, is_dir=True)

    def _node(self, path: tuple[str, ...], *, is_dir: bool) -> Node:
        inode = self._inode(path)
        node = self.nodes.get(inode)
        if node is None:
            parent = self._inode(path[:-1])
            node = self.nodes[inode] = Node(inode, path[-1], parent, is_dir)
            self.nodes[parent].children[path[-1]] = inode
        return node

    def _remove(self, inode: int) -> None:
        node = self.nodes.pop(inode, None)
        if node is None:
            return
        for child in list(node.children.values()):
            self._remove(child)
        parent = self.nodes.get(node.parent)
        if parent is not None:
            parent.children.pop(node.name, None)

    def set_topics(self, topics: list[dict[str, Any]]) -> None:
        """``[{"name", "partitions"}]`` from the broker: topics and partition directories."""
        wanted = {t["name"]: int(t["partitions"]) for t in topics}
        top = self._dir(("topics",))
        for name in list(top.children):
            if name not in wanted:
                self._remove(top.children[name])
        for name, count in wanted.items():
            topic = self._dir(("topics", name))
            for index in range(count):
                self._dir(("topics", name, str(index))).partition = (name, index)
            for extra in [p for p in topic.children if not p.isdigit() or int(p) >= count]:
                self._remove(topic.children[extra])

    def set_listing(self, listing: dict[str, Any]) -> None:
        """A partition's ``/segments`` listing: segment files appear, grow and disappear."""
        base = ("topics", listing["topic"], str(listing["partition"]))
        directory = self._dir(base)
        names = set()
        for segment in listing["segments"]:
            name = f"{segment['base_offset']:020d}.log"
            names.add(name)
            node = self._node((*base, name), is_dir=False)
            node.size = int(segment["size"])
            node.mtime_ns = int(segment["mtime_ms"]) * 1_000_000
            node.chunks = [Chunk(c["file_id"], int(c["offset"]), int(c["size"]))
                           for c in segment["chunks"]]
            node.chunk_starts = [c.offset for c in node.chunks]
            node.partition = (listing["topic"], int(listing["partition"]))
        info = self._node((*base, INFO_NAME), is_dir=False)
        info.partition = (listing["topic"], int(listing["partition"]))
        info.info = json.dumps({
            "topic": listing["topic"], "partition": listing["partition"],
            "log_start_offset": listing["log_start_offset"],
            "high_watermark": listing["high_watermark"],
            "segments": [{"file": f"{s['base_offset']:020d}.log", "size": s["size"],
                          "sealed": s["sealed"], "next_offset": s["next_offset"]}
                         for s in listing["segments"]]}, indent=1).encode() + b"\n"
        info.size = len(info.info)
        info.mtime_ns = time.time_ns()
        names.add(INFO_NAME)
        for name in [n for n in directory.children if n not in names]:
            self._remove(directory.children[name])

    def lookup(self, parent: int, name: str) -> Node | None:
        node = self.nodes.get(parent)
        if node is None or not node.is_dir:
            return None
        inode = node.children.get(name)
        return self.nodes.get(inode) if inode is not None else None

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.st_mode = DIR_MODE if node.is_dir else FILE_MODE
        attr.st_nlink = 2 if node.is_dir else 1
        attr.st_size = node.size
        attr.st_blksize = 4096
        attr.st_blocks = (node.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        # Attributes change as the active segment grows: let the kernel keep them only briefly.
        attr.attr_timeout = 1.0
        attr.entry_timeout = 1.0
        return attr
