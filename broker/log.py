"""A partition's log: the front of its storage (Kafka's ``UnifiedLog``).

One ``PartitionLog`` per partition directory, over the layers in ``broker.storage``: segments
(``segment``), opening and checkpoints (``loader``), compaction (``cleaner``), producer
state (``producer_state``) and timestamp search (``search``). What stays here is what ties
them together:

- append: each batch is validated (magic, length, CRC-32C, Kafka's LogValidator checks,
  producer sequences), gets its base offset and leader epoch, and is written to the active
  segment *before* anyone is told it exists: a process crash after the write loses nothing
  acknowledged. The high-water mark is everything written, synced or not.
- durability: ``wait_durable`` adds ``fdatasync`` with group commit (appends that arrive while
  a sync runs share the next one; the syncs that several partitions need at once share a
  round of ``broker.storage.syncer``, submitted to the kernel's AIO); at most once a second a
  sync also checkpoints the recovery point and producer snapshot (hints for the next start,
  not part of an acknowledgement).
- reads, by offset (whole batches) or by timestamp; waiting readers register an append
  listener (a per-partition parking spot signalled by every append), never a sleep loop.
- transactions: the coordinator's COMMIT and ABORT markers (``append_marker``), the last
  stable offset below which read_committed readers read, and the aborted transactions they
  are told to skip (the table in ``broker.producers`` keeps both).
- retention and DeleteRecords (whole segments below the log start go), and the partition's
  background task (``maintain``): interval flushes, retention, compaction, producer expiry.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio
from kio.schema.errors import ErrorCode

from broker import metrics
from broker.producers import (
    AbortedTxn,
    ProducerError,
    ProducerStateTable,
    is_control,
    marker_key,
    marker_kind,
    marker_value,
)
from broker.storage import cleaner, loader, search
from broker.storage.config import INLINE_READ_LIMIT, IO_LIMITER, LogConfig, now_ms, topic_partition
from broker.storage.epochs import EpochCache
from broker.storage.producer_state import ProducerStateManager, Snapshot
from broker.storage.segment import Segment, held
from broker.storage.syncer import SYNCER, SyncJob
from kelp import batchcheck, files, recordbatch, records
from kelp.recordbatch import CorruptBatch

# How often a sync also writes the checkpoints (see ``wait_durable``).
CHECKPOINT_INTERVAL_S = 1.0

__all__ = ["AppendResult", "LogConfig", "MessageTooLarge", "OffsetOutOfRange", "PartitionLog",
           "ReadResult", "Segment", "held", "now_ms", "topic_partition"]

log = logging.getLogger("kelp.broker.log")


@dataclass(frozen=True)
class AppendResult:
    base_offset: int
    last_offset: int
    log_append_time: int  # -1 unless the log stamps LogAppendTime
    # A ticket for ``wait_durable``: the log's write counter after this append.
    write_mark: int


@dataclass(frozen=True)
class ReadResult:
    records: bytes
    high_watermark: int
    log_start_offset: int
    # Where ``records`` lie: the segment file (its path, device and inode, taken while the
    # segment was held) and the byte position; None when there are no records.
    location: FileLocation | None = None


@dataclass(frozen=True)
class FileLocation:
    path: str
    device: int
    inode: int
    position: int


class OffsetOutOfRange(Exception):
    pass


class MessageTooLarge(ValueError):
    pass


class PartitionLog:
    def __init__(self, directory: Path, config: LogConfig, loaded: loader.LoadedLog) -> None:
        self.directory = directory
        self.config = config
        self.segments: list[Segment] = loaded.segments
        self._segment_bases = [segment.base_offset for segment in self.segments]
        self._log_start = loaded.log_start
        # Group commit bookkeeping: bytes written so far vs. bytes known to be on disk.
        self._written = 0
        self._synced = 0
        self._unsynced: dict[int, Segment] = {}
        self._dir_dirty = loaded.created
        self._sync_running = False
        self._sync_done = trio.Event()
        self._next_checkpoint = 0.0  # trio time when a sync next writes the checkpoints
        self._append_listeners: set[Callable[[], None]] = set()
        self._producer_state = ProducerStateManager(directory)
        self._unsynced_messages = 0
        self._flush_wanted = trio.Event()
        self._closed = False
        # Worker threads writing in this directory (syncs, checkpoints, the cleaner). A deleted
        # topic's directory is renamed only once they are done: they name files by path, and a
        # topic re-created under the same name would otherwise get their writes.
        self._io_running = 0
        self._io_done = trio.Event()
        # Set only in a cluster (``broker.replication``): the epoch this broker leads in, stamped
        # into every batch it writes; the high-water mark the replicas agree on (None for a lone
        # broker, whose high-water mark is its log end); the leader-epoch cache, built from the
        # batch headers when first asked for.
        self.leader_epoch = 0
        self.replicated_hwm: int | None = None
        self._epochs: EpochCache | None = None

    @classmethod
    def open(cls, directory: Path, config: LogConfig | None = None) -> PartitionLog:
        """Open (or create) a partition directory, recovering its segments."""
        config = config or LogConfig()
        directory.mkdir(parents=True, exist_ok=True)
        plog = cls(directory, config, loader.load(directory, config))
        plog._producer_state.load(plog.log_start_offset, plog.log_end_offset,
                                  plog._headers_from)
        plog._checkpoint(durable=False)
        return plog

    # -- state ----------------------------------------------------------------------------

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def log_end_offset(self) -> int:
        """The next offset to be assigned: includes every written batch, synced or not."""
        return self.active.next_offset

    @property
    def high_watermark(self) -> int:
        """Consumers read below this: the log end for a lone broker, in a cluster the offset
        every in-sync replica has reached."""
        end = self.active.next_offset
        return end if self.replicated_hwm is None else min(self.replicated_hwm, end)

    def visible_end(self, committed_only: bool) -> int | None:
        """Where a consumer's read stops: the last stable offset for read_committed, the
        replicated high-water mark in a cluster, or None (the log end) for a lone broker."""
        if committed_only:
            return self.last_stable_offset
        return None if self.replicated_hwm is None else self.high_watermark

    def set_high_watermark(self, offset: int) -> None:
        """The replicas' high-water mark moved (``broker.replication``): readers parked on
        this partition look again."""
        if offset != self.replicated_hwm:
            self.replicated_hwm = offset
            for listener in list(self._append_listeners):
                listener()

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    @property
    def producers(self) -> ProducerStateTable:
        return self._producer_state.table

    @property
    def unflushed_bytes(self) -> int:
        """Bytes written and not yet known to be fdatasync'ed."""
        return self._written - self._synced

    @property
    def last_stable_offset(self) -> int:
        """read_committed readers read below this: the first offset of the oldest open
        transaction, or the high-water mark."""
        first = self.producers.first_unstable_offset()
        # Retention may have deleted an open transaction's first batches: never below the start.
        hwm = self.high_watermark
        return hwm if first is None else min(max(first, self._log_start), hwm)

    def aborted_between(self, start: int, end: int) -> list[AbortedTxn]:
        return self.producers.aborted_between(start, end)

    # -- append ---------------------------------------------------------------------------

    def append_marker(self, producer_id: int, epoch: int, kind: int,
                      coordinator_epoch: int = 0) -> AppendResult:
        """Write a COMMIT or ABORT control batch ending ``producer_id``'s transaction here.

        Only the transaction coordinator calls this; clients may not write control batches.
        """
        if self._closed:
            raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
        now = now_ms()
        batch = bytearray(records.build_batch([(marker_key(kind), marker_value(
            coordinator_epoch))], now))
        recordbatch.set_producer(batch, producer_id, epoch,
                                 recordbatch.TRANSACTIONAL_BIT | recordbatch.CONTROL_BIT)
        if self.active.size >= self.config.segment_bytes:
            self._roll()
        segment = self.active
        offset = segment.next_offset
        recordbatch.rewrite_offset_and_epoch(batch, 0, offset, self.leader_epoch)
        segment.append(batch, [0], self.config.index_interval_bytes, now)
        self._note_epoch(self.leader_epoch, offset)
        self.producers.end_txn(producer_id, epoch, kind, offset, now)
        return self._appended(segment, len(batch), 1, offset, offset, -1)

    def append(self, records: bytes) -> AppendResult:
        """Validate, assign offsets and write ``records`` (one or more v2 batches).

        Synchronous on purpose: there is no checkpoint between assigning offsets and writing,
        so appends to one partition land in the order they are called. Raises ``CorruptBatch``
        (header, length, CRC), ``batchcheck.BatchRejected`` (what Kafka's LogValidator refuses),
        ``MessageTooLarge`` or ``ProducerError``.
        """
        if self._closed:
            raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
        if not records:
            raise CorruptBatch("empty record set")
        buffer = bytearray(records)
        batches = list(recordbatch.iter_batches(buffer))
        max_timestamps = []
        for position, header in batches:
            if header.size > self.config.max_message_bytes:
                raise MessageTooLarge(f"record batch of {header.size} bytes exceeds "
                                      f"max.message.bytes {self.config.max_message_bytes}")
            # Kafka's LogValidator: counts, producer fields, codec, every record parsed to the
            # end (a compressed body within a bound), keys on compacted topics.
            max_timestamps.append(batchcheck.check_batch(
                memoryview(buffer)[position : position + header.size], header,
                compacted=self.config.compacted))
        retried = [self.producers.check(header) for _, header in batches]
        if any(retried):
            if not all(retried):
                raise ProducerError(ErrorCode.out_of_order_sequence_number,
                                    "a request mixing retried and new batches")
            # A retry of batches already stored: answer with their offsets, write nothing.
            first, last = retried[0], retried[-1]
            assert first is not None and last is not None
            return AppendResult(first.base_offset, last.last_offset, -1, self._written)
        active = self.active
        if active.size >= self.config.segment_bytes or (
                active.size and now_ms() - active.first_append_ms >= self.config.segment_ms):
            self._roll()
        segment = self.active
        first_offset = next_offset = segment.next_offset
        append_time = now_ms() if self.config.log_append_time else -1
        self._note_epoch(self.leader_epoch, first_offset)
        for (position, header), max_timestamp in zip(batches, max_timestamps, strict=True):
            recordbatch.rewrite_offset_and_epoch(buffer, position, next_offset,
                                                 self.leader_epoch)
            if append_time >= 0:
                recordbatch.stamp_log_append_time(buffer, position, header, append_time)
            elif header.max_timestamp != max_timestamp and not (
                    header.attributes & recordbatch.TIMESTAMP_TYPE_BIT):
                recordbatch.set_max_timestamp(buffer, position, header, max_timestamp)
            next_offset += header.last_offset_delta + 1
        append_ms = now_ms()
        stored = segment.append(buffer, [position for position, _ in batches],
                                self.config.index_interval_bytes, append_ms)
        for header in stored:
            self.producers.record(header, append_ms)
        return self._appended(segment, len(buffer),
                              sum(header.record_count for header in stored), first_offset,
                              next_offset - 1, append_time)

    def append_replica(self, data: bytes) -> AppendResult:
        """Write batches copied from the leader, byte for byte, offsets and epochs as the
        leader gave them (a follower's append). Each must start where the log ends and pass
        its CRC: the leader validated them, this checks only that they arrived whole."""
        if self._closed:
            raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
        buffer = bytearray(data)
        batches = list(recordbatch.iter_batches(buffer))
        if not batches:
            raise CorruptBatch("empty record set")
        expected = self.log_end_offset
        for position, header in batches:
            if header.base_offset != expected:
                raise CorruptBatch(f"replicated batch at offset {header.base_offset}, the log "
                                   f"ends at {expected}")
            if not recordbatch.crc_matches(buffer, position, header):
                raise CorruptBatch(f"replicated batch at offset {header.base_offset} fails "
                                   f"its CRC")
            expected = header.last_offset + 1
        active = self.active
        if active.size >= self.config.segment_bytes or (
                active.size and now_ms() - active.first_append_ms >= self.config.segment_ms):
            self._roll()
        segment = self.active
        append_ms = now_ms()
        stored = segment.append(buffer, [position for position, _ in batches],
                                self.config.index_interval_bytes, append_ms)
        for (position, _), header in zip(batches, stored, strict=True):
            self._note_epoch(header.partition_leader_epoch, header.base_offset)
            if is_control(header):
                kind = next((marker_kind(record.key) for record in records.iter_records(
                    bytes(buffer[position : position + header.size]))), None)
                if kind is not None:
                    self.producers.end_txn(header.producer_id, header.producer_epoch, kind,
                                           header.base_offset, header.max_timestamp)
            else:
                self.producers.record(header, append_ms)
        return self._appended(segment, len(buffer),
                              sum(header.record_count for header in stored),
                              stored[0].base_offset, stored[-1].last_offset, -1)

    # -- leader epochs and truncation (a cluster's replicas) ------------------------------

    def epoch_cache(self) -> EpochCache:
        """At which offset each leader epoch began (built from the batch headers once)."""
        if self._epochs is None:
            self._epochs = EpochCache.from_headers(
                (header.partition_leader_epoch, header.base_offset)
                for header, _ in self._headers_from(self.log_start_offset))
        return self._epochs

    def _note_epoch(self, epoch: int, start: int) -> None:
        if self._epochs is not None:
            self._epochs.assign(epoch, start)

    def truncate_to(self, offset: int) -> int:
        """Cut the log at ``offset`` (a follower dropping what its leader never had); a cut
        inside a batch drops that whole batch. Returns the new log end."""
        if self._closed:
            raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
        offset = max(offset, self._log_start)
        if offset >= self.log_end_offset:
            return self.log_end_offset
        while len(self.segments) > 1 and self.segments[-1].base_offset >= offset:
            segment = self.segments.pop()
            self._segment_bases.pop()
            self._unsynced.pop(segment.base_offset, None)
            segment.delete()
        segment = self.active
        position = segment.find(offset)
        if position is not None:
            segment.truncate(position, self.config.index_interval_bytes)
            self._unsynced[segment.base_offset] = segment
        self._dir_dirty = True
        if self._epochs is not None:
            self._epochs.truncate_from(self.log_end_offset)
        if self.replicated_hwm is not None:
            self.replicated_hwm = min(self.replicated_hwm, self.log_end_offset)
        # Producer state past the cut is wrong: rebuilt from its snapshot (if not past the
        # cut) and the headers after it.
        self._producer_state = ProducerStateManager(self.directory)
        self._producer_state.load(self._log_start, self.log_end_offset, self._headers_from)
        point = loader.read_checkpoint(self.directory / loader.RECOVERY_POINT)
        if point is None or point > self.log_end_offset:
            loader.write_checkpoint(self.directory / loader.RECOVERY_POINT, self.log_end_offset,
                                    durable=False)
        log.warning("log truncated", extra={"dir": str(self.directory),
                                            "log_end": self.log_end_offset})
        return self.log_end_offset

    def _appended(self, segment: Segment, size: int, record_count: int, first_offset: int,
                  last_offset: int, append_time: int) -> AppendResult:
        """Account for bytes just written to ``segment`` and wake waiting readers."""
        self._written += size
        self._unsynced[segment.base_offset] = segment
        flush_messages = self.config.flush_messages
        if flush_messages is not None:
            self._unsynced_messages += record_count
            if self._unsynced_messages >= flush_messages:
                self._unsynced_messages = 0
                self._flush_wanted.set()
        for listener in list(self._append_listeners):
            listener()
        return AppendResult(first_offset, last_offset, append_time, self._written)

    def _roll(self) -> None:
        old = self.active
        self._unsynced[old.base_offset] = old
        self.segments.append(Segment.create(self.directory, old.next_offset))
        self._segment_bases.append(old.next_offset)
        self._dir_dirty = True
        log.debug("rolled segment", extra={"dir": str(self.directory), "base": old.next_offset})

    @property
    def synced_mark(self) -> int:
        """The write counter up to which everything has been fdatasync'ed."""
        return self._synced

    async def wait_durable(self, write_mark: int) -> None:
        """Return once every byte up to ``write_mark`` has been fdatasync'ed.

        Group commit: one caller runs the sync for everything written so far while the others
        wait for it; callers whose bytes arrived during that sync share the next one.
        """
        while self._synced < write_mark:
            if self._closed:
                raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
            if self._sync_running:
                await self._sync_done.wait()
                continue
            self._sync_running = True
            target, recovery_point = self._written, self.log_end_offset
            # The checkpoints (producer snapshot, recovery point) ride along at most every
            # CHECKPOINT_INTERVAL_S: writing them cost more than the fsync itself, on every
            # acknowledgement's path; a staler one only means more of the log to check on start.
            snapshot = None
            if trio.current_time() >= self._next_checkpoint:
                snapshot = self._producer_state.snapshot(recovery_point)
                self._next_checkpoint = trio.current_time() + CHECKPOINT_INTERVAL_S
            segments = list(self._unsynced.values())
            self._unsynced.clear()
            sync_dir = self._dir_dirty
            self._dir_dirty = False
            try:
                # Held: retention may delete a segment meanwhile, but not close it under us.
                with contextlib.ExitStack() as holds, self._writing():
                    for segment in segments:
                        holds.enter_context(held(segment))
                    started = time.perf_counter()
                    after = (functools.partial(self._after_sync, sync_dir, recovery_point,
                                               snapshot)
                             if sync_dir or snapshot is not None else None)
                    await SYNCER.sync(SyncJob([segment.fd for segment in segments], after))
                    metrics.FSYNC_SECONDS.observe(time.perf_counter() - started)
                metrics.GROUP_COMMIT_BYTES.observe(max(target - self._synced, 0))
                self._synced = max(self._synced, target)
            except BaseException:
                for segment in segments:  # not durable: the next sync must retry them
                    if not segment.retired:
                        self._unsynced[segment.base_offset] = segment
                self._dir_dirty = self._dir_dirty or sync_dir
                if snapshot is not None:
                    self._producer_state.write_failed()
                    self._next_checkpoint = 0.0  # the next sync tries again
                raise
            finally:
                self._sync_running = False
                done, self._sync_done = self._sync_done, trio.Event()
                done.set()

    def _after_sync(self, sync_dir: bool, recovery_point: int,
                    producer_snapshot: Snapshot | None) -> None:
        """In a worker thread once the segments are durable: the directory (a segment was
        created) and, at most once a CHECKPOINT_INTERVAL_S, the checkpoints."""
        if sync_dir:
            files.sync_directory(self.directory)
        if producer_snapshot is None:
            return
        # Neither is fsynced: a stale one only means more checking and rebuilding on start.
        self._producer_state.write(producer_snapshot)
        loader.write_checkpoint(self.directory / loader.RECOVERY_POINT, recovery_point,
                                durable=False)

    def _checkpoint(self, *, durable: bool) -> None:
        """Record everything written as recovered: producer snapshot, then recovery point."""
        self._producer_state.write(self._producer_state.snapshot(self.log_end_offset))
        loader.write_checkpoint(self.directory / loader.RECOVERY_POINT, self.log_end_offset,
                                durable=durable)

    # -- waiting readers --------------------------------------------------------------------

    def add_append_listener(self, listener: Callable[[], None]) -> None:
        self._append_listeners.add(listener)

    def remove_append_listener(self, listener: Callable[[], None]) -> None:
        self._append_listeners.discard(listener)

    # -- read -----------------------------------------------------------------------------

    def _locate(self, offset: int) -> tuple[Segment, int] | None:
        """(segment, file position) of the batch holding ``offset``, or None at the end."""
        if offset < self.log_start_offset or offset > self.log_end_offset:
            raise OffsetOutOfRange(
                f"offset {offset} outside [{self.log_start_offset}, {self.log_end_offset}]"
            )
        number = bisect.bisect_right(self._segment_bases, offset) - 1
        for segment in self.segments[max(number, 0) :]:
            position = segment.find(offset)
            if position is not None:
                return segment, position
        return None

    def bytes_after(self, offset: int, end: int | None = None) -> int:
        """How many bytes a read from ``offset`` could return (for Fetch min_bytes); with
        ``end`` (a batch boundary, such as the last stable offset), only those below it."""
        if end is not None and end <= offset:
            return 0
        located = self._locate(offset)
        if located is None:
            return 0
        segment, position = located
        number = self.segments.index(segment)
        total = segment.size - position + sum(s.size for s in self.segments[number + 1 :])
        return total - self.bytes_after(end) if end is not None else total

    async def read(self, offset: int, max_bytes: int, *, at_least_one: bool = True,
                   end: int | None = None) -> ReadResult:
        """Whole batches from the one holding ``offset``, within ``max_bytes``; a first batch
        larger than that comes whole when ``at_least_one`` (Kafka's rule for the first
        partition with data in a fetch), else nothing does. With ``end`` (the last stable
        offset, for read_committed), no batch at or past it.

        Raises ``OffsetOutOfRange`` below the log start or above the high-water mark.
        """
        if self._closed:
            raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
        hwm, start = self.high_watermark, self.log_start_offset
        if end is not None and offset >= end:
            self._locate(offset)  # still out of range below the log start or past the end
            return ReadResult(b"", hwm, start)
        located = self._locate(offset)
        if located is None:
            return ReadResult(b"", hwm, start)
        segment, position = located
        size = min(max(max_bytes, recordbatch.PEEK_SIZE), segment.size - position)
        with held(segment):
            data = await _pread(segment, position, size)
            # Cut at the last whole batch (below ``end``); if even the first is larger than
            # max_bytes, it alone (it is below ``end``: it holds ``offset``).
            cut = 0
            while cut + recordbatch.LENGTH_PREFIX <= len(data):
                base, batch_size = recordbatch.peek(data, cut)
                if (end is not None and base >= end) or \
                        cut + batch_size > min(len(data), max_bytes):
                    break
                cut += batch_size
            if cut == 0:
                data = (await _pread(segment, position, recordbatch.peek(data)[1])
                        if at_least_one else b"")
            elif cut < len(data):
                data = data[:cut]
            location = None
            if data:
                stat = os.fstat(segment.fd)  # held: the descriptor is still open
                location = FileLocation(str(segment.path), stat.st_dev, stat.st_ino, position)
        return ReadResult(data, hwm, start, location)

    def segment_by_serial(self, serial: int) -> Segment | None:
        return next((s for s in self.segments if s.serial == serial), None)

    async def read_range(self, segment: Segment, position: int, size: int) -> bytes:
        """Exactly the bytes ``[position, position + size)`` of ``segment`` (the caller checked
        the bounds against ``segment.size``); the segment may be deleted meanwhile."""
        with held(segment):
            return await _pread(segment, position, size)

    def _headers_from(self, offset: int) -> Iterator[tuple[recordbatch.BatchHeader, int | None]]:
        """(header, marker kind) of each batch from the one holding ``offset`` to the end of
        the log; the kind (COMMIT or ABORT, from the batch's record) only for a control batch."""
        located = self._locate(offset)
        if located is not None:
            for segment, position, header in search.walk_from(self.segments, located[0],
                                                              offset):
                kind = None
                if is_control(header):
                    batch = segment.read(position, header.size)
                    kind = next((marker_kind(record.key)
                                 for record in records.iter_records(batch)), None)
                yield header, kind

    async def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """The first record (offset, timestamp) whose timestamp is >= ``timestamp``."""
        return await search.offset_for_timestamp(self.segments, self.log_start_offset,
                                                 timestamp)

    async def max_timestamp_offset(self) -> tuple[int, int] | None:
        """The (offset, timestamp) of the record with the largest timestamp (the earliest
        such record on ties), as ListOffsets' MAX_TIMESTAMP asks."""
        if self.log_end_offset <= self.log_start_offset:
            return None
        return await search.max_timestamp_offset(self.segments, self.log_start_offset)

    # -- background maintenance -------------------------------------------------------------

    async def maintain(self, retention_check_s: float) -> None:
        """The partition's background work until cancelled: interval flushes and retention."""
        next_retention = trio.current_time() + retention_check_s
        while True:
            flush_ms = self.config.flush_ms
            wake = next_retention
            if flush_ms is not None:
                wake = min(wake, trio.current_time() + flush_ms / 1000)
            with trio.move_on_at(wake):
                await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            if not self.config.sync_on_ack and self._synced < self._written:
                await self.wait_durable(self._written)
            if trio.current_time() >= next_retention:
                if self.config.compacted:
                    await self.compact(now_ms(), self.config.delete_retention_ms)
                if self.config.delete_by_retention:
                    self.apply_retention(now_ms())
                self.producers.expire(now_ms(), self.config.producer_id_expiration_ms)
                next_retention = trio.current_time() + retention_check_s

    def apply_retention(self, now: int) -> int:
        """Delete whole segments past ``retention.ms`` or beyond ``retention.bytes``."""
        deleted = 0
        retention_ms, retention_bytes = self.config.retention_ms, self.config.retention_bytes
        if retention_ms >= 0:
            active = self.active
            if not active.empty and active.max_timestamp < now - retention_ms:
                self._roll()  # everything in the active segment expired: seal it to delete it
            while len(self.segments) > 1 and self.segments[0].max_timestamp < now - retention_ms:
                self._drop_oldest("retention.ms")
                deleted += 1
        if retention_bytes >= 0:
            while (len(self.segments) > 1
                   and self.size_bytes - self.segments[0].size >= retention_bytes):
                self._drop_oldest("retention.bytes")
                deleted += 1
        if deleted:
            self._log_start = max(self._log_start, self.segments[0].base_offset)
            self.producers.forget_below(self._log_start)
            loader.write_checkpoint(self.directory / loader.LOG_START_OFFSET, self._log_start,
                                    durable=False)
        return deleted

    async def compact(self, now: int, delete_retention_ms: int) -> int:
        """Keep only the latest record per key in sealed segments; returns records removed.

        The cleaner works in a worker thread (appends only touch the active segment); here
        each verified result is swapped in for its segment if that is still part of the log.
        Readers in flight keep reading the old file until they finish. Tombstones (null
        values) go once older than ``delete_retention_ms``.
        """
        # Only below the last stable offset: an open transaction may still abort.
        stable = self.last_stable_offset
        sealed = [s for s in self.segments[:-1] if s.next_offset <= stable]
        if not sealed or self._closed:
            return 0
        removed = 0
        try:
            with self._writing():
                cleaning = cleaner.cleaned(sealed, now - delete_retention_ms,
                                           self.config.index_interval_bytes,
                                           list(self.producers.aborted))
                async with cleaning as results:
                    for result in results:
                        if self._closed or result.old not in self.segments:
                            continue  # deleted meanwhile (retention, DeleteRecords, the topic)
                        self.segments[self.segments.index(result.old)] = result.swap_in()
                        self._unsynced.pop(result.old.base_offset, None)  # new file is synced
                        self._dir_dirty = True  # and renamed
                        removed += result.removed
        except OSError:
            if not self._closed:
                raise
            return 0  # the topic was deleted (its directory moved away) under the cleaner
        if removed:
            log.info("compacted", extra={"dir": str(self.directory), "removed": removed})
        return removed

    def _drop_oldest(self, reason: str) -> None:
        segment = self.segments.pop(0)
        self._segment_bases.pop(0)
        self._unsynced.pop(segment.base_offset, None)
        segment.delete()
        log.info("deleted segment", extra={"dir": str(self.directory),
                                           "base": segment.base_offset, "reason": reason})

    async def delete_records(self, before: int) -> int:
        """Move the log start to ``before`` (-1: the high-water mark); returns the new start.

        Raises ``OffsetOutOfRange`` above the high-water mark. Whole segments below the new
        start are deleted; the checkpoint is durable before the call returns.
        """
        if before == -1:
            before = self.high_watermark
        if before < 0 or before > self.high_watermark:
            raise OffsetOutOfRange(f"offset {before} outside [0, {self.high_watermark}]")
        if before > self._log_start:
            if self._closed:
                raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
            self._log_start = before
            path = self.directory / loader.LOG_START_OFFSET
            with self._writing():
                await trio.to_thread.run_sync(
                    lambda: loader.write_checkpoint(path, before, durable=True),
                    limiter=IO_LIMITER)
            while len(self.segments) > 1 and self.segments[0].next_offset <= before:
                self._drop_oldest("delete-records")
            self.producers.forget_below(self._log_start)
        return self._log_start

    # -- closing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Count a worker thread that writes in this directory while the block runs."""
        self._io_running += 1
        try:
            yield
        finally:
            self._io_running -= 1
            if not self._io_running:
                done, self._io_done = self._io_done, trio.Event()
                done.set()

    async def wait_writes_done(self) -> None:
        """Until no worker thread writes in this directory (call after ``retire``, which
        stops new ones from starting)."""
        while self._io_running:
            await self._io_done.wait()

    def retire(self) -> None:
        """Stop serving (the topic is deleted): descriptors close after in-flight reads."""
        self._closed = True
        for segment in self.segments:
            segment.retire()

    def close(self) -> None:
        """Close files; a clean close records everything as recovered (after an fsync)."""
        if self._closed:
            return
        self._closed = True
        try:
            for segment in self._unsynced.values():
                segment.sync()
            self._checkpoint(durable=True)
        finally:
            for segment in self.segments:
                segment.close()


async def _pread(segment: Segment, position: int, size: int) -> bytes:
    """``size`` bytes at ``position`` of a held segment; large reads in a worker thread."""
    if size <= INLINE_READ_LIMIT:
        return segment.read(position, size)
    return await trio.to_thread.run_sync(segment.read, position, size, limiter=IO_LIMITER)
