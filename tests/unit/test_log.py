"""The partition log: offsets, reads from inside batches, rolling, recovery of a torn tail."""

from __future__ import annotations

import os

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.log import LogConfig, OffsetOutOfRange, PartitionLog
from kelp.recordbatch import CorruptBatch
from tests.batches import log_offsets, make_batch, make_batch_with_timestamps, read_batches


def batch_of(n: int, tag: str = "v") -> bytes:
    return make_batch([(f"k{i}".encode(), f"{tag}{i}".encode()) for i in range(n)])


async def test_offsets_are_assigned_and_bytes_kept(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    original = batch_of(3)
    assert plog.append(original).base_offset == 0
    assert plog.append(batch_of(2)).base_offset == 3
    assert plog.high_watermark == 5
    read = await plog.read(0, 1 << 20)
    first = read.records[: len(original)]
    # Byte for byte but for the base offset (0 here) and the leader epoch.
    assert first[8:12] == original[8:12] and first[16:] == original[16:]
    assert [b.base_offset for b in read_batches(read.records)] == [0, 3]


async def test_read_inside_a_batch_returns_the_whole_batch(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    plog.append(batch_of(5))
    plog.append(batch_of(5))
    read = await plog.read(7, 1 << 20)
    (batch,) = read_batches(read.records)
    assert batch.base_offset == 5 and len(batch.records) == 5


async def test_max_bytes_returns_whole_batches_and_at_least_one(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    sizes = [len(batch_of(10)) for _ in range(3)]
    for _ in range(3):
        plog.append(batch_of(10))
    assert len((await plog.read(0, 1)).records) == sizes[0]
    assert len((await plog.read(0, sizes[0] + sizes[1] - 1)).records) == sizes[0]
    assert len((await plog.read(0, sizes[0] + sizes[1])).records) == sizes[0] + sizes[1]
    # Not the first partition with data in its fetch: a batch that does not fit is not sent.
    assert (await plog.read(0, sizes[0] - 1, at_least_one=False)).records == b""
    assert len((await plog.read(0, sizes[0], at_least_one=False)).records) == sizes[0]
    # Within a few bytes (less than one read's peek) nothing past max_bytes either.
    assert len((await plog.read(0, sizes[0] + 5)).records) == sizes[0]


async def test_out_of_range_and_end_of_log(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    plog.append(batch_of(2))
    assert (await plog.read(2, 100)).records == b""
    with pytest.raises(OffsetOutOfRange):
        await plog.read(3, 100)
    with pytest.raises(OffsetOutOfRange):
        await plog.read(-1, 100)


async def test_corrupt_batch_is_refused_and_nothing_written(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    bad = bytearray(batch_of(2))
    bad[-1] ^= 1
    with pytest.raises(CorruptBatch):
        plog.append(bytes(bad))
    assert plog.high_watermark == 0 and plog.size_bytes == 0


async def test_segments_roll_and_reads_cross_them(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", LogConfig(segment_bytes=200))
    for i in range(10):
        plog.append(batch_of(2, tag=str(i)))
    assert len(plog.segments) > 1
    offsets, position = [], 0
    while position < plog.high_watermark:
        batches = read_batches((await plog.read(position, 1 << 20)).records)
        offsets += [b.base_offset for b in batches]
        position = batches[-1].base_offset + len(batches[-1].records)
    assert offsets == list(range(0, 20, 2))


async def test_recovery_restores_state_and_truncates_a_torn_tail(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    for _ in range(3):
        plog.append(batch_of(4))
    await plog.wait_durable(plog.append(batch_of(4)).write_mark)
    path = plog.active.path
    good_size = plog.size_bytes
    plog.close()
    with open(path, "ab") as torn:  # half of a batch, as a crash mid-write leaves it
        torn.write(batch_of(4)[:40])
    reopened = PartitionLog.open(tmp_path / "p")
    assert reopened.high_watermark == 16
    assert os.path.getsize(path) == good_size
    assert reopened.append(batch_of(1)).base_offset == 16
    reopened.close()


async def test_group_commit_shares_fsyncs(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    marks = [plog.append(batch_of(1)).write_mark for _ in range(20)]
    async with trio.open_nursery() as nursery:
        for mark in marks:
            nursery.start_soon(plog.wait_durable, mark)
    assert plog._synced >= marks[-1]
    plog.close()


async def test_append_wakes_listeners(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    woken = trio.Event()
    plog.add_append_listener(woken.set)
    plog.append(batch_of(1))
    assert woken.is_set()


def fill(plog: PartitionLog, batches: int, per_batch: int = 3, *, t0: int = 1_000) -> None:
    for number in range(batches):
        plog.append(make_batch([(b"k", b"v" * 50)] * per_batch, timestamp=t0 + number * 10))


SMALL = LogConfig(segment_bytes=2000, index_interval_bytes=300)


async def test_reads_from_every_offset_with_sparse_indexes(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", SMALL)
    fill(plog, 40)
    assert len(plog.segments) > 3
    for offset in range(plog.high_watermark):
        (first, *_rest) = read_batches((await plog.read(offset, 1)).records)
        assert first.base_offset <= offset < first.base_offset + len(first.records)
    assert await log_offsets(plog) == list(range(120))


async def test_clean_reopen_trusts_indexes_and_rebuilds_missing_ones(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", SMALL)
    fill(plog, 40)
    plog.close()
    (tmp_path / "p" / "00000000000000000000.index").unlink()
    (tmp_path / "p" / "00000000000000000000.timeindex").write_bytes(b"garbage")
    reopened = PartitionLog.open(tmp_path / "p", SMALL)
    assert reopened.high_watermark == 120
    assert await log_offsets(reopened) == list(range(120))
    assert len(reopened.segments[0].offset_index) > 0
    reopened.close()


async def test_damage_in_an_unsynced_middle_segment_cuts_everything_after(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", SMALL)
    fill(plog, 40)
    second = plog.segments[1]
    second_start, second_end = second.base_offset, second.next_offset
    for segment in plog.segments:
        segment.close()  # a crash: no clean close, recovery point stays at 0
    with open(second.path, "r+b") as damaged:
        damaged.seek(second.size - 5)
        damaged.write(b"\xff\xff\xff\xff\xff")
    reopened = PartitionLog.open(tmp_path / "p", SMALL)
    assert second_start < reopened.high_watermark < second_end
    assert await log_offsets(reopened) == list(range(reopened.high_watermark))
    assert len(reopened.segments) == 2


@given(timestamps=st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=5),
                          min_size=1, max_size=25),
       targets=st.lists(st.integers(-5, 1010), min_size=1, max_size=10))
@settings(max_examples=40, deadline=None)
def test_offset_for_timestamp_matches_a_brute_force_scan(tmp_path_factory, timestamps, targets):
    """Record timestamps in any order (CreateTime); the answer is the first record >= t."""
    directory = tmp_path_factory.mktemp("ts")
    plog = PartitionLog.open(directory / "p", LogConfig(segment_bytes=600,
                                                        index_interval_bytes=100))
    flat = []
    for batch_ts in timestamps:
        plog.append(make_batch_with_timestamps(batch_ts))
        flat += batch_ts

    async def check() -> None:
        for target in targets:
            expected = next(((offset, ts) for offset, ts in enumerate(flat) if ts >= target),
                            None)
            assert await plog.offset_for_timestamp(target) == expected, target
        top = max(flat)
        assert await plog.max_timestamp_offset() == (flat.index(top), top)

    trio.run(check)
    plog.close()


async def test_retention_by_time_deletes_whole_old_segments(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", LogConfig(segment_bytes=2000, retention_ms=500))
    fill(plog, 40, t0=1_000)  # batch n: timestamp 1000 + 10n
    segments = len(plog.segments)
    # "now" such that only batches at or after t=1200 are younger than 500 ms.
    deleted = plog.apply_retention(now=1_700)
    assert 0 < deleted < segments
    assert all(s.max_timestamp >= 1_200 for s in plog.segments)
    assert plog.log_start_offset == plog.segments[0].base_offset > 0
    with pytest.raises(OffsetOutOfRange):
        await plog.read(0, 100)
    assert await log_offsets(plog) == list(range(plog.log_start_offset, 120))
    # Everything expired: the active segment is sealed and goes too; appends continue.
    plog.apply_retention(now=10_000_000)
    assert plog.log_start_offset == plog.high_watermark == 120
    assert plog.append(batch_of(1)).base_offset == 120


async def test_retention_by_size_keeps_the_newest_bytes(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", LogConfig(segment_bytes=2000,
                                                       retention_ms=-1, retention_bytes=4000))
    fill(plog, 60)
    plog.apply_retention(now=0)
    assert plog.size_bytes - plog.segments[0].size < 4000 <= plog.size_bytes
    assert await log_offsets(plog) == list(range(plog.log_start_offset, 180))


async def test_delete_records_moves_log_start_and_survives_restart(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", SMALL)
    fill(plog, 40)
    assert await plog.delete_records(50) == 50
    with pytest.raises(OffsetOutOfRange):
        await plog.read(49, 100)
    first = read_batches((await plog.read(50, 1)).records)[0]
    assert first.base_offset <= 50 < first.base_offset + len(first.records)
    with pytest.raises(OffsetOutOfRange):
        await plog.delete_records(121)
    plog.close()
    reopened = PartitionLog.open(tmp_path / "p", SMALL)
    assert reopened.log_start_offset == 50
    reopened.close()


async def test_interval_policy_flushes_in_the_background(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", LogConfig(flush_messages=5, flush_ms=60_000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plog.maintain, 3600.0)
        plog.append(batch_of(2))
        await trio.sleep(0.05)
        assert plog._synced == 0  # 2 records < flush.messages
        plog.append(batch_of(4))
        with trio.fail_after(5):
            while plog._synced < plog._written:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    plog.close()


async def test_log_append_time_stamps_batches_and_keeps_them_valid(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", LogConfig(log_append_time=True))
    result = plog.append(make_batch([(b"k", b"v"), (b"k2", b"v2")], timestamp=1_000))
    assert result.log_append_time > 1_700_000_000_000
    data = (await plog.read(0, 1 << 20)).records
    assert len(read_batches(data)) == 1  # kio reads it; our CRC check too:
    from kelp import recordbatch, records
    header = recordbatch.parse_header(data)
    assert recordbatch.crc_matches(data, 0, header)
    assert header.attributes & recordbatch.TIMESTAMP_TYPE_BIT
    assert header.max_timestamp == result.log_append_time
    assert {r.timestamp for r in records.iter_records(data)} == {result.log_append_time}


async def test_compaction_keeps_the_latest_value_per_key(tmp_path):
    from kelp import records

    config = LogConfig(segment_bytes=700, compacted=True, delete_retention_ms=1_000)
    plog = PartitionLog.open(tmp_path / "p", config)
    written: list[tuple[int, bytes, bytes | None]] = []
    for round_number in range(30):
        pairs = [(b"key-%d" % ((round_number * 3 + i) % 7), b"v%d" % round_number)
                 for i in range(3)]
        if round_number == 10:
            pairs.append((b"key-0", None))  # a tombstone, old enough to go
        plog.append(make_batch(pairs, timestamp=1_000 + round_number))
        written += [(len(written) + i, key, value) for i, (key, value) in enumerate(pairs)]
    sealed_end = plog.active.base_offset
    assert await plog.compact(now=10_000_000, delete_retention_ms=1_000) > 0

    # The cleaner sees only sealed segments: each key keeps its last value there.
    last_sealed = {key: (offset, value) for offset, key, value in written if offset < sealed_end}
    expected = {k: v for k, v in last_sealed.items() if v[1] is not None}
    survivors = {}
    for segment in plog.segments[:-1]:
        for _, batch in segment.batches():
            for record in records.iter_records(batch):
                assert record.key not in survivors, "two values for one key in the clean part"
                survivors[record.key] = (record.offset, record.value)
    assert survivors == expected
    # Reads still work across the gaps, and the log recovers as it now stands.
    read_back = await offsets_with_gaps(plog)
    assert read_back == sorted(o for o, _ in expected.values()) + list(
        range(sealed_end, len(written)))
    plog.close()
    reopened = PartitionLog.open(tmp_path / "p", config)
    assert await offsets_with_gaps(reopened) == read_back
    reopened.close()


async def offsets_with_gaps(plog: PartitionLog) -> list[int]:
    from kelp import recordbatch, records

    offsets, position = [], plog.log_start_offset
    while position < plog.high_watermark:
        data = (await plog.read(position, 1 << 20)).records
        for start, header in recordbatch.iter_batches(data):
            offsets += [r.offset for r in records.iter_records(data[start:start + header.size])]
            position = header.last_offset + 1
    return offsets


async def test_segments_roll_by_age(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", LogConfig(segment_ms=1))
    plog.append(batch_of(2))
    await trio.sleep(0.01)
    plog.append(batch_of(2))
    assert len(plog.segments) == 2 and plog.active.base_offset == 2


async def test_oversized_batches_are_refused(tmp_path):
    from broker.log import MessageTooLarge

    plog = PartitionLog.open(tmp_path / "p", LogConfig(max_message_bytes=100))
    with pytest.raises(MessageTooLarge):
        plog.append(make_batch([(b"k", b"v" * 200)]))
    assert plog.high_watermark == 0


def test_a_wrong_max_timestamp_is_corrected_as_kafka_does(tmp_path):
    """Kafka's LogValidator stores the largest record timestamp as the batch's maxTimestamp."""
    import struct

    import crc32c

    from kelp import recordbatch
    from tests.batches import make_batch_with_timestamps

    batch = bytearray(make_batch_with_timestamps([1000, 5000, 3000]))
    struct.pack_into(">q", batch, 35, -1)  # a producer's wrong maxTimestamp, CRC re-signed
    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))
    plog = PartitionLog.open(tmp_path / "p")
    plog.append(bytes(batch))
    stored = (tmp_path / "p" / "00000000000000000000.log").read_bytes()
    header = recordbatch.parse_header(stored)
    assert header.max_timestamp == 5000 and recordbatch.crc_matches(stored, 0, header)
    assert stored[61:] == bytes(batch[61:])  # the records themselves are untouched
    plog.close()


async def test_a_sync_checkpoints_at_most_once_an_interval(tmp_path) -> None:
    """The recovery point and producer snapshot are hints for the next start: a sync writes
    them at most every CHECKPOINT_INTERVAL_S (they cost more than the fsync itself), and a
    clean close writes them whole."""
    from broker.storage import loader

    plog = PartitionLog.open(tmp_path / "t-0")
    point = tmp_path / "t-0" / loader.RECOVERY_POINT
    await plog.wait_durable(plog.append(batch_of(1)).write_mark)
    assert loader.read_checkpoint(point) == 1  # the first sync: due
    await plog.wait_durable(plog.append(batch_of(1)).write_mark)
    assert loader.read_checkpoint(point) == 1  # the next within the interval: not written
    assert plog.unflushed_bytes == 0  # durable all the same
    plog.close()
    assert loader.read_checkpoint(point) == 2
    again = PartitionLog.open(tmp_path / "t-0")
    assert again.log_end_offset == 2
    again.close()
