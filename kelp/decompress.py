"""Decompressing a record batch's body without letting it expand past a bound (sans-IO).

Codecs as Kafka numbers them in a batch's attributes: gzip (members read as Java's
GZIPInputStream reads them), snappy (raw, or the xerial framing the Java client writes), lz4
frames and zstd. A zip bomb is refused without being expanded: memory stays near the bound
however far the input would go. Used by the produce-time checks (``batchcheck``) and by the
readers that look inside stored batches (``records``).
"""

from __future__ import annotations

import zlib

import cramjam
from kio.schema.errors import ErrorCode

DEFAULT_MAX_DECOMPRESSED = 128 * 1024 * 1024

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}


class Undecompressible(Exception):
    """The body cannot be expanded within the bound; ``error`` is the Kafka error code a
    produce response would carry (CORRUPT_MESSAGE or UNSUPPORTED_COMPRESSION_TYPE)."""

    def __init__(self, error: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


class _TooBig(Exception):
    pass


class _Corrupt(Exception):
    pass


_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = 16  # magic, version, compatible version
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_MIN_GUESS = 64 * 1024
_INFLATE_INPUT = 64 * 1024
# cramjam's message when the output buffer given to decompress_into is full (Rust's
# io::ErrorKind::WriteZero); any other error means the input itself is bad.
_BUFFER_FULL = "write whole buffer"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _inflate(data: memoryview, limit: int) -> bytearray:
    """gzip members, one after the other, streamed in bounded steps.

    gzip only, as Java's GZIPInputStream reads it: a zlib stream under the gzip flag is
    refused, since Java consumers could not read it back.

    Input goes in by slices and output comes out by steps, so neither zlib's unconsumed
    input copies nor its output blocks grow with the batch: memory is ``limit`` plus a step.
    """
    out = bytearray()
    step = max(_MIN_GUESS, min(limit // 8, 1024 * 1024))
    position, end = 0, len(data)
    while True:
        inflater = zlib.decompressobj(wbits=31)  # 16 + 15: a gzip header and trailer
        pending: bytes | memoryview = b""
        while not inflater.eof:
            if not pending and position < end:
                pending = data[position : position + _INFLATE_INPUT]
                position += len(pending)
            chunk = inflater.decompress(pending, step)
            if len(out) + len(chunk) > limit:
                raise _TooBig
            out += chunk
            pending = inflater.unconsumed_tail
            if not chunk and not pending and position >= end:
                raise _Corrupt("stream is truncated")
        if inflater.unused_data:  # the next member starts in this slice
            position -= len(inflater.unused_data)
        if position >= end:
            return out


def _frame_content_size(codec: int, data: memoryview) -> int | None:
    """The decompressed size a zstd or lz4 frame header declares, if it declares one."""
    if codec == ZSTD and len(data) >= 6 and data[:4] == _ZSTD_MAGIC:
        descriptor = data[4]
        single_segment = descriptor >> 5 & 1
        size_bytes = (single_segment, 2, 4, 8)[descriptor >> 6]
        position = 5 + (not single_segment) + (0, 1, 2, 4)[descriptor & 3]
        if size_bytes and len(data) >= position + size_bytes:
            size = int.from_bytes(data[position : position + size_bytes], "little")
            return size + 256 if size_bytes == 2 else size
    if codec == LZ4 and len(data) >= 14 and data[:4] == _LZ4_MAGIC and data[4] & 0x08:
        return int.from_bytes(data[6:14], "little")
    return None


def _decompress_into(codec: int, data: memoryview, limit: int) -> memoryview:
    """lz4 frames and zstd: into a buffer that doubles from a guess, never past ``limit``.

    A full buffer stops the decompressor at once, so a bomb costs at most about ``limit``
    bytes and twice the work of expanding ``limit`` bytes. A declared content size is the
    first guess, and one above ``limit`` is refused before anything is expanded.
    """
    module = cramjam.zstd if codec == ZSTD else cramjam.lz4
    declared = _frame_content_size(codec, data)
    if declared is not None and declared > limit:
        raise _TooBig
    size = min(limit, declared if declared is not None else max(_MIN_GUESS, 4 * len(data)))
    while True:
        out = bytearray(size)
        try:
            written = module.decompress_into(data, out)
        except cramjam.DecompressionError as exc:
            if _BUFFER_FULL not in str(exc):
                raise _Corrupt(_short(exc)) from None
        else:
            return memoryview(out)[:written]
        del out  # before the bigger one exists
        if size >= limit:
            raise _TooBig
        size = min(limit, max(2 * size, _MIN_GUESS))


def _unsnappy(data: memoryview, limit: int) -> bytearray:
    """Raw snappy, or the xerial framing of raw snappy chunks the Java client writes.

    Raw snappy starts with its decompressed length; the sum of those lengths is checked
    against ``limit`` before anything is expanded.
    """
    chunks: list[tuple[memoryview, int]] = []
    total = 0

    def add(chunk: memoryview) -> None:
        nonlocal total
        size = cramjam.snappy.decompress_raw_len(chunk)
        total += size
        if total > limit:
            raise _TooBig
        chunks.append((chunk, size))

    if data[:8] != _XERIAL_MAGIC:
        add(data)
    else:
        if len(data) < _XERIAL_HEADER:
            raise _Corrupt("xerial header is truncated")
        position = _XERIAL_HEADER
        while position < len(data):
            if position + 4 > len(data):
                raise _Corrupt("xerial chunk length is truncated")
            size = int.from_bytes(data[position : position + 4], "big", signed=True)
            position += 4
            if size < 0 or size > len(data) - position:
                raise _Corrupt(f"xerial chunk of {size} bytes runs past the body")
            add(data[position : position + size])
            position += size
    out = bytearray(total)
    view, position = memoryview(out), 0
    for chunk, size in chunks:
        if cramjam.snappy.decompress_raw_into(chunk, view[position : position + size]) != size:
            raise _Corrupt("a chunk is shorter than its declared length")
        position += size
    return out


def decompress_view(codec: int, data: bytes | bytearray | memoryview,
                limit: int) -> bytes | bytearray | memoryview:
    view = memoryview(data).cast("B") if not isinstance(data, bytes | bytearray) else \
        memoryview(data)
    name = CODEC_NAMES.get(codec, str(codec))
    try:
        if codec == NONE:
            if len(view) > limit:
                raise _TooBig
            return data
        if codec == GZIP:
            return _inflate(view, limit)
        if codec == SNAPPY:
            return _unsnappy(view, limit)
        if codec in (LZ4, ZSTD):
            return _decompress_into(codec, view, limit)
    except _TooBig:
        raise Undecompressible(
            ErrorCode.corrupt_message,
            f"{name} record batch decompresses to more than {limit} bytes") from None
    except _Corrupt as exc:
        raise Undecompressible(ErrorCode.corrupt_message,
                            f"{name} record batch body does not decompress: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # each codec library raises its own errors on bad input
        raise Undecompressible(
            ErrorCode.corrupt_message,
            f"{name} record batch body does not decompress: {_short(exc)}") from None
    raise Undecompressible(ErrorCode.unsupported_compression_type,
                        f"unknown compression codec {codec}")


def decompress_bounded(codec: int, data: bytes | bytearray | memoryview, limit: int) -> bytes:
    """The records body compressed with ``codec`` (0-4), if it expands to at most ``limit``
    bytes; else ``Undecompressible`` (CORRUPT_MESSAGE, or UNSUPPORTED_COMPRESSION_TYPE for an
    unknown codec). Memory stays near ``limit`` however far the input would expand."""
    return bytes(decompress_view(codec, data, limit))
