"""One segment of a partition log: a file of v2 record batches and its two sparse indexes.

Files, named by the segment's base offset::

    00000000000000000000.log        the batches, byte for byte as appended
    00000000000000000000.index      sparse offset -> file position (``index``)
    00000000000000000000.timeindex  sparse max timestamp -> offset

A ``Segment`` is the only writer of its fields and files. It appends whole batches at its end,
finds the batch holding an offset (the index, then a walk of batch headers), reads bytes, and
recovers: re-checks every batch (length, magic, CRC-32C, offsets in order), cuts a torn or
damaged tail and rebuilds its indexes. Indexes are hints: a segment whose indexes are
missing, torn or disagree with it is recovered from its batches.

Readers in flight ``held`` a segment: retention or compaction may retire it meanwhile, and its
descriptor closes only when the last of them is done.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from broker.storage.index import SparseIndex
from kelp import recordbatch
from kelp.recordbatch import BatchHeader, CorruptBatch

log = logging.getLogger("kelp.broker.log")

SUFFIX = ".log"
OFFSET_INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
# Every Segment object gets a serial number unique in this process: the read sidecar names a
# segment by it (with a random cookie), so a compacted segment (a new object) gets a new name.
_serials = itertools.count(1)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{SUFFIX}"


def index_paths(path: Path) -> tuple[Path, Path]:
    """The offset and time index files of the segment file ``path``."""
    return path.with_suffix(OFFSET_INDEX_SUFFIX), path.with_suffix(TIME_INDEX_SUFFIX)


class Segment:
    """One segment file with its sparse indexes and summary (Kafka's ``LogSegment``)."""

    def __init__(self, base_offset: int, path: Path, fd: int, offset_index: SparseIndex,
                 time_index: SparseIndex, *, first_append_ms: int = -1) -> None:
        self.base_offset = base_offset
        self.path = path
        self.fd = fd
        self.offset_index = offset_index
        self.time_index = time_index
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp = -1
        # Wall-clock ms of the first append (the file's mtime for a recovered one): segment.ms.
        self.first_append_ms = first_append_ms
        # Reads in flight (``held``): a retired segment's descriptor closes when they finish.
        self.readers = 0
        self.retired = False
        self.serial = next(_serials)
        self.cookie = secrets.randbits(32)
        self._indexed_position = -(1 << 62)  # file position of the last offset index entry

    # -- creating and loading ---------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int) -> Segment:
        """A new empty segment file (its name must not exist yet)."""
        path = directory / segment_name(base_offset)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        offset_index, time_index = index_paths(path)
        return cls(base_offset, path, fd, SparseIndex.create(offset_index),
                   SparseIndex.create(time_index))

    @classmethod
    def load(cls, path: Path, *, trusted: bool, compacted: bool,
             index_interval: int) -> tuple[Segment, bool]:
        """Open an existing segment; returns it and whether damage was cut from its end.

        A ``trusted`` segment (wholly below the recovery point: fsynced) keeps its indexes if
        they look right and only its batch headers after the last index entry are walked;
        any other is recovered with CRC checks.
        """
        fd = os.open(path, os.O_RDWR)
        try:
            stat = os.fstat(fd)
            mtime_ms = int(stat.st_mtime * 1000)
            offset_path, time_path = index_paths(path)
            if trusted:
                offset_index = SparseIndex.load(offset_path)
                time_index = SparseIndex.load(time_path)
                if offset_index is not None and time_index is not None:
                    segment = cls(int(path.stem), path, fd, offset_index, time_index,
                                  first_append_ms=mtime_ms)
                    if segment._resume_from_index(stat.st_size, index_interval):
                        return segment, False
                    offset_index.close()
                    time_index.close()
            segment = cls(int(path.stem), path, fd, SparseIndex(offset_path),
                          SparseIndex(time_path), first_append_ms=mtime_ms)
            damage = segment.recover(verify_crc=not trusted, compacted=compacted,
                                     index_interval=index_interval)
            return segment, damage is not None
        except BaseException:
            os.close(fd)
            raise

    def _resume_from_index(self, file_size: int, index_interval: int) -> bool:
        """Trust the indexes up to their last entry; walk headers from there to the end."""
        index = self.offset_index
        if len(index) and (index.keys[0] < self.base_offset or index.values[-1] >= file_size):
            return False
        position = index.values[-1] if len(index) else 0
        if self.time_index.keys:
            self.max_timestamp = self.time_index.keys[-1]
        self._indexed_position = position
        try:
            while position < file_size:
                header = recordbatch.parse_header(self.read(position, recordbatch.HEADER_SIZE))
                if position + header.size > file_size:
                    return False
                self._note_batch(position, header, index_interval, update_indexes=False)
                position += header.size
        except CorruptBatch:
            return False
        return self.size == file_size

    def recover(self, *, verify_crc: bool, compacted: bool, index_interval: int) -> str | None:
        """Re-check every batch from the start of the file, rebuilding both indexes.

        A batch that does not parse, runs past the end of the file, fails its CRC (when
        ``verify_crc``) or breaks the offset order (a gap is allowed only when ``compacted``)
        is cut with everything after it, so appends continue from the last good batch.
        Returns why a tail was cut, or None when the whole file is good.
        """
        file_size = os.fstat(self.fd).st_size
        self.size, self.next_offset, self.max_timestamp = 0, self.base_offset, -1
        self._indexed_position = -(1 << 62)
        self.offset_index.rewrite([])
        self.time_index.rewrite([])
        position, reason = 0, ""
        while position < file_size:
            try:
                header = recordbatch.parse_header(self.read(position, recordbatch.HEADER_SIZE))
            except CorruptBatch as exc:
                reason = str(exc)
                break
            if position + header.size > file_size:
                reason = f"batch at byte {position} runs past the end of the file"
                break
            if verify_crc and not recordbatch.crc_matches(self.read(position, header.size), 0,
                                                          header):
                reason = f"CRC-32C mismatch in batch at byte {position}"
                break
            expected = self.next_offset
            if header.base_offset < expected or (header.base_offset != expected
                                                 and not compacted):
                # baseOffset lies outside the CRC: a flipped bit there shows up as a jump.
                reason = (f"batch at byte {position} has offset {header.base_offset}, "
                          f"expected {expected}")
                break
            self._note_batch(position, header, index_interval)
            position += header.size
        if position == file_size:
            return None
        log.warning("truncated damaged log tail", extra={
            "segment": str(self.path), "kept_bytes": position,
            "cut_bytes": file_size - position, "reason": reason})
        os.ftruncate(self.fd, position)
        os.fsync(self.fd)
        return reason

    # -- append -----------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return self.size == 0

    def append(self, buffer: bytes | bytearray, positions: Sequence[int], index_interval: int,
               append_ms: int) -> list[BatchHeader]:
        """Write whole batches (their offsets assigned, starting at ``positions`` in
        ``buffer``) at the end of the file; returns their headers as stored."""
        start = self.size
        if start == 0:
            self.first_append_ms = append_ms
        written = os.pwrite(self.fd, buffer, start)
        if written != len(buffer):
            # The disk is full or failing; undo the partial write so the segment stays whole.
            os.ftruncate(self.fd, start)
            raise OSError(f"short write: {written} of {len(buffer)} bytes")
        stored = []
        for position in positions:
            header = recordbatch.parse_header(buffer, position)
            self._note_batch(start + position, header, index_interval)
            stored.append(header)
        return stored

    def _note_batch(self, position: int, header: BatchHeader, index_interval: int,
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

    def truncate(self, position: int, index_interval: int) -> None:
        """Cut the file at ``position`` (a batch start) and rebuild the indexes from what
        stays (a follower's truncation: rare, so a rescan is fine)."""
        os.ftruncate(self.fd, position)
        self.recover(verify_crc=False, compacted=True, index_interval=index_interval)

    def sync(self) -> None:
        """fdatasync the file (called in a worker thread while ``held``)."""
        os.fdatasync(self.fd)

    # -- find and read ----------------------------------------------------------------------

    def find(self, offset: int) -> int | None:
        """File position of the batch holding ``offset``, or None past the segment's end."""
        if offset >= self.next_offset:
            return None
        entry = self.offset_index.floor(offset)
        position = self.offset_index.values[entry] if entry >= 0 else 0
        while position < self.size:
            head = self.read(position, recordbatch.PEEK_SIZE)
            if recordbatch.peek_last_offset(head) >= offset:
                return position
            position += recordbatch.peek(head)[1]
        return None

    def find_time(self, timestamp: int) -> int:
        """An offset at or below the first batch whose max timestamp is >= ``timestamp``."""
        entry = self.time_index.floor(timestamp - 1)
        return self.time_index.values[entry] if entry >= 0 else self.base_offset

    def read(self, position: int, size: int) -> bytes:
        return os.pread(self.fd, size, position)

    def headers(self, position: int = 0) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) of each batch from ``position`` (a batch start) to the end."""
        while position < self.size:
            header = recordbatch.parse_header(self.read(position, recordbatch.HEADER_SIZE))
            yield position, header
            position += header.size

    def batches(self) -> Iterator[tuple[int, bytes]]:
        """(position, bytes) of every batch, one pread each (for scans in a worker thread).

        Stops, with a log line, at a length that cannot be right (the last batch then ends
        before ``size``).
        """
        position = 0
        while position + recordbatch.LENGTH_PREFIX <= self.size:
            _base, size = recordbatch.peek(self.read(position, recordbatch.LENGTH_PREFIX))
            if size < recordbatch.HEADER_SIZE or position + size > self.size:
                log.warning("unreadable batch length; not reading further", extra={
                    "segment": str(self.path), "position": position, "size": size})
                return
            yield position, self.read(position, size)
            position += size

    # -- replacing, closing, deleting ---------------------------------------------------------

    def take_place_of(self, old: Segment) -> None:
        """Become ``old`` on disk (compaction's swap): its files are replaced by this one's.

        Its index files go first, so a crash part way leaves a segment without indexes
        (rebuilt on start) or with its own, never the new batches with the old indexes.
        ``old`` is retired: reads in flight finish on its (now unlinked) file.
        """
        old.offset_index.delete()
        old.time_index.delete()
        os.replace(self.path, old.path)
        self.path = old.path
        offset_path, time_path = index_paths(old.path)
        self.offset_index.move(offset_path)
        self.time_index.move(time_path)
        old.retire()

    def hold(self) -> contextlib.AbstractContextManager[Segment]:
        """``held(self)``."""
        return held(self)

    def close(self) -> None:
        self._close_fd()
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
            self._close_fd()

    def _close_fd(self) -> None:
        # Once only, and -1 after: a late user gets EBADF, never a descriptor reused since.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
            segment._close_fd()  # retire() left it open for this reader
