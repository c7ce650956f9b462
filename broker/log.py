"""A partition's log: segment files of v2 record batches, stored byte for byte.

One ``PartitionLog`` per partition directory. Appends validate each batch (magic, length,
CRC-32C), rewrite only its base offset and leader epoch, and write it to the active segment
*before* anyone is told it exists: a process crash after the write loses nothing acknowledged,
and ``acks=-1`` additionally waits for ``fdatasync`` (group commit: appends that arrive while a
sync runs share the next one). The high-water mark is everything written, synced or not.

Segments are named by base offset (``00000000000000000000.log``). Each segment keeps an
in-memory batch index (last offset, file position, max timestamp per batch) rebuilt by scanning
on start; recovery verifies the CRC of every batch in the last segment and truncates a torn tail.

Waiting readers park on ``wait_for_append`` (a per-partition parking spot signalled by every
append) — never a sleep loop.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kelp import recordbatch
from kelp.recordbatch import CorruptBatch

log = logging.getLogger("kelp.broker.log")

SEGMENT_SUFFIX = ".log"
# Large reads and every fsync leave the event loop; small reads are cheaper inline.
_INLINE_READ_LIMIT = 64 * 1024
_io_limiter = trio.CapacityLimiter(8)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{SEGMENT_SUFFIX}"


@dataclass
class Segment:
    """One segment file and the index of the batches in it."""

    base_offset: int
    path: Path
    fd: int
    size: int = 0
    last_offsets: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    max_timestamps: list[int] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        return self.last_offsets[-1] + 1 if self.last_offsets else self.base_offset

    def add_batch(self, position: int, header: recordbatch.BatchHeader) -> None:
        self.positions.append(position)
        self.last_offsets.append(header.last_offset)
        self.max_timestamps.append(header.max_timestamp)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class LogConfig:
    segment_bytes: int = 1 << 30


@dataclass(frozen=True)
class AppendResult:
    base_offset: int
    last_offset: int
    # A ticket for ``wait_durable``: the log's write counter after this append.
    write_mark: int


@dataclass(frozen=True)
class ReadResult:
    records: bytes
    high_watermark: int
    log_start_offset: int


class OffsetOutOfRange(Exception):
    pass


class PartitionLog:
    def __init__(self, directory: Path, config: LogConfig | None = None) -> None:
        self.directory = directory
        self.config = config or LogConfig()
        self.segments: list[Segment] = []
        self._segment_bases: list[int] = []
        # Group commit bookkeeping: bytes written so far vs. bytes known to be on disk.
        self._written = 0
        self._synced = 0
        self._unsynced: dict[int, Segment] = {}
        self._dir_dirty = False
        self._sync_running = False
        self._sync_done = trio.Event()
        self._append_listeners: set[Callable[[], None]] = set()
        self._closed = False

    # -- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, config: LogConfig | None = None) -> PartitionLog:
        """Open (or create) a partition directory, recovering its segments."""
        directory.mkdir(parents=True, exist_ok=True)
        plog = cls(directory, config)
        paths = sorted(directory.glob("*" + SEGMENT_SUFFIX))
        for index, path in enumerate(paths):
            is_last = index == len(paths) - 1
            plog._add_segment(plog._load_segment(path, verify=is_last))
        if not plog.segments:
            plog._add_segment(plog._create_segment(0))
        return plog

    def _load_segment(self, path: Path, *, verify: bool) -> Segment:
        base = int(path.stem)
        fd = os.open(path, os.O_RDWR)
        segment = Segment(base, path, fd)
        file_size = os.fstat(fd).st_size
        position = 0
        reason = ""
        while position < file_size:
            head = os.pread(fd, recordbatch.HEADER_SIZE, position)
            try:
                header = recordbatch.parse_header(head)
            except CorruptBatch as exc:
                reason = str(exc)
                break
            if position + header.size > file_size:
                reason = f"batch at byte {position} runs past the end of the file"
                break
            if verify:
                whole = os.pread(fd, header.size, position)
                if not recordbatch.crc_matches(whole, 0, header):
                    reason = f"CRC-32C mismatch in batch at byte {position}"
                    break
            if header.base_offset < segment.next_offset:
                reason = f"batch at byte {position} goes backwards to offset {header.base_offset}"
                break
            segment.add_batch(position, header)
            position += header.size
        if position < file_size:
            # A torn or corrupt tail: cut it so appends continue from the last good batch.
            log.warning(
                "truncated damaged log tail",
                extra={"segment": str(path), "kept_bytes": position,
                       "cut_bytes": file_size - position, "reason": reason},
            )
            os.ftruncate(fd, position)
            os.fsync(fd)
        segment.size = position
        return segment

    def _create_segment(self, base_offset: int) -> Segment:
        path = self.directory / segment_name(base_offset)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._dir_dirty = True
        return Segment(base_offset, path, fd)

    def _add_segment(self, segment: Segment) -> None:
        self.segments.append(segment)
        self._segment_bases.append(segment.base_offset)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for segment in self.segments:
            segment.close()

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
        return self.segments[0].base_offset

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    # -- append ---------------------------------------------------------------------------

    def append(self, records: bytes) -> AppendResult:
        """Validate, assign offsets and write ``records`` (one or more v2 batches).

        Synchronous on purpose: there is no checkpoint between assigning offsets and writing,
        so appends to one partition land in the order they are called. Raises ``CorruptBatch``.
        """
        if not records:
            raise CorruptBatch("empty record set")
        buffer = bytearray(records)
        batches = list(recordbatch.iter_batches(buffer))
        if self.active.size >= self.config.segment_bytes:
            self._roll()
        segment = self.active
        first_offset = next_offset = segment.next_offset
        for position, header in batches:
            recordbatch.rewrite_offset_and_epoch(buffer, position, next_offset)
            next_offset += header.last_offset_delta + 1
        start = segment.size
        written = os.pwrite(segment.fd, buffer, start)
        if written != len(buffer):
            # The disk is full or failing; undo the partial write so the log stays whole.
            os.ftruncate(segment.fd, start)
            raise OSError(f"short write: {written} of {len(buffer)} bytes")
        offset = first_offset
        for position, header in batches:
            segment.positions.append(start + position)
            segment.last_offsets.append(offset + header.last_offset_delta)
            segment.max_timestamps.append(header.max_timestamp)
            offset += header.last_offset_delta + 1
        segment.size = start + len(buffer)
        self._written += len(buffer)
        self._unsynced[segment.base_offset] = segment
        self._notify_append()
        return AppendResult(first_offset, next_offset - 1, self._written)

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
            target = self._written
            segments = list(self._unsynced.values())
            self._unsynced.clear()
            sync_dir = self._dir_dirty
            self._dir_dirty = False
            try:
                await trio.to_thread.run_sync(self._sync_files, segments, sync_dir,
                                              limiter=_io_limiter)
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

    def _sync_files(self, segments: list[Segment], sync_dir: bool) -> None:
        for segment in segments:
            os.fdatasync(segment.fd)
        if sync_dir:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # -- waiting readers --------------------------------------------------------------------

    def add_append_listener(self, listener: Callable[[], None]) -> None:
        self._append_listeners.add(listener)

    def remove_append_listener(self, listener: Callable[[], None]) -> None:
        self._append_listeners.discard(listener)

    def _notify_append(self) -> None:
        for listener in list(self._append_listeners):
            listener()

    # -- read -----------------------------------------------------------------------------

    def _locate(self, offset: int) -> tuple[int, int] | None:
        """(segment index, batch index) of the batch holding ``offset``, or None at the end."""
        if offset < self.log_start_offset or offset > self.high_watermark:
            raise OffsetOutOfRange(
                f"offset {offset} outside [{self.log_start_offset}, {self.high_watermark}]"
            )
        seg_index = bisect.bisect_right(self._segment_bases, offset) - 1
        while seg_index < len(self.segments):
            segment = self.segments[seg_index]
            batch_index = bisect.bisect_left(segment.last_offsets, offset)
            if batch_index < len(segment.last_offsets):
                return seg_index, batch_index
            seg_index += 1
        return None

    def bytes_after(self, offset: int) -> int:
        """How many bytes a read from ``offset`` could return (for Fetch min_bytes)."""
        located = self._locate(offset)
        if located is None:
            return 0
        seg_index, batch_index = located
        segment = self.segments[seg_index]
        total = segment.size - segment.positions[batch_index]
        return total + sum(s.size for s in self.segments[seg_index + 1 :])

    async def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one holding ``offset``, up to ``max_bytes`` (at least one).

        Raises ``OffsetOutOfRange`` below the log start or above the high-water mark.
        """
        hwm, start = self.high_watermark, self.log_start_offset
        located = self._locate(offset)
        if located is None:
            return ReadResult(b"", hwm, start)
        seg_index, batch_index = located
        segment = self.segments[seg_index]
        first = segment.positions[batch_index]
        # The last batch boundary that fits in max_bytes, but never less than one batch.
        positions = segment.positions
        limit = first + max(max_bytes, 0)
        # Batch j ends where batch j+1 starts; p is the first batch starting beyond the limit,
        # so batches before p-1 end within it and batch p-1 may run past it.
        p = bisect.bisect_right(positions, limit, lo=batch_index + 1)
        if p == len(positions) and segment.size <= limit:
            end = segment.size
        elif p - 1 > batch_index:
            end = positions[p - 1]
        else:  # the first batch alone is larger than max_bytes: return it whole anyway
            end = positions[p] if p < len(positions) else segment.size
        size = end - first
        if size <= _INLINE_READ_LIMIT:
            data = os.pread(segment.fd, size, first)
        else:
            data = await trio.to_thread.run_sync(os.pread, segment.fd, size, first,
                                                 limiter=_io_limiter)
        return ReadResult(data, hwm, start)

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """First batch whose max timestamp >= ``timestamp``: (its base offset, max timestamp).

        Batch granularity: the storage issue refines this to the exact record.
        """
        for segment in self.segments:
            for index, max_ts in enumerate(segment.max_timestamps):
                if max_ts >= timestamp:
                    base = segment.last_offsets[index - 1] + 1 if index else segment.base_offset
                    return base, max_ts
        return None
