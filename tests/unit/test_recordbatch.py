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
