"""Kafka frames: a 4-byte big-endian size, then that many bytes."""

from __future__ import annotations

import struct

_SIZE = struct.Struct(">i")


class FrameTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class FrameBuffer:
    """Accumulates received bytes and hands out whole frames (without their size prefix).

    The size is checked as soon as its four bytes arrive, so an oversized or negative frame is
    refused before any of its body is buffered.
    """

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._data = bytearray()
        self._start = 0

    def feed(self, data: bytes) -> None:
        self._data += data

    def next_frame(self) -> bytes | None:
        available = len(self._data) - self._start
        if available < 4:
            self._compact()
            return None
        (size,) = _SIZE.unpack_from(self._data, self._start)
        if size < 0 or size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        if available < 4 + size:
            self._compact()
            return None
        begin = self._start + 4
        frame = bytes(self._data[begin : begin + size])
        self._start = begin + size
        return frame

    def _compact(self) -> None:
        # Drop consumed bytes only when waiting for more, so a burst of frames costs one copy.
        if self._start:
            del self._data[: self._start]
            self._start = 0

    def pending_size(self) -> int | None:
        """The declared size of a frame whose body is still arriving, else None."""
        available = len(self._data) - self._start
        if available < 4:
            return None
        (size,) = _SIZE.unpack_from(self._data, self._start)
        return size if size >= 0 and available < 4 + size else None

    @property
    def buffered(self) -> int:
        return len(self._data) - self._start


def frame(payload: bytes | bytearray) -> bytes:
    return _SIZE.pack(len(payload)) + payload
