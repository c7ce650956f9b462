"""A partition log's settings, the IO limits its modules share, and how its directory is named."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import trio

from broker.producers import DEFAULT_EXPIRATION_MS

# Large reads, fsyncs in worker threads (where the kernel's AIO cannot take them: see
# ``syncer``) and compaction leave the event loop through this limiter (shared by
# every partition, so a burst of them cannot take all of trio's worker threads); small reads
# are cheaper inline.
IO_LIMITER = trio.CapacityLimiter(8)
INLINE_READ_LIMIT = 64 * 1024


def now_ms() -> int:
    return int(time.time() * 1000)


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
    # cleanup.policy contains delete: retention.ms/bytes delete old segments. An empty policy
    # (Kafka accepts one) neither deletes nor compacts: the log is kept whole.
    delete_by_retention: bool = True
    delete_retention_ms: int = 24 * 3600 * 1000  # how long compaction keeps tombstones
    # A broker setting (Kafka's producer.id.expiration.ms): idle producers' state is dropped.
    producer_id_expiration_ms: int = DEFAULT_EXPIRATION_MS

    @property
    def sync_on_ack(self) -> bool:
        return self.flush_ms is None and self.flush_messages is None


def topic_partition(directory: Path) -> tuple[str, int]:
    """(topic, partition) of a partition directory named ``<topic>-<partition>``."""
    topic, _, number = directory.name.rpartition("-")
    return (topic, int(number)) if topic and number.isdigit() else (directory.name, 0)
