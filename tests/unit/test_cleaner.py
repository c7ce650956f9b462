"""Compaction off the event loop: appends, reads, retention and cancellation while the cleaner
works in its thread; unreadable batches kept as they are."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from broker.log import LogConfig, PartitionLog
from broker.storage import cleaner
from kelp import recordbatch, records
from tests.batches import log_offsets, make_batch

CONFIG = LogConfig(segment_bytes=700, compacted=True, index_interval_bytes=200)


def fill(plog: PartitionLog, rounds: int = 30) -> None:
    for number in range(rounds):
        plog.append(make_batch([(b"key-%d" % ((number * 3 + i) % 7), b"v%d" % number)
                                for i in range(3)], timestamp=1_000 + number))


class Gate:
    """Stops the cleaner's worker thread inside ``_clean`` until the test opens the gate."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread: threading.Thread | None = None
        real = cleaner._clean

        def gated(*args):
            self.thread = threading.current_thread()
            self.entered.set()
            assert self.release.wait(10)
            return real(*args)

        monkeypatch.setattr(cleaner, "_clean", gated)

    async def wait_entered(self) -> None:
        with trio.fail_after(10):
            while not self.entered.is_set():
                await trio.sleep(0.005)


def leftovers(plog: PartitionLog) -> list[str]:
    return sorted(p.name for p in plog.directory.iterdir()
                  if p.name.endswith((".cleaned", ".tmp")))


async def test_appends_and_reads_go_on_while_the_cleaner_works(tmp_path, monkeypatch):
    plog = PartitionLog.open(tmp_path / "p", CONFIG)
    fill(plog)
    gate = Gate(monkeypatch)
    async with trio.open_nursery() as nursery:
        removed = []

        async def compact() -> None:
            removed.append(await plog.compact(now=10_000_000, delete_retention_ms=1_000))

        nursery.start_soon(compact)
        await gate.wait_entered()
        assert gate.thread is not threading.main_thread()
        # The event loop is free: appends land and reads answer meanwhile.
        appended = plog.append(make_batch([(b"key-0", b"during")], timestamp=5_000))
        assert (await plog.read(0, 1 << 20)).records
        gate.release.set()
    assert removed[0] > 0
    assert plog.high_watermark == appended.last_offset + 1
    last = (await plog.read(appended.base_offset, 1 << 20)).records
    assert [r.value for r in records.iter_records(last)] == [b"during"]
    assert leftovers(plog) == []
    plog.close()


async def test_a_segment_deleted_meanwhile_is_not_swapped_back(tmp_path, monkeypatch):
    plog = PartitionLog.open(tmp_path / "p", CONFIG)
    fill(plog)
    first = plog.segments[0]
    gate = Gate(monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plog.compact, 10_000_000, 1_000)
        await gate.wait_entered()
        await plog.delete_records(plog.segments[1].base_offset)
        assert first.retired and first.fd >= 0  # deleted, but the cleaner still reads it
        gate.release.set()
    assert first.fd == -1 and first not in plog.segments
    assert plog.segments[0].base_offset == plog.log_start_offset
    assert not (tmp_path / "p" / first.path.name).exists()
    assert leftovers(plog) == []
    plog.close()


async def test_cancelled_compaction_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    plog = PartitionLog.open(tmp_path / "p", CONFIG)
    fill(plog)
    before = list(plog.segments)
    offsets = await log_offsets(plog)
    gate = Gate(monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plog.compact, 10_000_000, 1_000)
        await gate.wait_entered()
        nursery.cancel_scope.cancel()
        gate.release.set()  # the thread finishes; its results must not be swapped in
    assert plog.segments == before and all(s.readers == 0 for s in before)
    assert await log_offsets(plog) == offsets
    assert leftovers(plog) == []
    plog.close()


async def test_readers_of_a_swapped_segment_finish_on_the_old_file(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", CONFIG)
    fill(plog)
    old = plog.segments[0]
    expected = old.read(0, old.size)
    with old.hold():
        assert await plog.compact(now=10_000_000, delete_retention_ms=1_000) > 0
        assert old not in plog.segments and old.retired
        assert await plog.read_range(old, 0, old.size) == expected
    assert old.fd == -1


async def test_unreadable_batches_are_kept_byte_for_byte(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", CONFIG)
    fill(plog)
    plog.close()
    # Mark the first batch gzip: its (plain) records no longer decode. The CRC is not
    # re-signed: a trusted segment is not CRC-checked on open, and the cleaner must not care.
    path = plog.segments[0].path
    data = bytearray(path.read_bytes())
    data[recordbatch.ATTRIBUTES + 1] |= 1
    header = recordbatch.parse_header(data)
    unreadable = bytes(data[: header.size])
    path.write_bytes(data)
    reopened = PartitionLog.open(tmp_path / "p", CONFIG)
    first = reopened.segments[0]
    assert await reopened.compact(now=10_000_000, delete_retention_ms=1_000) > 0
    assert reopened.segments[0] is not first and reopened.segments[0].size < first.size
    assert reopened.segments[0].read(0, header.size) == unreadable
    reopened.close()


async def test_a_segment_whose_lengths_cannot_be_walked_is_not_rewritten(tmp_path):
    plog = PartitionLog.open(tmp_path / "p", CONFIG)
    fill(plog)
    first = plog.segments[0]
    second_batch = recordbatch.parse_header(first.read(0, recordbatch.HEADER_SIZE)).size
    # A length running past the end (as a bit flip might leave): everything from there on
    # is unreadable, so the segment is kept whole rather than cut short.
    os.pwrite(first.fd, (1 << 30).to_bytes(4, "big"), second_batch + recordbatch.BATCH_LENGTH)
    await plog.compact(now=10_000_000, delete_retention_ms=1_000)
    assert plog.segments[0] is first
    assert leftovers(plog) == []
    plog.close()


async def test_a_topic_deleted_under_the_cleaner_ends_it_quietly(tmp_path, monkeypatch):
    plog = PartitionLog.open(tmp_path / "p", CONFIG)
    fill(plog)
    sealed = plog.segments[:-1]
    gate = Gate(monkeypatch)
    async with trio.open_nursery() as nursery:
        removed = []

        async def compact() -> None:
            removed.append(await plog.compact(now=10_000_000, delete_retention_ms=1_000))

        nursery.start_soon(compact)
        await gate.wait_entered()
        plog.retire()  # what topic deletion does, then it moves the directory away
        (tmp_path / "p").rename(tmp_path / "p.deleted")
        gate.release.set()
    assert removed == [0]
    assert all(segment.fd == -1 for segment in sealed)  # the holds ended, descriptors closed
    assert not [p for p in (tmp_path / "p.deleted").iterdir() if p.name.endswith(".cleaned")]
