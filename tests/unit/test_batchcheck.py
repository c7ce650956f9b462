"""kelp.batchcheck and kelp.decompress: Kafka's LogValidator checks on produced batches,
and bounded decompression.

Valid batches come from three encoders that are not ours (aiokafka's record builder, kio's
batch writer) besides kelp.records; kio's reader is the independent decoder to agree with.
The C walker and the Python walker must give identical answers on any input.
"""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from functools import cache

import cramjam
import crc32c
import pytest
from aiokafka.codec import snappy_encode
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kio.records.readers import read_batch
from kio.schema.errors import ErrorCode

import kelp
from kelp import batchcheck, decompress, recordbatch, records
from tests.batches import make_batch

INVALID = ErrorCode.invalid_record
CORRUPT = ErrorCode.corrupt_message
CODECS = [decompress.NONE, decompress.GZIP, decompress.SNAPPY, decompress.LZ4, decompress.ZSTD]
COMPRESSED = CODECS[1:]
MiB = 1024 * 1024
WALKERS = [pytest.param(False, id="python"),
           pytest.param(True, id="native", marks=pytest.mark.skipif(
               not batchcheck.NATIVE, reason="kelp._recordwalk is not built"))]


# --- building batches --------------------------------------------------------------------------


def finish(batch: bytearray | bytes, *, count: int | None = None,
           last_offset_delta: int | None = None, attributes: int | None = None,
           producer: tuple[int, int] | None = None) -> bytes:
    """Patch header fields, then set batchLength and the CRC so only our change is wrong."""
    batch = bytearray(batch)
    if count is not None:
        struct.pack_into(">i", batch, 57, count)
    if last_offset_delta is not None:
        struct.pack_into(">i", batch, 23, last_offset_delta)
    if attributes is not None:
        struct.pack_into(">h", batch, 21, attributes)
    if producer is not None:
        struct.pack_into(">q", batch, 43, producer[0])
        struct.pack_into(">i", batch, 53, producer[1])
    struct.pack_into(">i", batch, 8, len(batch) - recordbatch.LENGTH_PREFIX)
    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))
    return bytes(batch)


def with_body(batch: bytes, body: bytes, codec: int | None = None, **fields: int) -> bytes:
    """``batch``'s header with another records body (and codec bits)."""
    header = bytearray(batch[: recordbatch.HEADER_SIZE])
    attributes = struct.unpack_from(">h", header, 21)[0]
    if codec is not None:
        attributes = attributes & ~7 | codec
    return finish(header + body, attributes=attributes, **fields)


def aiokafka_batch(pairs, *, codec: int = 0, headers=(), producer=(-1, -1, -1),
                   transactional: bool = False) -> bytes:
    """A batch from aiokafka's DefaultRecordBatchBuilder, the encoder a real client uses."""
    builder = DefaultRecordBatchBuilder(2, codec, int(transactional), *producer, 1 << 30)
    for index, (key, value) in enumerate(pairs):
        assert builder.append(index, 1_700_000_000_000 + index, key, value,
                              list(headers)) is not None
    return bytes(builder.build())


def check(batch: bytes, **options) -> None:
    batchcheck.check_batch(batch, recordbatch.parse_header(batch), **options)


def rejected(batch: bytes, **options) -> batchcheck.BatchRejected:
    with pytest.raises(batchcheck.BatchRejected) as info:
        check(batch, **options)
    return info.value


def encode_record(index: int, key: bytes | None, value: bytes | None,
                  headers: list[tuple[bytes | None, bytes | None]] = (),
                  offset_delta: int | None = None) -> bytes:
    """One record by hand, so tests can write what encoders refuse to (null header keys)."""
    def field(data: bytes | None) -> bytes:
        return zigzag(-1) if data is None else zigzag(len(data)) + data
    body = (b"\x00" + zigzag(0) + zigzag(index if offset_delta is None else offset_delta)
            + field(key) + field(value) + zigzag(len(headers))
            + b"".join(field(k) + field(v) for k, v in headers))
    return zigzag(len(body)) + body


def zigzag(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append(raw & 0x7F | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


BASE = records.build_batch([(b"k", b"v")], 1_700_000_000_000)

keys = st.binary(max_size=20) | st.none()
values = st.binary(max_size=200) | st.none()
header_lists = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=20) | st.none()),
                        max_size=3)
pair_lists = st.lists(st.tuples(keys, values), min_size=1, max_size=40)


# --- the walker is built and equivalent --------------------------------------------------------


def test_native_walker_is_built_when_a_compiler_exists():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the Python walker is the one in use")
    assert batchcheck.NATIVE, "pip install -e . should have built kelp._recordwalk in place"


def test_python_fallback_when_the_extension_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "kelp._recordwalk", None)  # makes the import fail
    monkeypatch.delattr(kelp, "_recordwalk", raising=False)
    spec = importlib.util.spec_from_file_location("batchcheck_fallback", batchcheck.__file__)
    fallback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fallback)
    assert fallback.NATIVE is False
    batch = aiokafka_batch([(None, b"v"), (b"k", None)], headers=[("h", b"x")])
    fallback.check_batch(batch, recordbatch.parse_header(batch))
    with pytest.raises(fallback.BatchRejected) as info:
        fallback.check_batch(batch, recordbatch.parse_header(batch), compacted=True)
    assert info.value.record_errors == ((0, batchcheck.COMPACTED_NO_KEY),)
    with pytest.raises(RuntimeError):
        fallback.walk_records(b"", 0, native=True)


# --- valid batches pass ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_aiokafka_batches_pass_with_every_codec(codec):
    pairs = [(None if i % 5 == 0 else b"key-%d" % i, None if i % 7 == 0 else b"value " * i)
             for i in range(60)]
    batch = aiokafka_batch(pairs, codec=codec, headers=[("trace", b"abc"), ("empty", None)])
    assert recordbatch.parse_header(batch).compression == codec
    check(batch)
    check(batch, max_decompressed_bytes=MiB)


@pytest.mark.parametrize("codec", CODECS)
def test_idempotent_and_transactional_batches_pass(codec):
    pairs = [(b"k%d" % i, b"payload " * 10) for i in range(10)]
    check(aiokafka_batch(pairs, codec=codec, producer=(7, 0, 42)), compacted=True)
    check(aiokafka_batch(pairs, codec=codec, producer=(7, 0, 0), transactional=True))


@pytest.mark.parametrize("codec", COMPRESSED)
def test_kelp_compressed_batches_pass(codec):
    # kelp.records writes raw snappy where aiokafka writes xerial framing: both are Kafka's.
    plain = records.build_batch([(b"k%d" % i, b"v" * i) for i in range(50)], 5)
    body = records.compress(codec, plain[recordbatch.HEADER_SIZE :])
    check(with_body(plain, body, codec), compacted=True)


@given(pair_lists, header_lists)
def test_kio_batches_pass(pairs, headers):
    batch = make_batch(pairs, headers=[(k.encode(), v) for k, v in headers if v is not None])
    check(batch)


@given(pair_lists)
def test_kelp_build_batch_passes(pairs):
    check(records.build_batch(pairs, 1_700_000_000_000))


@settings(max_examples=60)
@given(pair_lists, header_lists, st.sampled_from(CODECS), st.booleans())
def test_agrees_with_kio_reader_on_valid_batches(pairs, headers, codec, compacted):
    batch = aiokafka_batch(pairs, codec=codec, headers=headers)
    header = recordbatch.parse_header(batch)
    body = decompress.decompress_bounded(header.compression,
                                         batch[recordbatch.HEADER_SIZE :], 16 * MiB)
    plain = with_body(batch, body, decompress.NONE)
    decoded, size = read_batch(plain, 0)  # kio: an independent decoder
    assert size == len(plain)
    assert [(r.key, r.value) for r in decoded.records] == pairs
    keyless = tuple(i for i, r in enumerate(decoded.records) if r.key is None)
    for native in (False, True) if batchcheck.NATIVE else (False,):
        walk = batchcheck.walk_records(body, len(pairs), compacted=compacted, native=native)
        assert walk[0] == batchcheck.OK
        assert tuple(walk[5] or ()) == (keyless if compacted else ())
    if compacted and keyless:
        assert tuple(i for i, _ in rejected(batch, compacted=True).record_errors) == keyless
    else:
        check(batch, compacted=compacted)


def test_control_batch_only_when_allowed():
    batch = finish(BASE, attributes=recordbatch.CONTROL_BIT)
    error = rejected(batch)
    assert error.error == INVALID and "not allowed to write control records" in error.message
    check(batch, allow_control=True)


def test_big_batch_takes_the_native_path_without_the_gil():
    # > 256 KiB: the C walker releases the GIL; the keyless list is built after it.
    pairs = [(None if i % 100 == 3 else b"k%d" % i, bytes(1024)) for i in range(400)]
    batch = records.build_batch(pairs, 0)
    check(batch)
    error = rejected(batch, compacted=True)
    assert [i for i, _ in error.record_errors] == [i for i in range(400) if i % 100 == 3]
    for input_type in (bytes, bytearray, memoryview):
        check(input_type(batch))


# --- invalid batches are refused --------------------------------------------------------------


def test_count_zero():
    error = rejected(with_body(BASE, b"", count=0, last_offset_delta=0))
    assert error.error == INVALID
    assert error.message == "Invalid reported count for record batch: 0"


def test_count_five_with_last_offset_delta_zero():
    body = b"".join(encode_record(i, b"k", b"v") for i in range(5))
    error = rejected(with_body(BASE, body, count=5, last_offset_delta=0))
    assert error.error == INVALID
    assert error.message.startswith("Inconsistent batch offset range [0, 0] and count of "
                                    "records 5")


def test_last_offset_delta_far_beyond_one_record():
    error = rejected(finish(BASE, last_offset_delta=2**31 - 1))
    assert error.error == INVALID and "Inconsistent batch offset range" in error.message


@pytest.mark.parametrize(("codec", "error"), [
    (5, ErrorCode.unsupported_compression_type), (6, ErrorCode.unsupported_compression_type),
    (7, ErrorCode.unsupported_compression_type)])
def test_unknown_codecs(codec, error):
    refused = rejected(with_body(BASE, BASE[61:], codec))
    assert refused.error == error and refused.message == f"unknown compression codec {codec}"
    with pytest.raises(decompress.Undecompressible) as info:
        decompress.decompress_bounded(codec, b"x", 100)
    assert info.value.error == error


@pytest.mark.parametrize("codec", COMPRESSED)
def test_body_that_does_not_decompress(codec):
    error = rejected(with_body(BASE, BASE[61:], codec))  # an uncompressed body, flagged
    assert error.error == CORRUPT
    assert error.message.startswith(f"{decompress.CODEC_NAMES[codec]} record batch body does "
                                    "not decompress")
    assert len(error.message) < 200


def test_gzip_means_gzip_not_zlib():
    body = BASE[recordbatch.HEADER_SIZE :]
    check(with_body(BASE, zlib.compress(body, wbits=31), decompress.GZIP))
    error = rejected(with_body(BASE, zlib.compress(body), decompress.GZIP))
    assert error.error == CORRUPT and error.message.startswith("gzip record batch body")


@pytest.mark.parametrize("producer", [(5, -1), (0, -7)])
def test_producer_id_without_sequence(producer):
    error = rejected(finish(BASE, producer=producer))
    assert error.error == INVALID and error.message.startswith("Invalid sequence number")


def test_transactional_without_producer_id():
    error = rejected(finish(BASE, attributes=recordbatch.TRANSACTIONAL_BIT))
    assert error.error == INVALID and "producer id" in error.message


def test_batch_shorter_than_its_header_says():
    error = batchcheck.BatchRejected
    with pytest.raises(error) as info:
        batchcheck.check_batch(BASE[:-1], recordbatch.parse_header(BASE))
    assert info.value.error == CORRUPT


def test_keyless_records_on_a_compacted_topic():
    pairs = [(None, b"a"), (b"k", b"b"), (None, b"c"), (None, None), (None, b"e")]
    batch = aiokafka_batch(pairs, codec=decompress.ZSTD)
    check(batch)
    error = rejected(batch, compacted=True)
    assert error.error == INVALID
    assert error.record_errors == tuple((i, batchcheck.COMPACTED_NO_KEY) for i in (0, 2, 3, 4))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.error, copy.message, copy.record_errors) == (
        error.error, error.message, error.record_errors)
    assert error.message == (
        "One or more records have been rejected due to 4 record errors in total, and only "
        "showing the first three errors at most: [RecordError(batchIndex=0, message='Compacted"
        " topic cannot accept message without key'), RecordError(batchIndex=2, message='"
        "Compacted topic cannot accept message without key'), RecordError(batchIndex=3, "
        "message='Compacted topic cannot accept message without key')]")


def test_structure_errors_win_over_keyless_records():
    body = encode_record(0, None, b"v") + encode_record(1, b"k", b"v", offset_delta=5)
    error = rejected(with_body(BASE, body, count=2, last_offset_delta=1), compacted=True)
    assert error.record_errors == () and "offset delta 5" in error.message


def _records(*parts: bytes) -> bytes:
    return b"".join(parts)


GOOD = encode_record(0, b"k", b"v")
BAD_BODIES = {
    # name: (records body, count, status, text in the message)
    "garbage": (b"\xff" * 40, 1, batchcheck.VARINT_TOO_LONG, "record 0"),
    "trailing bytes": (GOOD + b"\x00\x01\x02", 1, batchcheck.TRAILING,
                       "3 unconsumed bytes after all records"),
    "records missing": (GOOD, 2, batchcheck.RECORDS_MISSING, "only 1 of the 2 records"),
    "zero length": (b"\x00" + GOOD, 1, batchcheck.RECORD_LENGTH, "record 0"),
    "negative length": (zigzag(-3) + GOOD, 1, batchcheck.RECORD_LENGTH, "declares -3"),
    "record past the body": (GOOD[:-1], 1, batchcheck.RECORD_PAST_END, "record 0"),
    "length varint truncated": (GOOD + b"\x80", 2, batchcheck.VARINT_TRUNCATED, "record 1"),
    "offset delta not sequential": (_records(GOOD, encode_record(1, b"k", b"v", offset_delta=0)),
                                    2, batchcheck.OFFSET_DELTA, "Record 1 has offset delta 0"),
    "null header key": (encode_record(0, b"k", b"v", [(b"a", b"b"), (None, b"x")]), 1,
                        batchcheck.HEADER_KEY_NEGATIVE,
                        "Invalid negative header key size -1 in header 1 of record 0"),
    "record longer than its fields": (
        zigzag(len(GOOD)) + GOOD[1:] + b"\x00", 1, batchcheck.RECORD_SIZE,
        f"expected to read {len(GOOD)} bytes in record payload, but instead read "
        f"{len(GOOD) - 1}"),
    "key length below -1": (zigzag(5) + b"\x00\x00\x00" + zigzag(-2) + b"\x00", 1,
                            batchcheck.KEY_LENGTH, "key length -2"),
    "key past the record": (zigzag(6) + b"\x00\x00\x00" + zigzag(9) + b"ab", 1,
                            batchcheck.KEY_PAST_END, "9-byte key of record 0"),
    "value past the record": (zigzag(6) + b"\x00\x00\x00\x01" + zigzag(3) + b"a", 1,
                              batchcheck.VALUE_PAST_END, "3-byte value of record 0"),
    "negative header count": (zigzag(6) + b"\x00\x00\x00\x01\x01" + zigzag(-2), 1,
                              batchcheck.HEADER_COUNT_NEGATIVE, "headers -2"),
    "header count larger than the record": (
        zigzag(6) + b"\x00\x00\x00\x01\x01" + zigzag(50), 1,
        batchcheck.HEADER_COUNT_TOO_LARGE, "50 is larger"),
    "header value past the record": (
        zigzag(8) + b"\x00\x00\x00\x01\x01" + zigzag(1) + zigzag(0) + zigzag(4), 1,
        batchcheck.HEADER_VALUE_PAST_END, "header 0 of record 0"),
    "timestamp varlong too long": (zigzag(13) + b"\x00" + b"\xff" * 10 + b"\x00\x00", 1,
                                   batchcheck.VARINT_TOO_LONG, "more than 10 bytes"),
    "offset delta truncated by the record end": (zigzag(3) + b"\x00\x00\x80", 1,
                                                 batchcheck.VARINT_TRUNCATED,
                                                 "offsetDelta varint"),
}


@pytest.mark.parametrize("native", WALKERS)
@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_malformed_records(name, native):
    body, count, status, text = BAD_BODIES[name]
    walk = batchcheck.walk_records(body, count, native=native)
    assert walk[0] == status, walk
    batch = with_body(BASE, body, count=count, last_offset_delta=count - 1)
    error = rejected(batch)
    assert error.error == INVALID
    assert text in error.message, error.message
    # Compressed, the same records fail the same way.
    error = rejected(with_body(BASE, records.compress(decompress.GZIP, body), decompress.GZIP,
                               count=count, last_offset_delta=count - 1))
    assert error.error == INVALID and text in error.message


@pytest.mark.parametrize("native", WALKERS)
def test_varints_follow_java_int_arithmetic(native):
    # A 5-byte varint whose 5th byte carries bits above 32: Java drops them, so do we.
    # 0xff 0xff 0xff 0xff 0x7f reads as 0xffffffff -> zigzag -2^31: a negative key length.
    body = zigzag(9) + b"\x00\x00\x00" + b"\xff\xff\xff\xff\x7f" + b"\x00"
    walk = batchcheck.walk_records(body, 1, native=native)
    assert walk[:4] == (batchcheck.KEY_LENGTH, 0, -1, -(2**31))
    # 0x0f in the 5th byte: 0xfffffffe -> zigzag 2^31 - 1, a huge key length.
    body = zigzag(9) + b"\x00\x00\x00" + b"\xfe\xff\xff\xff\x0f" + b"\x00"
    walk = batchcheck.walk_records(body, 1, native=native)
    assert walk[:5] == (batchcheck.KEY_PAST_END, 0, -1, 2**31 - 1, 1)


# --- zip bombs ---------------------------------------------------------------------------------

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


# --- fuzzing: the two walkers agree, nothing but BatchRejected escapes ----------------------


def _compare_walkers(body: bytes, count: int, compacted: bool) -> batchcheck.Walk:
    python = batchcheck.walk_records(body, count, compacted=compacted, native=False)
    if batchcheck.NATIVE:
        native = batchcheck.walk_records(body, count, compacted=compacted, native=True)
        assert native == python
    message = batchcheck.describe_walk(python, count)
    assert (message is None) == (python[0] == batchcheck.OK)
    event(f"walk status {python[0]}")
    return python


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(0, 1000), st.booleans())
def test_arbitrary_bytes(body, count, compacted):
    _compare_walkers(body, count, compacted)
    try:
        batchcheck.check_records(body, count, compacted=compacted)
    except batchcheck.BatchRejected as error:
        assert error.error == INVALID


mutations = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 6)),
), min_size=1, max_size=4)


def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for op in ops:
        if not out:
            break
        position = op[1] % len(out)
        if op[0] == "flip":
            out[position] ^= 1 << op[2]
        elif op[0] == "set":
            out[position] = op[2]
        elif op[0] == "truncate":
            del out[position:]
        elif op[0] == "insert":
            out[position:position] = op[2]
        else:
            del out[position : position + op[2]]
    return bytes(out)


def _kio_decodes(batch: bytes) -> list | None:
    """kio's reading of a batch, or None when kio trips on a timestamp Kafka does not check."""
    batch = bytearray(batch)
    struct.pack_into(">q", batch, 35, 2**62)  # kio checks record timestamps against this
    try:
        decoded, _size = read_batch(finish(batch), 0)
    except (OverflowError, OSError, ValueError) as exc:
        if any(word in str(exc) for word in ("year", "timestamp", "range", "too large")):
            return None
        raise
    return list(decoded.records)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pair_lists, header_lists, mutations, st.booleans())
def test_mutated_uncompressed_bodies(pairs, headers, ops, compacted):
    batch = aiokafka_batch(pairs, headers=headers)
    body = mutate(batch[recordbatch.HEADER_SIZE :], ops)
    walk = _compare_walkers(body, len(pairs), compacted)
    mutated = with_body(batch, body)
    try:
        check(mutated, compacted=compacted)
    except batchcheck.BatchRejected as error:
        assert error.error == INVALID
        assert (error.record_errors != ()) == (walk[0] == batchcheck.OK)
        return
    # Accepted: kio, an independent decoder, reads the same number of records from it.
    decoded = _kio_decodes(mutated)
    if decoded is not None:
        assert len(decoded) == len(pairs)
        assert [r.offset for r in decoded] == list(range(len(pairs)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(pair_lists, st.sampled_from(COMPRESSED), mutations, st.booleans())
def test_mutated_whole_batches(pairs, codec, ops, compacted):
    batch = aiokafka_batch([(k, (v or b"") * 3) for k, v in pairs], codec=codec)
    mutated = mutate(batch, ops)
    try:
        header = recordbatch.parse_header(mutated)
    except recordbatch.CorruptBatch:
        return  # recordbatch's business
    try:
        batchcheck.check_batch(mutated, header, compacted=compacted,
                               max_decompressed_bytes=64 * 1024)
    except batchcheck.BatchRejected as error:
        assert error.error in (INVALID, CORRUPT, ErrorCode.unsupported_compression_type)
