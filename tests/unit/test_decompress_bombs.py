"""kelp.decompress: zip bombs are refused fast in bounded memory, and the bound is exact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from functools import cache

import cramjam
import pytest
from aiokafka.codec import snappy_encode

from kelp import decompress
from tests.unit.batchcheck_helpers import BASE, CORRUPT, MiB, rejected, with_body

BOMB = 64 * MiB  # what the bombs expand to
LIMIT = MiB  # the bound the tests set


def _stream(compressor, size: int) -> bytes:
    chunk = bytes(MiB)
    for _ in range(size // MiB):
        compressor.compress(chunk)
    return bytes(compressor.finish())


@cache
def bomb(kind: str) -> bytes:
    if kind == "gzip":
        deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join([*(deflate.compress(bytes(MiB)) for _ in range(BOMB // MiB)),
                         deflate.flush()])
    if kind == "gzip-members":  # many small gzip members, one after the other
        return bytes(cramjam.gzip.compress(bytes(MiB))) * (BOMB // MiB)
    if kind == "zstd":  # streamed: no content size in the frame header
        return _stream(cramjam.zstd.Compressor(), BOMB)
    if kind == "zstd-declared":  # one shot: the frame header declares the content size
        return bytes(cramjam.zstd.compress(bytes(BOMB)))
    if kind == "lz4":
        return _stream(cramjam.lz4.Compressor(), BOMB)
    if kind == "snappy":  # raw: the preamble declares the length
        return bytes(cramjam.snappy.compress_raw(bytes(BOMB)))
    if kind == "snappy-xerial":  # what the Java client writes: 32 KiB chunks
        return snappy_encode(bytes(BOMB))
    raise AssertionError(kind)


BOMB_CODECS = {"gzip": decompress.GZIP, "gzip-members": decompress.GZIP,
               "zstd": decompress.ZSTD, "zstd-declared": decompress.ZSTD,
               "lz4": decompress.LZ4, "snappy": decompress.SNAPPY,
               "snappy-xerial": decompress.SNAPPY}


@pytest.mark.parametrize("kind", list(BOMB_CODECS))
def test_bombs_are_refused_fast_in_bounded_memory(kind):
    data, codec = bomb(kind), BOMB_CODECS[kind]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(decompress.Undecompressible) as info:
            decompress.decompress_bounded(codec, data, LIMIT)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.error == CORRUPT
    assert info.value.message == (f"{decompress.CODEC_NAMES[codec]} record batch decompresses "
                                  f"to more than {LIMIT} bytes")
    assert peak < 2 * LIMIT, f"peak {peak} bytes"
    assert took < 2.0
    # The same through check_batch.
    error = rejected(with_body(BASE, data, codec), max_decompressed_bytes=LIMIT)
    assert error.error == CORRUPT and "decompresses to more than" in error.message


def test_bombs_stay_bounded_in_process_memory():
    """tracemalloc cannot see the codecs' own allocations: watch the RSS of a fresh process
    refusing 256 MiB bombs under a 1 MiB bound (growth must stay far below the bomb)."""
    script = textwrap.dedent("""
        import resource, zlib, cramjam
        from kelp import decompress
        from aiokafka.codec import snappy_encode
        chunk = bytes(1 << 20)
        def stream(compressor):
            for _ in range(256):
                compressor.compress(chunk)
            return bytes(compressor.finish())
        deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
        gz = b"".join([*(deflate.compress(chunk) for _ in range(256)), deflate.flush()])
        xerial = bytes(snappy_encode(chunk)[:16]) + bytes(snappy_encode(chunk)[16:]) * 256
        bombs = [(1, gz), (4, stream(cramjam.zstd.Compressor())),
                 (3, stream(cramjam.lz4.Compressor())), (2, xerial)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for codec, data in bombs:
            try:
                decompress.decompress_bounded(codec, data, 1 << 20)
            except decompress.Undecompressible:
                pass
            else:
                raise SystemExit("accepted a bomb")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    growth_kib = int(result.stdout.strip())
    assert growth_kib < 32 * 1024, f"RSS grew by {growth_kib} KiB"


@pytest.mark.parametrize("kind", ["gzip", "gzip-members", "zstd", "zstd-declared", "lz4",
                                  "snappy", "snappy-xerial"])
def test_bound_is_exact(kind):
    payload = bytes(range(256)) * 1000 + bytes(50_000)  # 306,000 bytes
    codec = BOMB_CODECS[kind]
    data = {
        "gzip": lambda: zlib.compress(payload, wbits=31),
        "gzip-members": lambda: (zlib.compress(payload[:1000], wbits=31)
                                 + zlib.compress(payload[1000:], wbits=31)),
        "zstd": lambda: _stream_payload(cramjam.zstd.Compressor(), payload),
        "zstd-declared": lambda: bytes(cramjam.zstd.compress(payload)),
        "lz4": lambda: bytes(cramjam.lz4.compress(payload)),
        "snappy": lambda: bytes(cramjam.snappy.compress_raw(payload)),
        "snappy-xerial": lambda: snappy_encode(payload),
    }[kind]()
    assert decompress.decompress_bounded(codec, data, len(payload)) == payload
    assert decompress.decompress_bounded(codec, memoryview(data), 10 * len(payload)) == payload
    with pytest.raises(decompress.Undecompressible) as info:
        decompress.decompress_bounded(codec, data, len(payload) - 1)
    assert "decompresses to more than" in info.value.message


def _stream_payload(compressor, payload: bytes) -> bytes:
    compressor.compress(payload)
    return bytes(compressor.finish())


@pytest.mark.parametrize("module", [cramjam.zstd, cramjam.lz4])
def test_cramjam_reports_a_full_output_buffer(module):
    # decompress_bounded tells "buffer full, grow it" from "corrupt" by this message.
    with pytest.raises(cramjam.DecompressionError, match=decompress._BUFFER_FULL):
        module.decompress_into(bytes(module.compress(bytes(1000))), bytearray(999))
