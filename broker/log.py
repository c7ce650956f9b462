"""A partition's log: segment files of v2 record batches, stored byte for byte.

One ``PartitionLog`` per partition directory. Appends validate each batch (magic, length,
CRC-32C), rewrite only its base offset and leader epoch, and write it to the active segment
*before* anyone is told it exists: a process crash after the write loses nothing acknowledged.
``wait_durable`` adds ``fdatasync`` with group commit (appends that arrive while a sync runs
share the next one). The high-water mark is everything written, synced or not.

Files per partition::

    00000000000000000000.log        segments named by base offset
    00000000000000000000.index      sparse offset -> position index (see ``index``)
    00000000000000000000.timeindex  sparse max-timestamp -> offset index
    recovery-point                  offset below which everything was fsynced
    log-start-offset                first offset readers may see (DeleteRecords, retention)

Recovery is a first-class path (``open``): segments wholly below the recovery point keep
their indexes (rebuilt if damaged); the rest are scanned batch by batch with CRC checks, their
indexes rebuilt, and a torn or corrupt tail is cut (with everything after it).

Waiting readers register an append listener (a per-partition parking spot signalled by every
append) — never a sleep loop.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import logging
import os
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio
from kio.schema.errors import ErrorCode

from broker.index import SparseIndex
from broker.producers import DEFAULT_EXPIRATION_MS, ProducerError, ProducerStateTable
from kelp import batchcheck, recordbatch, records
from kelp.recordbatch import CorruptBatch

log = logging.getLogger("kelp.broker.log")

SEGMENT_SUFFIX = ".log"
RECOVERY_POINT = "recovery-point"
PRODUCER_SNAPSHOT = "producer-state.json"
LOG_START_OFFSET = "log-start-offset"
# Enough of a batch header to walk the log: base offset, length, ..., lastOffsetDelta.
_WALK = struct.Struct(">qi")
_WALK_SIZE = 27
# Large reads and every fsync leave the event loop; small reads are cheaper inline.
_INLINE_READ_LIMIT = 64 * 1024
_io_limiter = trio.CapacityLimiter(8)
# Every Segment object gets a serial number unique in this process: the read sidecar names a
# segment by it (with a random cookie), so a compacted segment (a new object) gets a new name.
_segment_serials = itertools.count(1)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{SEGMENT_SUFFIX}"


@dataclass(frozen=True)
class LogConfig:
    """A partition's settings, from its topic's configs over the broker's defaults.

    Durability: by default ``acks=-1`` waits for fdatasync (group commit). Setting
    ``flush_ms`` or ``flush_messages`` switches a topic to the interval policy, as in Kafka:
    acknowledgements no longer wait for fsync; a background flusher syncs at least every
    ``flush_ms`` and after every ``flush_messages`` records. Either way every acknowledged
    record has been written to the segment file, so a process crash loses nothing.
    """

    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * 24 * 3600 * 1000  # roll a segment this long after its first append
    index_interval_bytes: int = 4096
    retention_ms: int = 7 * 24 * 3600 * 1000  # -1: keep forever
    retention_bytes: int = -1  # -1: no size limit
    flush_ms: int | None = None
    flush_messages: int | None = None
    # Compaction removes whole batches, so only compacted logs may skip offsets between them.
    compacted: bool = False
    # message.timestamp.type=LogAppendTime: the broker stamps each batch as it appends it.
    log_append_time: bool = False
    max_message_bytes: int = 1024 * 1024 + 12  # largest batch a producer may append
    compact_and_delete: bool = False  # cleanup.policy=compact,delete: retention applies too
    delete_retention_ms: int = 24 * 3600 * 1000  # how long compaction keeps tombstones
    # A broker setting (Kafka's producer.id.expiration.ms): idle producers' state is dropped.
    producer_id_expiration_ms: int = DEFAULT_EXPIRATION_MS

    @property
    def sync_on_ack(self) -> bool:
        return self.flush_ms is None and self.flush_messages is None


@dataclass
class Segment:
    """One segment file with its sparse indexes and summary."""

    base_offset: int
    path: Path
    fd: int
    offset_index: SparseIndex
    time_index: SparseIndex
    size: int = 0
    next_offset: int = -1
    max_timestamp: int = -1
    _indexed_position: int = field(default=-(1 << 62))
    # Wall-clock ms of the first append (the file's mtime for a recovered segment): segment.ms.
    first_append_ms: int = -1
    # Reads in flight: a deleted segment's file descriptor closes only once they finish.
    readers: int = 0
    retired: bool = False
    serial: int = field(default_factory=lambda: next(_segment_serials))
    cookie: int = field(default_factory=lambda: secrets.randbits(32))

    def __post_init__(self) -> None:
        if self.next_offset < 0:
            self.next_offset = self.base_offset

    @property
    def empty(self) -> bool:
        return self.size == 0

    def note_batch(self, position: int, header: recordbatch.BatchHeader, index_interval: int,
                   *, update_indexes: bool = True) -> None:
        """Account for a batch written (or found) at ``position``."""
        self.next_offset = header.last_offset + 1
        self.size = position + header.size
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
            if update_indexes:
                self.time_index.append(header.max_timestamp, header.base_offset)
        if update_indexes and position - self._indexed_position >= index_interval:
            self.offset_index.append(header.base_offset, position)
            self._indexed_position = position

    def find(self, offset: int) -> int | None:
        """File position of the batch holding ``offset``, or None past the segment's end."""
        if offset >= self.next_offset:
            return None
        entry = self.offset_index.floor(offset)
        position = self.offset_index.values[entry] if entry >= 0 else 0
        while position < self.size:
            head = os.pread(self.fd, _WALK_SIZE, position)
            base, length = _WALK.unpack_from(head)
            (last_delta,) = struct.unpack_from(">i", head, 23)
            if base + last_delta >= offset:
                return position
            position += length + recordbatch.LENGTH_PREFIX
        return None

    def close(self) -> None:
        os.close(self.fd)
        self.offset_index.close()
        self.time_index.close()

    def delete(self) -> None:
        """Remove the files now; close the descriptor when the last reader is done."""
        self.path.unlink(missing_ok=True)
        self.offset_index.delete()
        self.time_index.delete()
        self.retire()

    def retire(self) -> None:
        """Stop using this segment object; its descriptor closes after the last reader."""
        self.retired = True
        self.offset_index.close()
        self.time_index.close()
        if self.readers == 0:
            os.close(self.fd)

    def batches(self) -> Iterator[tuple[int, bytes]]:
        """(position, bytes) of every batch, one pread each (for cleaning, in a thread)."""
        position = 0
        while position + recordbatch.LENGTH_PREFIX <= self.size:
            _base, length = _WALK.unpack_from(os.pread(self.fd, 12, position))
            end = position + length + recordbatch.LENGTH_PREFIX
            if length < recordbatch.HEADER_SIZE - recordbatch.LENGTH_PREFIX or end > self.size:
                log.warning("unreadable batch length; not reading further", extra={
                    "segment": str(self.path), "position": position, "length": length})
                return
            yield position, os.pread(self.fd, end - position, position)
            position = end


@contextlib.contextmanager
def held(segment: Segment) -> Iterator[Segment]:
    """Keep ``segment``'s file descriptor open while the block runs, even if retention or
    compaction deletes the segment meanwhile (its bytes stay readable until then)."""
    segment.readers += 1
    try:
        yield segment
    finally:
        segment.readers -= 1
        if segment.retired and segment.readers == 0:
            os.close(segment.fd)


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


class OffsetOutOfRange(Exception):
    pass


class MessageTooLarge(ValueError):
    pass


def now_ms() -> int:
    return int(time.time() * 1000)


def _read_checkpoint(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _write_checkpoint(path: Path, value: int, *, sync: bool) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as out:
        out.write(f"{value}\n")
        if sync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)


class PartitionLog:
    def __init__(self, directory: Path, config: LogConfig | None = None) -> None:
        self.directory = directory
        self.config = config or LogConfig()
        self.segments: list[Segment] = []
        self._segment_bases: list[int] = []
        self._log_start = 0
        # Group commit bookkeeping: bytes written so far vs. bytes known to be on disk.
        self._written = 0
        self._synced = 0
        self._unsynced: dict[int, Segment] = {}
        self._dir_dirty = False
        self._sync_running = False
        self._sync_done = trio.Event()
        self._append_listeners: set[Callable[[], None]] = set()
        self.producers = ProducerStateTable()
        self._unsynced_messages = 0
        self._flush_wanted = trio.Event()
        self._closed = False

    # -- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, config: LogConfig | None = None) -> PartitionLog:
        """Open (or create) a partition directory, recovering its segments."""
        directory.mkdir(parents=True, exist_ok=True)
        plog = cls(directory, config)
        plog._recover()
        return plog

    def _recover(self) -> None:
        # Leftovers of an interrupted checkpoint write or compaction: the originals are whole.
        for stale in [*self.directory.glob("*.tmp"), *self.directory.glob("*.cleaned")]:
            stale.unlink()
        recovery_point = _read_checkpoint(self.directory / RECOVERY_POINT) or 0
        paths = sorted(self.directory.glob("*" + SEGMENT_SUFFIX))
        for number, path in enumerate(paths):
            next_base = int(paths[number + 1].stem) if number + 1 < len(paths) else None
            trusted = next_base is not None and next_base <= recovery_point
            segment, damaged = self._load_segment(path, trusted=trusted)
            self._add_segment(segment)
            if damaged and number + 1 < len(paths):
                # Nothing after a hole can be trusted to follow on from it.
                for later in paths[number + 1 :]:
                    log.warning("deleting segment after damaged one",
                                extra={"segment": str(later)})
                    later.unlink()
                    later.with_suffix(".index").unlink(missing_ok=True)
                    later.with_suffix(".timeindex").unlink(missing_ok=True)
                break
        if not self.segments:
            self._add_segment(self._create_segment(0))
        start = _read_checkpoint(self.directory / LOG_START_OFFSET)
        first = self.segments[0].base_offset
        self._log_start = first if start is None else min(max(start, first),
                                                            self.high_watermark)
        self._rebuild_producers()
        self._write_recovery_point(sync=False)

    def _rebuild_producers(self) -> None:
        """Producer state from the snapshot, then from the headers of every later batch."""
        snapshot_path = self.directory / PRODUCER_SNAPSHOT
        start = self.log_start_offset
        try:
            snapshot = json.loads(snapshot_path.read_text())
            if start <= snapshot["offset"] <= self.high_watermark:
                self.producers = ProducerStateTable.from_json(snapshot["producers"])
                start = snapshot["offset"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        located = self._locate(start) if start < self.high_watermark else None
        if located is None:
            return
        try:
            for _segment, _position, header in self._batches_from(located[0], start):
                if header.base_offset >= start:
                    self.producers.record(header)
        except CorruptBatch as exc:  # recovery checked these; say so rather than not start
            log.warning("producer state rebuilt only up to an unreadable batch", extra={
                "dir": str(self.directory), "reason": str(exc)})

    def _load_segment(self, path: Path, *, trusted: bool) -> tuple[Segment, bool]:
        """Open one segment; returns it and whether damage was cut from its end."""
        base = int(path.stem)
        fd = os.open(path, os.O_RDWR)
        stat = os.fstat(fd)
        file_size = stat.st_size
        if trusted:
            offset_index = SparseIndex.load(path.with_suffix(".index"))
            time_index = SparseIndex.load(path.with_suffix(".timeindex"))
            if offset_index is not None and time_index is not None:
                segment = Segment(base, path, fd, offset_index, time_index)
                if self._resume_from_index(segment, file_size):
                    segment.first_append_ms = int(stat.st_mtime * 1000)
                    return segment, False
                segment.offset_index.close()
                segment.time_index.close()
        segment = Segment(base, path, fd, SparseIndex(path.with_suffix(".index")),
                          SparseIndex(path.with_suffix(".timeindex")),
                          first_append_ms=int(stat.st_mtime * 1000))
        return segment, self._scan(segment, file_size, verify=not trusted)

    def _resume_from_index(self, segment: Segment, file_size: int) -> bool:
        """Trust the index up to its last entry; walk headers from there to the end."""
        index = segment.offset_index
        if len(index) and (index.keys[0] < segment.base_offset or index.values[-1] >= file_size):
            return False
        position = index.values[-1] if len(index) else 0
        if segment.time_index.keys:
            segment.max_timestamp = segment.time_index.keys[-1]
        segment._indexed_position = position
        try:
            while position < file_size:
                header = recordbatch.parse_header(os.pread(segment.fd, recordbatch.HEADER_SIZE,
                                                           position))
                if position + header.size > file_size:
                    return False
                segment.note_batch(position, header, self.config.index_interval_bytes,
                                   update_indexes=False)
                position += header.size
        except CorruptBatch:
            return False
        return segment.size == file_size

    def _scan(self, segment: Segment, file_size: int, *, verify: bool) -> bool:
        """Walk every batch (checking CRCs when ``verify``), rebuild indexes, cut a bad tail."""
        segment.offset_index.rewrite([])
        segment.time_index.rewrite([])
        position, reason = 0, ""
        while position < file_size:
            head = os.pread(segment.fd, recordbatch.HEADER_SIZE, position)
            try:
                header = recordbatch.parse_header(head)
            except CorruptBatch as exc:
                reason = str(exc)
                break
            if position + header.size > file_size:
                reason = f"batch at byte {position} runs past the end of the file"
                break
            if verify and not recordbatch.crc_matches(os.pread(segment.fd, header.size,
                                                               position), 0, header):
                reason = f"CRC-32C mismatch in batch at byte {position}"
                break
            expected = segment.next_offset
            if header.base_offset < expected or (header.base_offset != expected
                                                 and not self.config.compacted):
                # baseOffset lies outside the CRC: a flipped bit there shows up as a jump.
                reason = (f"batch at byte {position} has offset {header.base_offset}, "
                          f"expected {expected}")
                break
            segment.note_batch(position, header, self.config.index_interval_bytes)
            position += header.size
        if position < file_size:
            # A torn or corrupt tail: cut it so appends continue from the last good batch.
            log.warning("truncated damaged log tail", extra={
                "segment": str(segment.path), "kept_bytes": position,
                "cut_bytes": file_size - position, "reason": reason})
            os.ftruncate(segment.fd, position)
            os.fsync(segment.fd)
            return True
        return False

    def _create_segment(self, base_offset: int) -> Segment:
        path = self.directory / segment_name(base_offset)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._dir_dirty = True
        return Segment(base_offset, path, fd, SparseIndex.create(path.with_suffix(".index")),
                       SparseIndex.create(path.with_suffix(".timeindex")))

    def _add_segment(self, segment: Segment) -> None:
        self.segments.append(segment)
        self._segment_bases.append(segment.base_offset)

    def _write_recovery_point(self, *, sync: bool) -> None:
        self._write_producer_snapshot(self._producer_snapshot())
        _write_checkpoint(self.directory / RECOVERY_POINT, self.high_watermark, sync=sync)

    def _producer_snapshot(self) -> str:
        return json.dumps({"offset": self.high_watermark, "producers": self.producers.to_json()})

    def _write_producer_snapshot(self, snapshot: str) -> None:
        tmp = self.directory / (PRODUCER_SNAPSHOT + ".tmp")
        tmp.write_text(snapshot)
        os.replace(tmp, self.directory / PRODUCER_SNAPSHOT)

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
                os.fdatasync(segment.fd)
            self._write_recovery_point(sync=True)
        finally:
            for segment in self.segments:
                segment.close()

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
                if not self.config.compacted or self.config.compact_and_delete:
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
            self._set_log_start(max(self._log_start, self.segments[0].base_offset))
        return deleted

    async def compact(self, now: int, delete_retention_ms: int) -> int:
        """Keep only the latest record per key in sealed segments; returns records removed.

        The scan and the rewrite run in a worker thread (appends only touch the active
        segment); each rewritten segment is fsynced and renamed over the old one, then swapped
        in here. Readers in flight keep reading the old file until they finish. Tombstones
        (null values) go once older than ``delete_retention_ms``.
        """
        sealed = self.segments[:-1]
        if not sealed:
            return 0
        cleaned = await trio.to_thread.run_sync(
            _clean_segments, sealed, now - delete_retention_ms, limiter=_io_limiter)
        removed = 0
        for old, count in cleaned:
            if old not in self.segments:  # deleted meanwhile (retention, DeleteRecords)
                old.path.with_suffix(".cleaned").unlink(missing_ok=True)
                continue
            os.replace(old.path.with_suffix(".cleaned"), old.path)
            fd = os.open(old.path, os.O_RDWR)
            fresh = Segment(old.base_offset, old.path, fd, SparseIndex(old.offset_index.path),
                            SparseIndex(old.time_index.path))
            self._scan(fresh, os.fstat(fd).st_size, verify=False)
            self.segments[self.segments.index(old)] = fresh
            self._unsynced.pop(old.base_offset, None)
            old.retire()
            removed += count
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

    def _set_log_start(self, offset: int) -> None:
        self._log_start = offset
        _write_checkpoint(self.directory / LOG_START_OFFSET, offset, sync=False)

    async def delete_records(self, before: int) -> int:
        """Move the log start to ``before`` (-1: the high-water mark); returns the new start.

        Raises ``OffsetOutOfRange`` above the high-water mark. Whole segments below the new
        start are deleted; the checkpoint is fsynced before the call returns.
        """
        if before == -1:
            before = self.high_watermark
        if before < 0 or before > self.high_watermark:
            raise OffsetOutOfRange(f"offset {before} outside [0, {self.high_watermark}]")
        if before > self._log_start:
            self._log_start = before
            path = self.directory / LOG_START_OFFSET
            await trio.to_thread.run_sync(lambda: _write_checkpoint(path, before, sync=True),
                                          limiter=_io_limiter)
            while len(self.segments) > 1 and self.segments[0].next_offset <= before:
                self._drop_oldest("delete-records")
        return self._log_start

    # -- state ----------------------------------------------------------------------------

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def high_watermark(self) -> int:
        """The next offset to be assigned: includes every written batch, synced or not."""
        return self.active.next_offset

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    # -- append ---------------------------------------------------------------------------

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
        for (position, header), max_timestamp in zip(batches, max_timestamps, strict=True):
            recordbatch.rewrite_offset_and_epoch(buffer, position, next_offset)
            if append_time >= 0:
                recordbatch.stamp_log_append_time(buffer, position, header, append_time)
            elif header.max_timestamp != max_timestamp and not (
                    header.attributes & recordbatch.TIMESTAMP_TYPE_BIT):
                recordbatch.set_max_timestamp(buffer, position, header, max_timestamp)
            next_offset += header.last_offset_delta + 1
        start = segment.size
        append_ms = now_ms()
        if start == 0:
            segment.first_append_ms = append_ms
        written = os.pwrite(segment.fd, buffer, start)
        if written != len(buffer):
            # The disk is full or failing; undo the partial write so the log stays whole.
            os.ftruncate(segment.fd, start)
            raise OSError(f"short write: {written} of {len(buffer)} bytes")
        for position, _header in batches:
            assigned = recordbatch.parse_header(buffer, position)  # with its new base offset
            segment.note_batch(start + position, assigned, self.config.index_interval_bytes)
            self.producers.record(assigned, append_ms)
        self._written += len(buffer)
        self._unsynced[segment.base_offset] = segment
        flush_messages = self.config.flush_messages
        if flush_messages is not None:
            self._unsynced_messages += sum(h.record_count for _, h in batches)
            if self._unsynced_messages >= flush_messages:
                self._unsynced_messages = 0
                self._flush_wanted.set()
        self._notify_append()
        return AppendResult(first_offset, next_offset - 1, append_time, self._written)

    def _roll(self) -> None:
        old = self.active
        self._unsynced[old.base_offset] = old
        self._add_segment(self._create_segment(old.next_offset))
        log.debug("rolled segment", extra={"dir": str(self.directory), "base": old.next_offset})

    async def wait_durable(self, write_mark: int) -> None:
        """Return once every byte up to ``write_mark`` has been fdatasync'ed.

        Group commit: one caller runs the sync for everything written so far while the others
        wait for it; callers whose bytes arrived during that sync share the next one.
        """
        while self._synced < write_mark:
            if self._sync_running:
                await self._sync_done.wait()
                continue
            self._sync_running = True
            target, recovery_point = self._written, self.high_watermark
            snapshot = self._producer_snapshot()
            segments = list(self._unsynced.values())
            self._unsynced.clear()
            sync_dir = self._dir_dirty
            self._dir_dirty = False
            try:
                await trio.to_thread.run_sync(self._sync_files, segments, sync_dir,
                                              recovery_point, snapshot, limiter=_io_limiter)
                self._synced = max(self._synced, target)
            except BaseException:
                for segment in segments:  # not durable: the next sync must retry them
                    self._unsynced[segment.base_offset] = segment
                self._dir_dirty = self._dir_dirty or sync_dir
                raise
            finally:
                self._sync_running = False
                done, self._sync_done = self._sync_done, trio.Event()
                done.set()

    def _sync_files(self, segments: list[Segment], sync_dir: bool, recovery_point: int,
                    producer_snapshot: str) -> None:
        for segment in segments:
            os.fdatasync(segment.fd)
        if sync_dir:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        # Neither is fsynced: a stale one only means more checking and rebuilding on start.
        self._write_producer_snapshot(producer_snapshot)
        _write_checkpoint(self.directory / RECOVERY_POINT, recovery_point, sync=False)

    # -- waiting readers --------------------------------------------------------------------

    def add_append_listener(self, listener: Callable[[], None]) -> None:
        self._append_listeners.add(listener)

    def remove_append_listener(self, listener: Callable[[], None]) -> None:
        self._append_listeners.discard(listener)

    def _notify_append(self) -> None:
        for listener in list(self._append_listeners):
            listener()

    # -- read -----------------------------------------------------------------------------

    def _locate(self, offset: int) -> tuple[Segment, int] | None:
        """(segment, file position) of the batch holding ``offset``, or None at the end."""
        if offset < self.log_start_offset or offset > self.high_watermark:
            raise OffsetOutOfRange(
                f"offset {offset} outside [{self.log_start_offset}, {self.high_watermark}]"
            )
        number = bisect.bisect_right(self._segment_bases, offset) - 1
        for segment in self.segments[max(number, 0) :]:
            position = segment.find(offset)
            if position is not None:
                return segment, position
        return None

    def bytes_after(self, offset: int) -> int:
        """How many bytes a read from ``offset`` could return (for Fetch min_bytes)."""
        located = self._locate(offset)
        if located is None:
            return 0
        segment, position = located
        number = self.segments.index(segment)
        return segment.size - position + sum(s.size for s in self.segments[number + 1 :])

    async def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one holding ``offset``, up to ``max_bytes`` (at least one).

        Raises ``OffsetOutOfRange`` below the log start or above the high-water mark.
        """
        if self._closed:
            raise OffsetOutOfRange("the partition's log is closed (topic deleted)")
        hwm, start = self.high_watermark, self.log_start_offset
        located = self._locate(offset)
        if located is None:
            return ReadResult(b"", hwm, start)
        segment, position = located
        available = segment.size - position
        with held(segment):
            data = await self._read_batches(segment, position, min(max(max_bytes, _WALK_SIZE),
                                                                  available))
        return ReadResult(data, hwm, start)

    def segment_by_serial(self, serial: int) -> Segment | None:
        return next((s for s in self.segments if s.serial == serial), None)

    async def read_range(self, segment: Segment, position: int, size: int) -> bytes:
        """Exactly the bytes ``[position, position + size)`` of ``segment`` (the caller checked
        the bounds against ``segment.size``); the segment may be deleted meanwhile."""
        with held(segment):
            return await self._pread(segment.fd, size, position)

    async def _read_batches(self, segment: Segment, position: int, size: int) -> bytes:
        data = await self._pread(segment.fd, size, position)
        # Cut at the last whole batch; if even the first is larger than max_bytes, it alone.
        end = 0
        while end + recordbatch.LENGTH_PREFIX <= len(data):
            _base, length = _WALK.unpack_from(data, end)
            if end + length + recordbatch.LENGTH_PREFIX > len(data):
                break
            end += length + recordbatch.LENGTH_PREFIX
        if end == 0:
            _base, length = _WALK.unpack_from(data, 0)
            return await self._pread(segment.fd, length + recordbatch.LENGTH_PREFIX, position)
        elif end < len(data):
            data = data[:end]
        return data

    async def _pread(self, fd: int, size: int, position: int) -> bytes:
        if size <= _INLINE_READ_LIMIT:
            return os.pread(fd, size, position)
        return await trio.to_thread.run_sync(os.pread, fd, size, position, limiter=_io_limiter)

    def _batches_from(self, segment: Segment, offset: int) -> Iterator[
            tuple[Segment, int, recordbatch.BatchHeader]]:
        """Walk batch headers from the batch holding ``offset`` to the end of the log."""
        number = self.segments.index(segment)
        position = segment.find(offset)
        for current in self.segments[number:]:
            if current is not segment:
                position = 0
            while position is not None and position < current.size:
                header = recordbatch.parse_header(
                    os.pread(current.fd, recordbatch.HEADER_SIZE, position))
                yield current, position, header
                position += header.size

    async def _records_of(self, segment: Segment, position: int,
                          header: recordbatch.BatchHeader) -> list[records.Record]:
        """The batch's records; none (and a log line) if it cannot be read."""
        def decode() -> list[records.Record]:
            batch = os.pread(segment.fd, header.size, position)
            topic, partition = topic_partition(self.directory)
            return records.records_or_skip(batch, log, topic=topic, partition=partition) or []

        if header.size <= _INLINE_READ_LIMIT:
            return decode()
        return await trio.to_thread.run_sync(decode, limiter=_io_limiter)

    async def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """The first record (offset, timestamp) whose timestamp is >= ``timestamp``.

        The time index finds the segment and a starting batch; batch max timestamps skip to
        the first candidate batch; its records decide the exact offset.
        """
        for segment in self.segments:
            if segment.max_timestamp < timestamp:
                continue
            entry = segment.time_index.floor(timestamp - 1)
            start = segment.time_index.values[entry] if entry >= 0 else segment.base_offset
            start = max(start, self.log_start_offset, segment.base_offset)
            for where, position, header in self._batches_from(segment, start):
                if header.max_timestamp < timestamp:
                    continue
                for record in await self._records_of(where, position, header):
                    if record.offset >= self.log_start_offset and record.timestamp >= timestamp:
                        return record.offset, record.timestamp
            return None
        return None

    async def max_timestamp_offset(self) -> tuple[int, int] | None:
        """The (offset, timestamp) of the record with the largest timestamp (the earliest
        such record on ties), as ListOffsets' MAX_TIMESTAMP asks."""
        best = max((s for s in self.segments if not s.empty), default=None,
                   key=lambda s: s.max_timestamp)
        if best is None or self.high_watermark <= self.log_start_offset:
            return None
        return await self.offset_for_timestamp(best.max_timestamp)


def _clean_segments(segments: list[Segment], tombstone_horizon: int) -> list[tuple[Segment, int]]:
    """Write ``<segment>.cleaned`` for each segment that loses records; runs in a thread."""
    latest: dict[bytes, int] = {}
    for segment in segments:
        for _position, batch in segment.batches():
            # An unreadable batch is kept as it is (and logged): never lose bytes we cannot read.
            for record in _readable(segment, batch) or ():
                if record.key is not None:
                    latest[record.key] = record.offset
    cleaned = []
    for segment in segments:
        out, removed = bytearray(), 0
        for _position, batch in segment.batches():
            every = _readable(segment, batch)
            if every is None:
                out += batch
                continue
            kept = [r for r in every
                    if (r.key is None or latest.get(r.key) == r.offset)
                    and not (r.value is None and r.timestamp < tombstone_horizon)]
            removed += len(every) - len(kept)
            if len(kept) == len(every):
                out += batch
            elif kept:
                out += records.rebuild_batch(batch, kept)
        if removed:
            path = segment.path.with_suffix(".cleaned")
            with open(path, "wb") as target:
                target.write(out)
                target.flush()
                os.fsync(target.fileno())
            cleaned.append((segment, removed))
    return cleaned


def _readable(segment: Segment, batch: bytes) -> list[records.Record] | None:
    topic, partition = topic_partition(segment.path.parent)
    return records.records_or_skip(batch, log, topic=topic, partition=partition)


def topic_partition(directory: Path) -> tuple[str, int]:
    """(topic, partition) of a partition directory named ``<topic>-<partition>``."""
    topic, _, number = directory.name.rpartition("-")
    return (topic, int(number)) if topic and number.isdigit() else (directory.name, 0)
