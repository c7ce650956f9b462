"""Registered memory: what one process exports, and the descriptor another process imports.

A `MemoryRegion` is memory registered with the UCP context (``ucp_mem_map``): a Python buffer
the caller owns (a receive pool, the broker's mmap of a sealed log segment). Registering is what
lets a peer read the memory one-sidedly; on verbs hardware it also pins the pages.

`MemoryRegion.export()` produces the *descriptor* a peer needs: the region's virtual address and
length plus UCX's packed remote key. The peer turns it into a `RemoteKey` with
`Endpoint.import_key` (rkeys are per endpoint). The address and length travel with the key
because UCX itself never checks bounds — an out-of-range GET reads whatever is mapped there, or
crashes a process — so `RemoteKey` checks every access against them.

Descriptor layout (little endian)::

    b"KUX1" | u64 address | u64 length | u32 rkey length | rkey bytes
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
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
    """Memory registered with the worker's context. Create with `Worker.register`; release
    with `close()` (the worker closes leftovers on exit).

    ``address``/``length`` describe the registered bytes; ``view`` is a memoryview of them.
    Closing while a peer is still reading is the exporter's
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
    ) -> None:
        self._worker = worker
        self._memh = memh
        self._cdata = cdata  # ffi.from_buffer export: pins the buffer (no resize, no free)
        self.address = address
        self.length = length
        self.view = view
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
        # Release in reverse order of acquisition: cdata pins `view`.
        self._worker._binding.ffi.release(self._cdata)
        self.view.release()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.length} bytes at {self.address:#x}"
        return f"<MemoryRegion {state}>"

