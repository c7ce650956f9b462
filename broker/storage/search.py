"""Finding records by timestamp across a log's segments (ListOffsets by time).

The time index finds the segment and a starting batch; batch max timestamps skip to the first
candidate batch; its records decide the exact offset. Timestamps need not grow with offsets
(CreateTime is the producer's clock), so the walk may go on into later segments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import trio

from broker.storage.config import INLINE_READ_LIMIT, IO_LIMITER, topic_partition
from broker.storage.segment import Segment, held
from kelp import records
from kelp.recordbatch import BatchHeader

log = logging.getLogger("kelp.broker.log")


def walk_from(segments: list[Segment], segment: Segment, offset: int) -> Iterator[
        tuple[Segment, int, BatchHeader]]:
    """(segment, position, header) of each batch from the one in ``segment`` (one of
    ``segments``) holding ``offset`` to the end of the log."""
    number = segments.index(segment)
    position = segment.find(offset)
    for current in segments[number:]:
        if current is not segment:
            position = 0
        if position is not None:
            for where, header in current.headers(position):
                yield current, where, header


async def offset_for_timestamp(segments: list[Segment], log_start: int,
                               timestamp: int) -> tuple[int, int] | None:
    """The first record (offset, timestamp) at or after ``log_start`` whose timestamp is >=
    ``timestamp``, or None."""
    segment = next((s for s in segments if s.max_timestamp >= timestamp), None)
    if segment is None:
        return None
    start = max(segment.find_time(timestamp), log_start, segment.base_offset)
    for where, position, header in walk_from(segments, segment, start):
        if header.max_timestamp < timestamp:
            continue
        for record in await _records_of(where, position, header):
            if record.offset >= log_start and record.timestamp >= timestamp:
                return record.offset, record.timestamp
    return None


async def max_timestamp_offset(segments: list[Segment],
                               log_start: int) -> tuple[int, int] | None:
    """The (offset, timestamp) of the record with the largest timestamp, the earliest such
    record on ties."""
    best = max((s for s in segments if not s.empty), default=None,
               key=lambda s: s.max_timestamp)
    if best is None:
        return None
    return await offset_for_timestamp(segments, log_start, best.max_timestamp)


async def _records_of(segment: Segment, position: int,
                      header: BatchHeader) -> list[records.Record]:
    """The batch's records; none (and a log line) if it cannot be read."""
    def decode() -> list[records.Record]:
        batch = segment.read(position, header.size)
        topic, partition = topic_partition(segment.path.parent)
        return records.records_or_skip(batch, log, topic=topic, partition=partition) or []

    with held(segment):
        if header.size <= INLINE_READ_LIMIT:
            return decode()
        return await trio.to_thread.run_sync(decode, limiter=IO_LIMITER)
