"""Record batch header parsing and validation, checked against kio's own batch writer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp import recordbatch
from tests.batches import make_batch, read_batches


@given(
    records=st.lists(st.tuples(st.binary(max_size=40) | st.none(), st.binary(max_size=200)),
                     min_size=1, max_size=20),
    base_offset=st.integers(0, 2**40),
    timestamp=st.integers(0, 2**41),
)
def test_header_fields_round_trip(records, base_offset, timestamp):
    batch = make_batch(records, base_offset=base_offset, timestamp=timestamp)
    header = recordbatch.parse_header(batch)
    assert header.base_offset == base_offset
    assert header.size == len(batch)
    assert header.record_count == len(records)
    assert header.last_offset == base_offset + len(records) - 1
    assert recordbatch.crc_matches(batch, 0, header)


def test_rewrite_keeps_crc_valid():
    batch = bytearray(make_batch([(b"k", b"v")] * 3))
    recordbatch.rewrite_offset_and_epoch(batch, 0, 12345, leader_epoch=7)
    header = recordbatch.parse_header(batch)
    assert (header.base_offset, header.partition_leader_epoch) == (12345, 7)
    assert recordbatch.crc_matches(batch, 0, header)


def test_iter_batches_splits_concatenated_batches():
    first, second = make_batch([(b"a", b"1")]), make_batch([(b"b", b"2"), (b"c", b"3")])
    found = list(recordbatch.iter_batches(first + second))
    assert [pos for pos, _ in found] == [0, len(first)]
    assert [h.record_count for _, h in found] == [1, 2]


@pytest.mark.parametrize("damage", ["flip_payload", "truncate", "magic", "short"])
def test_corruption_is_refused(damage):
    batch = bytearray(make_batch([(b"key", b"value" * 10)]))
    if damage == "flip_payload":
        batch[-1] ^= 0xFF
    elif damage == "truncate":
        batch = batch[:-5]
    elif damage == "magic":
        batch[16] = 1
    else:
        batch = batch[:30]
    with pytest.raises(recordbatch.CorruptBatch):
        list(recordbatch.iter_batches(bytes(batch)))


def test_kio_decodes_a_rewritten_batch():
    batch = bytearray(make_batch([(b"k1", b"v1"), (None, b"v2")], headers=[(b"h", b"x")]))
    recordbatch.rewrite_offset_and_epoch(batch, 0, 500)
    (decoded,) = read_batches(bytes(batch))
    assert decoded.base_offset == 500
    assert [(r.key, r.value) for r in decoded.records] == [(b"k1", b"v1"), (None, b"v2")]
    assert decoded.records[0].headers[0].key == b"h"


@given(records=st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=50)),
                        min_size=1, max_size=8),
       base_offset=st.integers(0, 2**40))
def test_layout_helpers_agree_with_kio(records, base_offset):
    """peek, pack_header, set_size and sign against batches kio wrote and reads back."""
    batch = make_batch(records, base_offset=base_offset)
    header = recordbatch.parse_header(batch)
    assert recordbatch.peek(batch) == (base_offset, len(batch))
    assert recordbatch.peek_last_offset(batch) == base_offset + len(records) - 1
    assert recordbatch.pack_header(header) == batch[: recordbatch.HEADER_SIZE]
    # A batch cut to its first record, resized and re-signed, is one kio reads as such.
    first_record_end = recordbatch.HEADER_SIZE + _record_size(batch, recordbatch.HEADER_SIZE)
    cut = bytearray(batch[:first_record_end])
    recordbatch.set_size(cut, 0, len(cut), 1)
    recordbatch.sign(cut)
    (decoded,) = read_batches(bytes(cut))
    assert len(decoded.records) == 1 and decoded.records[0].key == records[0][0]
    assert recordbatch.crc_matches(cut, 0, recordbatch.parse_header(cut))


def _record_size(data: bytes, position: int) -> int:
    """Bytes of the record at ``position``: its zigzag varint length and the body."""
    raw = shift = 0
    start = position
    while True:
        byte = data[position]
        position += 1
        raw |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return position - start + ((raw >> 1) ^ -(raw & 1))
