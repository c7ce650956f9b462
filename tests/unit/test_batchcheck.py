"""kelp.batchcheck: Kafka's LogValidator checks on produced batches.

Valid batches come from three encoders that are not ours (aiokafka's record builder, kio's
batch writer) besides kelp.records; kio's reader is the independent decoder to agree with.
The C walker and the Python walker must give identical answers on any input (fuzzed in
test_batchcheck_fuzz.py); bounded decompression is in test_decompress_bombs.py.
"""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.records.readers import read_batch
from kio.schema.errors import ErrorCode

import kelp
from kelp import batchcheck, decompress, recordbatch, records
from tests.batches import make_batch
from tests.unit.batchcheck_helpers import (
    BASE,
    CODECS,
    COMPRESSED,
    CORRUPT,
    INVALID,
    WALKERS,
    MiB,
    aiokafka_batch,
    check,
    encode_record,
    finish,
    header_lists,
    pair_lists,
    rejected,
    with_body,
    zigzag,
)

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
