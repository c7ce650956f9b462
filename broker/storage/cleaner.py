"""Compaction: keep only the latest record per key in a log's sealed segments (Kafka's
``LogCleaner``).

All the work on bytes runs in a worker thread, off the event loop: one pass over the sealed
segments finds each key's latest offset; a second rewrites each segment that loses records to
``<base>.cleaned`` (batches that keep every record are copied as they are, others rebuilt with
the same codec, empty ones dropped), fsyncs it and verifies it by recovering it as a segment
of its own, which also builds its indexes (``<base>.index.cleaned``, ...). Tombstones (null
values) go once older than the horizon.

Transactions, as Kafka's cleaner treats them: the log is cleaned only below its last stable
offset (an open transaction may still abort); the records of aborted transactions are
removed and never count as a key's latest value; control batches (COMMIT and ABORT markers)
are kept as they are, never deduplicated by their key: rebuilding the producer state from the
log needs the marker that ends each transaction whose records remain.

What it cannot read it keeps: a batch whose records do not decode is copied as it is (and
logged), and a segment whose batch lengths cannot be walked to its end is not rewritten.

The segments stay ``held`` while the thread reads them, so retention or DeleteRecords may
delete one meanwhile without closing its descriptor under the thread. Only the swap — the
cleaned files renamed over the old ones, the new ``Segment`` put in the old one's place — runs
on the event loop, in the log, which first checks the old segment is still part of it. A
result not swapped in (the segment was deleted meanwhile, the log closed, the task cancelled
while the thread worked) is deleted when the ``cleaned`` block ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

from broker.producers import AbortedTxn, is_control, is_transactional
from broker.storage.config import IO_LIMITER, topic_partition
from broker.storage.index import SparseIndex
from broker.storage.loader import CLEANED_SUFFIX
from broker.storage.segment import Segment, held, index_paths
from kelp import recordbatch, records

log = logging.getLogger("kelp.broker.log")

# Cleaned batches go to the file in writes of about this size (never the whole segment).
_WRITE_BYTES = 1024 * 1024


@dataclass
class Cleaned:
    old: Segment
    fresh: Segment  # a verified segment holding old's kept records, under ``.cleaned`` names
    removed: int  # records
    swapped: bool = False

    def swap_in(self) -> Segment:
        """Put ``fresh`` in place of ``old`` on disk (the caller swaps the objects)."""
        self.fresh.take_place_of(self.old)
        self.swapped = True
        return self.fresh


@contextlib.asynccontextmanager
async def cleaned(segments: list[Segment], tombstone_horizon: int,
                  index_interval: int, aborted: list[AbortedTxn] | None = None
                  ) -> AsyncIterator[list[Cleaned]]:
    """Clean ``segments`` (sealed ones below the last stable offset, oldest first) in a
    worker thread, dropping the records of the ``aborted`` transactions; the block swaps in
    the results it still wants (``Cleaned.swap_in``); the rest are deleted when it ends."""
    results: list[Cleaned] = []
    try:
        with contextlib.ExitStack() as holds:
            for segment in segments:
                holds.enter_context(held(segment))
            # Not abandoned on cancel: the thread is reading held segments and writing files.
            results = await trio.to_thread.run_sync(
                _clean, segments, tombstone_horizon, index_interval,
                _AbortedIndex(aborted or []), limiter=IO_LIMITER)
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled meanwhile: swap nothing
        yield results
    finally:
        for result in results:
            if not result.swapped:
                result.fresh.delete()


class _AbortedIndex:
    """Whether a transactional batch belongs to an aborted transaction."""

    def __init__(self, aborted: list[AbortedTxn]) -> None:
        self.by_producer: dict[int, list[AbortedTxn]] = {}
        for txn in aborted:
            self.by_producer.setdefault(txn.producer_id, []).append(txn)

    def holds(self, header: recordbatch.BatchHeader) -> bool:
        return is_transactional(header) and any(
            txn.first_offset <= header.base_offset < txn.last_offset
            for txn in self.by_producer.get(header.producer_id, ()))


def _kind(batch: bytes, aborted: _AbortedIndex) -> str:
    """"control", "aborted" or "data"."""
    header = recordbatch.parse_header(batch)
    if is_control(header):
        return "control"
    return "aborted" if aborted.holds(header) else "data"


def _clean(segments: list[Segment], tombstone_horizon: int,
           index_interval: int, aborted: _AbortedIndex) -> list[Cleaned]:
    """Both passes, in the worker thread: the keys' latest offsets, then the rewrites."""
    latest: dict[bytes, int] = {}
    whole = []
    for segment in segments:
        end = 0
        for position, batch in segment.batches():
            end = position + len(batch)
            if _kind(batch, aborted) != "data":
                continue
            for record in _readable(segment, batch) or ():
                if record.key is not None:
                    latest[record.key] = record.offset
        if end == segment.size:
            whole.append(segment)
    results = []
    for segment in whole:
        result = _rewrite(segment, latest, tombstone_horizon, index_interval, aborted)
        if result is not None:
            results.append(result)
    return results


def _rewrite(segment: Segment, latest: dict[bytes, int], tombstone_horizon: int,
             index_interval: int, aborted: _AbortedIndex) -> Cleaned | None:
    """``segment`` without its superseded records, old tombstones and aborted records, or
    None if it loses nothing (or its rewrite does not verify)."""
    path = segment.path.with_suffix(CLEANED_SUFFIX)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fresh = None
    try:
        removed, pending = 0, bytearray()
        for _position, batch in segment.batches():
            kind = _kind(batch, aborted)
            if kind == "control":
                pending += batch
                continue
            every = _readable(segment, batch)
            if every is None:  # never lose bytes we cannot read
                pending += batch
                continue
            if kind == "aborted":
                removed += len(every)
                continue
            kept = [r for r in every
                    if (r.key is None or latest.get(r.key) == r.offset)
                    and not (r.value is None and r.timestamp < tombstone_horizon)]
            removed += len(every) - len(kept)
            if len(kept) == len(every):
                pending += batch
            elif kept:
                pending += records.rebuild_batch(batch, kept)
            if len(pending) >= _WRITE_BYTES:
                _write_all(fd, pending)
                pending.clear()
        if not removed:
            os.close(fd)
            path.unlink()
            return None
        _write_all(fd, pending)
        os.fsync(fd)
        offset_path, time_path = (_cleaned_name(p) for p in index_paths(segment.path))
        fresh = Segment(segment.base_offset, path, fd, SparseIndex(offset_path),
                        SparseIndex(time_path))
        damage = fresh.recover(verify_crc=False, compacted=True, index_interval=index_interval)
        if damage is not None:
            log.error("compacted segment does not verify; keeping the original", extra={
                "segment": str(segment.path), "reason": damage})
            fresh.delete()
            return None
        return Cleaned(segment, fresh, removed)
    except BaseException:
        if fresh is None:
            os.close(fd)
            path.unlink(missing_ok=True)
        else:
            fresh.delete()
        raise


def _cleaned_name(path: Path) -> Path:
    return path.with_name(path.name + CLEANED_SUFFIX)


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _readable(segment: Segment, batch: bytes) -> list[records.Record] | None:
    topic, partition = topic_partition(segment.path.parent)
    return records.records_or_skip(batch, log, topic=topic, partition=partition)
