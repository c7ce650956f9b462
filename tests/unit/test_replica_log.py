"""A partition log as a replica: the leader's batches copied byte for byte, leader epochs,
truncation at an epoch boundary, and the leader's view of its followers (``broker.isr``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.isr import LeaderProgress
from broker.log import PartitionLog
from broker.storage.epochs import UNDEFINED, EpochCache
from kelp.recordbatch import CorruptBatch
from tests.batches import log_offsets, make_batch, read_batches


async def test_a_follower_stores_the_leaders_batches_byte_for_byte(tmp_path):
    leader = PartitionLog.open(tmp_path / "leader")
    follower = PartitionLog.open(tmp_path / "follower")
    for epoch, count in ((0, 3), (2, 2), (5, 1)):
        leader.leader_epoch = epoch
        for i in range(count):
            leader.append(make_batch([(b"k", b"e%d-%d" % (epoch, i))]))
    copied = (await leader.read(0, 1 << 20)).records
    follower.append_replica(copied)
    assert (await follower.read(0, 1 << 20)).records == copied
    assert follower.log_end_offset == leader.log_end_offset == 6
    assert [b.partition_leader_epoch for b in read_batches(copied)] == [0, 0, 0, 2, 2, 5]
    for plog in (leader, follower):
        cache = plog.epoch_cache()
        assert (cache.epochs, cache.starts) == ([0, 2, 5], [0, 3, 5])
    # Not where the log ends, or damaged: refused, nothing written.
    with pytest.raises(CorruptBatch):
        follower.append_replica(copied)
    damaged = bytearray(make_batch([(b"k", b"v")], base_offset=6))
    damaged[-1] ^= 0xFF
    with pytest.raises(CorruptBatch):
        follower.append_replica(bytes(damaged))
    assert follower.log_end_offset == 6


async def test_truncation_drops_whole_batches_and_later_epochs(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    for epoch in (0, 0, 1, 1, 3):
        plog.leader_epoch = epoch
        plog.append(make_batch([(b"k", b"a"), (b"k", b"b")]))
    assert plog.epoch_cache().end_offset_for(1, plog.log_end_offset) == (1, 8)
    # Inside the batch 6-7: that batch goes whole, and epoch 3 (from 8) with it.
    assert plog.truncate_to(7) == 6
    assert await log_offsets(plog) == [0, 1, 2, 3, 4, 5]
    assert plog.epoch_cache().epochs == [0, 1]
    plog.leader_epoch = 4
    assert plog.append(make_batch([(b"k", b"c")])).base_offset == 6
    plog.close()
    reopened = PartitionLog.open(tmp_path / "p")
    assert reopened.log_end_offset == 7
    assert (reopened.epoch_cache().epochs, reopened.epoch_cache().starts) == ([0, 1, 4],
                                                                              [0, 4, 6])
    assert reopened.truncate_to(4) == 4  # at a batch start: exactly there
    assert reopened.epoch_cache().epochs == [0]


async def test_the_replicated_high_watermark_bounds_what_consumers_read(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    for _ in range(3):
        plog.append(make_batch([(b"k", b"v")]))
    assert plog.visible_end(False) is None  # a lone broker: everything written
    plog.set_high_watermark(1)
    assert plog.high_watermark == 1 and plog.log_end_offset == 3
    read = await plog.read(0, 1 << 20, end=plog.visible_end(False))
    assert [b.base_offset for b in read_batches(read.records)] == [0]
    assert (await plog.read(2, 1 << 20, end=plog.visible_end(False))).records == b""
    assert plog.bytes_after(1, plog.visible_end(False)) == 0


def test_epoch_cache_answers_as_offset_for_leader_epoch():
    cache = EpochCache([(1, 0), (3, 10), (4, 25)])
    assert cache.end_offset_for(0, 40) == (UNDEFINED, UNDEFINED)
    assert cache.end_offset_for(1, 40) == (1, 10)
    assert cache.end_offset_for(2, 40) == (1, 10)  # unknown epoch: the one before it
    assert cache.end_offset_for(4, 40) == (4, 40)  # the latest ends at the log end
    cache.assign(2, 30)  # older than the latest: changes nothing
    assert cache.epochs == [1, 3, 4]


@given(st.lists(st.integers(0, 100), min_size=1, max_size=40))
def test_the_high_watermark_never_passes_an_in_sync_replica_or_goes_back(ends):
    progress = LeaderProgress(0, (0, 1, 2), (0, 1, 2), epoch_start=0, high_watermark=0,
                              now_ms=0)
    leader_end = 0
    seen = 0
    for step, end in enumerate(ends):
        leader_end = max(leader_end, end)
        progress.on_fetch(1 + step % 2, min(end, leader_end), leader_end, step)
        progress.advance(leader_end)
        followers = [p.log_end for p in progress.followers.values()]
        assert progress.high_watermark >= seen
        assert progress.high_watermark <= max(min([leader_end, *followers]), seen)
        seen = progress.high_watermark


def test_a_lagging_follower_leaves_the_isr_and_rejoins_once_caught_up():
    progress = LeaderProgress(0, (0, 1, 2), (0, 1, 2), epoch_start=10, high_watermark=10,
                              now_ms=0)
    progress.on_fetch(1, 10, 10, 100)
    progress.on_fetch(2, 10, 10, 100)
    # Broker 2 stops fetching; broker 1 keeps up under steady writes (never exactly at the end).
    for now, end in ((1000, 20), (2000, 30), (3000, 40)):
        progress.on_fetch(1, end - 10, end, now)
    assert progress.wanted_isr(40, 3000, lag_ms=2500) == (0, 1)
    progress.isr = (0, 1)
    progress.advance(40)
    assert progress.high_watermark == 30
    progress.on_fetch(2, 25, 40, 3100)  # back, but below the high-water mark
    assert progress.wanted_isr(40, 3100, lag_ms=2500) == (0, 1)
    progress.on_fetch(2, 40, 40, 3200)
    assert progress.wanted_isr(40, 3200, lag_ms=2500) == (0, 1, 2)


def test_a_follower_that_reached_the_high_watermark_joins_though_it_moved_on_since():
    # Broker 1 comes back into an ISR of (0, 2) under steady produce: its fetch at 100 meets
    # the high-water mark, but broker 2 fetches at 110 before the ISR is judged.
    progress = LeaderProgress(0, (0, 1, 2), (0, 2), epoch_start=50, high_watermark=100,
                              now_ms=0)
    progress.on_fetch(2, 100, 100, 10)
    progress.on_fetch(1, 100, 100, 20)
    progress.on_fetch(2, 110, 110, 30)
    progress.advance(110)
    assert progress.high_watermark == 110
    assert progress.wanted_isr(110, 40, lag_ms=5000) == (0, 1, 2)


def test_a_follower_that_went_back_must_reach_the_high_watermark_again():
    progress = LeaderProgress(0, (0, 1, 2), (0, 2), epoch_start=50, high_watermark=100,
                              now_ms=0)
    progress.on_fetch(1, 100, 100, 10)
    progress.on_fetch(1, 60, 100, 20)  # restarted and truncated before the ISR was written
    assert progress.wanted_isr(100, 30, lag_ms=5000) == (0, 2)
    progress.on_fetch(1, 100, 100, 40)
    assert progress.wanted_isr(100, 50, lag_ms=5000) == (0, 1, 2)


def test_a_follower_dropped_from_the_isr_rejoins_only_after_fetching_again():
    progress = LeaderProgress(0, (0, 1, 2), (0, 1, 2), epoch_start=0, high_watermark=10,
                              now_ms=0)
    for replica in (1, 2):
        progress.on_fetch(replica, 10, 10, 100)
    # The controller drops broker 2 (its lease ended): its old progress must not re-add it.
    progress.forget({2})
    progress.isr = (0, 1)
    assert progress.wanted_isr(10, 200, lag_ms=5000) == (0, 1)
    progress.on_fetch(2, 10, 10, 300)  # it is back and caught up
    assert progress.wanted_isr(10, 300, lag_ms=5000) == (0, 1, 2)
