"""Registered memory: what one process exports, and the descriptor another process imports.

A `MemoryRegion` is memory registered with the UCP context (``ucp_mem_map``): a Python buffer the
caller owns (a bytearray, an anonymous mmap used as a receive pool) or a range of a file that the
region mmaps itself (a sealed log segment the broker exports). Registering is what lets a peer
read the memory one-sidedly; on verbs hardware it also pins the pages.

`MemoryRegion.export()` produces the *descriptor* a peer needs: the region's virtual address and
length plus UCX's packed remote key. The peer turns it into a `RemoteKey` with
`Endpoint.import_key` (rkeys are per endpoint). The address and length travel with the key
because UCX itself never checks bounds — an out-of-range GET reads whatever is mapped there, or
crashes a process — so `RemoteKey` checks every access against them.

Descriptor layout (little endian)::

    b"KUX1" | u64 address | u64 length | u32 rkey length | rkey bytes
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdma.ucx import errors
from rdma.ucx.errors import UcxError

if TYPE_CHECKING:
    from rdma.ucx.worker import Worker

_MAGIC = b"KUX1"
_HEADER = struct.Struct("<4sQQI")
MAX_DESCRIPTOR = 64 * 1024  # rkeys are tens to hundreds of bytes; anything bigger is garbage


@dataclass(frozen=True)
class Descriptor:
    """A decoded export descriptor (see module docstring)."""

    address: int
    length: int
    rkey: bytes

    def encode(self) -> bytes:
        return _HEADER.pack(_MAGIC, self.address, self.length, len(self.rkey)) + self.rkey

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Descriptor:
        data = bytes(data)
        if len(data) < _HEADER.size or len(data) > MAX_DESCRIPTOR:
            raise ValueError(f"not a kelp UCX descriptor ({len(data)} bytes)")
        magic, address, length, rkey_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or _HEADER.size + rkey_len != len(data):
            raise ValueError("not a kelp UCX descriptor (bad magic or length)")
        return cls(address, length, data[_HEADER.size :])


class MemoryRegion:
    """Memory registered with the worker's context. Create with `Worker.register` or
    `Worker.register_file`; release with `close()` (the worker closes leftovers on exit).

    ``address``/``length`` describe the registered bytes; ``view`` is a memoryview of them
    (read-only for file regions). Closing while a peer is still reading is the exporter's
    mistake to avoid: the peer's GET then fails or, over shared memory, reads unmapped memory.
    """

    def __init__(
        self,
        worker: Worker,
        memh: Any,
        cdata: Any,
        address: int,
        length: int,
        *,
        view: memoryview,
        parents: tuple[memoryview, ...] = (),
        owned_mmap: mmap.mmap | None = None,
    ) -> None:
        self._worker = worker
        self._memh = memh
        self._cdata = cdata  # ffi.from_buffer export: pins the buffer (no resize, no free)
        self.address = address
        self.length = length
        self.view = view
        self._parents = parents  # views `view` was sliced from; released after it
        self._owned_mmap = owned_mmap
        self._rkey: bytes | None = None

    @property
    def closed(self) -> bool:
        return self._memh is None

    @property
    def handle(self) -> Any:
        """The ``ucp_mem_h`` (for `Endpoint.get`'s ``local=``); raises once closed."""
        if self._memh is None:
            raise UcxError(errors.INVALID_PARAM, "memory region", "region is closed")
        return self._memh

    def contains(self, address: int, length: int) -> bool:
        return self.address <= address and address + length <= self.address + self.length

    def packed_rkey(self) -> bytes:
        """UCX's packed remote key for this region (``ucp_rkey_pack``), cached."""
        if self._rkey is None:
            b = self._worker._binding
            buf, size = b.ffi.new("void **"), b.ffi.new("size_t *")
            status = b.lib.ucp_rkey_pack(self._worker._context, self.handle, buf, size)
            self._worker._check(status, "ucp_rkey_pack")
            try:
                self._rkey = bytes(b.ffi.buffer(buf[0], size[0]))
            finally:
                b.lib.ucp_rkey_buffer_release(buf[0])
        return self._rkey

    def export(self) -> bytes:
        """The descriptor a peer passes to `Endpoint.import_key` (address, length, rkey)."""
        return Descriptor(self.address, self.length, self.packed_rkey()).encode()

    def close(self) -> None:
        """Unregister and release the memory. Idempotent."""
        if self._memh is None:
            return
        memh, self._memh = self._memh, None
        self._worker._unregister(self, memh)
        # Release in reverse order of acquisition: cdata pins `view`, which pins its parents.
        self._worker._binding.ffi.release(self._cdata)
        self.view.release()
        for parent in self._parents:
            parent.release()
        if self._owned_mmap is not None:
            self._owned_mmap.close()

    def __enter__(self) -> MemoryRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.length} bytes at {self.address:#x}"
        return f"<MemoryRegion {state}>"


def map_file_range(
    path: str | os.PathLike[str], offset: int, length: int | None
) -> tuple[mmap.mmap, int, int]:
    """mmap ``[offset, offset+length)`` of a file read-only; return (map, start, length).

    mmap offsets must be page aligned, so the mapping starts at the page holding ``offset`` and
    ``start`` is where the requested range begins inside it.
    """
    size = Path(path).stat().st_size
    if offset < 0 or offset > size:
        raise ValueError(f"offset {offset} outside {path} ({size} bytes)")
    if length is None:
        length = size - offset
    if length <= 0 or offset + length > size:
        raise ValueError(f"range {offset}+{length} outside {path} ({size} bytes)")
    aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mapped = mmap.mmap(
            fd,
            offset - aligned + length,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ,
            offset=aligned,
        )
    finally:
        os.close(fd)  # the mapping keeps the file alive
    return mapped, offset - aligned, length
