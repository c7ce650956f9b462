"""A segment on its own: append, find by offset and time, recover, and compaction's swap."""

from __future__ import annotations

import os

from broker.storage.segment import Segment, index_paths
from kelp import recordbatch
from tests.batches import make_batch

INTERVAL = 400


def write(segment: Segment, count: int, *, first_timestamp: int = 1_000) -> list[int]:
    """Append ``count`` two-record batches; returns each batch's file position."""
    positions = []
    for number in range(count):
        buffer = bytearray(make_batch([(b"k", b"v" * 40)] * 2,
                                      timestamp=first_timestamp + 10 * number))
        recordbatch.rewrite_offset_and_epoch(buffer, 0, segment.next_offset)
        positions.append(segment.size)
        segment.append(buffer, [0], INTERVAL, append_ms=5)
    return positions


def test_append_find_and_find_time(tmp_path):
    segment = Segment.create(tmp_path, 100)
    positions = write(segment, 10)
    assert segment.next_offset == 120 and segment.first_append_ms == 5
    assert 1 < len(segment.offset_index) < 10  # sparse
    for offset in range(100, 120):
        assert segment.find(offset) == positions[(offset - 100) // 2]
    assert segment.find(120) is None
    # The time index may point earlier than the first batch at or after the time, never later.
    assert 100 <= segment.find_time(1_045) <= 110  # batch 110 is the first at 1_050
    assert segment.max_timestamp == 1_090
    segment.close()


def test_recover_cuts_a_torn_tail_and_rebuilds_the_indexes(tmp_path):
    segment = Segment.create(tmp_path, 0)
    positions = write(segment, 6)
    size = segment.size
    segment.close()
    path = tmp_path / "00000000000000000000.log"
    with open(path, "ab") as torn:
        torn.write(make_batch([(b"k", b"v")])[:30])
    for index in index_paths(path):
        index.write_bytes(b"junk")
    loaded, damaged = Segment.load(path, trusted=False, compacted=False, index_interval=INTERVAL)
    assert damaged and loaded.size == size == os.path.getsize(path)
    assert loaded.next_offset == 12
    assert [loaded.find(offset) for offset in (0, 11)] == [positions[0], positions[5]]
    assert os.path.getsize(index_paths(path)[0]) % 16 == 0
    loaded.close()


def test_trusted_load_keeps_good_indexes_and_finds_a_crc_mismatch_only_when_checking(tmp_path):
    segment = Segment.create(tmp_path, 0)
    positions = write(segment, 4)
    segment.close()
    path = tmp_path / "00000000000000000000.log"
    data = bytearray(path.read_bytes())
    data[positions[3] + recordbatch.HEADER_SIZE] ^= 1  # inside the CRC of the last batch
    path.write_bytes(data)
    trusted, damaged = Segment.load(path, trusted=True, compacted=False, index_interval=INTERVAL)
    assert not damaged and trusted.next_offset == 8  # trusted: CRCs are not re-checked
    trusted.close()
    checked, damaged = Segment.load(path, trusted=False, compacted=False, index_interval=INTERVAL)
    assert damaged and checked.next_offset == 6 and checked.size == positions[3]
    checked.close()


def test_take_place_of_moves_files_and_retires_the_old_segment(tmp_path):
    old = Segment.create(tmp_path, 0)
    write(old, 4)
    (tmp_path / "new").mkdir()
    fresh = Segment.create(tmp_path / "new", 0)
    write(fresh, 1)
    with old.hold():
        fresh.take_place_of(old)
        assert old.retired and old.fd >= 0 and old.read(0, 8)  # a reader finishes on it
    assert old.fd == -1
    assert fresh.path == old.path and fresh.offset_index.path == index_paths(old.path)[0]
    assert os.path.getsize(old.path) == fresh.size
    fresh.append(bytearray(make_batch([(b"k", b"v")], base_offset=2)), [0], INTERVAL, 6)
    assert os.path.getsize(old.path) == fresh.size  # the moved files keep taking appends
    fresh.close()
