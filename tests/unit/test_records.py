"""Decoding records inside batches, against kio's batch writer, for every codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp import recordbatch, records
from tests.batches import make_batch


@given(st.lists(st.tuples(st.binary(max_size=30) | st.none(), st.binary(max_size=300) | st.none()),
                min_size=1, max_size=30))
def test_decodes_what_kio_writes(pairs):
    batch = make_batch(pairs, base_offset=100, timestamp=5_000, headers=[(b"h", b"v")])
    decoded = list(records.iter_records(batch))
    assert [(r.key, r.value) for r in decoded] == pairs
    assert [r.offset for r in decoded] == list(range(100, 100 + len(pairs)))
    assert all(r.timestamp == 5_000 and r.headers == (("h", b"v"),) for r in decoded)


@pytest.mark.parametrize("codec", [records.GZIP, records.SNAPPY, records.LZ4, records.ZSTD])
def test_compressed_batches_decode(codec):
    plain = bytearray(make_batch([(b"k%d" % i, b"v" * i) for i in range(50)]))
    body = records.compress(codec, bytes(plain[recordbatch.HEADER_SIZE :]))
    batch = bytearray(plain[: recordbatch.HEADER_SIZE] + body)
    batch[8:12] = (len(batch) - 12).to_bytes(4, "big")
    batch[21:23] = codec.to_bytes(2, "big")
    batch[17:21] = __import__("crc32c").crc32c(bytes(batch[21:])).to_bytes(4, "big")
    decoded = list(records.iter_records(bytes(batch)))
    assert [(r.key, r.value) for r in decoded] == [(b"k%d" % i, b"v" * i) for i in range(50)]


def test_xerial_snappy_framing():
    payload = b"hello kafka " * 100
    block = bytes(__import__("cramjam").snappy.compress_raw(payload))
    framed = b"\x82SNAPPY\x00" + (1).to_bytes(4, "big") + (1).to_bytes(4, "big")
    framed += len(block).to_bytes(4, "big") + block
    assert records.decompress(records.SNAPPY, framed) == payload


@pytest.mark.parametrize("codec", [records.NONE, records.GZIP, records.ZSTD])
def test_rebuilt_batch_keeps_offsets_and_is_valid(codec):
    plain = bytearray(make_batch([(b"k%d" % i, b"v%d" % i) for i in range(10)], base_offset=50,
                                 headers=[(b"h", b"x")]))
    if codec != records.NONE:
        body = records.compress(codec, bytes(plain[recordbatch.HEADER_SIZE :]))
        plain = bytearray(plain[: recordbatch.HEADER_SIZE] + body)
        plain[8:12] = (len(plain) - 12).to_bytes(4, "big")
        plain[21:23] = codec.to_bytes(2, "big")
    every = list(records.iter_records(bytes(plain)))
    kept = [every[2], every[7]]
    rebuilt = records.rebuild_batch(bytes(plain), kept)
    header = recordbatch.parse_header(rebuilt)
    assert recordbatch.crc_matches(rebuilt, 0, header)
    assert header.record_count == 2 and header.last_offset == 59 and header.compression == codec
    assert list(records.iter_records(rebuilt)) == kept


def test_built_batches_are_valid_kafka():
    from tests.batches import read_batches

    batch = records.build_batch([(b"a", b"1"), (b"b", None)], timestamp=1234)
    (decoded,) = read_batches(batch)  # kio's reader
    assert [(r.key, r.value) for r in decoded.records] == [(b"a", b"1"), (b"b", None)]
    header = recordbatch.parse_header(batch)
    assert recordbatch.crc_matches(batch, 0, header) and header.max_timestamp == 1234
