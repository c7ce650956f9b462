"""The broker's Prometheus metrics.

Events (counted as they happen): bytes and records appended and fetched per topic, appends
refused by error, fsync latency and the bytes each group commit made durable, transactions
ended by outcome. State (read at scrape, ``state``): per partition its log start and end
offsets, last stable offset, size and unflushed bytes; per group and partition the committed
offset and the lag (log end minus committed offset, 0 when nothing is behind); topics,
partitions, open streams, parked appends and fetches, tasks; transactions open.

Topic labels go when the topic is deleted (``forget_topic``), so label sets stay as many as
the topics that exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from broker.storage.syncer import SYNCER
from kelp import recordbatch
from kelp.metrics import Gauges

if TYPE_CHECKING:
    from broker.offsets import OffsetStore
    from broker.topics import TopicRegistry
    from broker.txn_coordinator import TransactionCoordinator

PRODUCED_BYTES = Counter("kelp_broker_produced_bytes", "Bytes of record batches appended.",
                         ["topic"])
PRODUCED_RECORDS = Counter("kelp_broker_produced_records", "Records appended.", ["topic"])
FETCHED_BYTES = Counter("kelp_broker_fetched_bytes", "Bytes of record batches fetched.",
                        ["topic"])
FETCHED_RECORDS = Counter("kelp_broker_fetched_records", "Records in fetched batches.",
                          ["topic"])
APPEND_ERRORS = Counter("kelp_broker_append_errors", "Appends refused, by Kafka error.",
                        ["error"])
FSYNC_SECONDS = Histogram("kelp_broker_fsync_seconds",
                          "Time of one group commit's syncs (segments, directory, checkpoints).",
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                   0.5, 1.0, 2.5))
GROUP_COMMIT_BYTES = Histogram("kelp_broker_group_commit_bytes",
                               "Bytes one group commit made durable.",
                               buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                                        16777216, 67108864))
TRANSACTIONS = Counter("kelp_broker_transactions", "Transactions ended, by outcome.",
                       ["outcome"])

_TOPIC_COUNTERS = (PRODUCED_BYTES, PRODUCED_RECORDS, FETCHED_BYTES, FETCHED_RECORDS)


def records_in(data: bytes) -> int:
    """How many records the whole batches in ``data`` hold (their headers' counts)."""
    count, position = 0, 0
    while position + recordbatch.HEADER_SIZE <= len(data):
        count += int.from_bytes(data[position + recordbatch.RECORD_COUNT:
                                     position + recordbatch.HEADER_SIZE], "big", signed=True)
        position += recordbatch.peek(data, position)[1]
    return count


def forget_topic(topic: str) -> None:
    for counter in _TOPIC_COUNTERS:
        with contextlib.suppress(KeyError):  # never counted
            counter.remove(topic)


def state(registry: TopicRegistry, offsets: Callable[[], OffsetStore | None],
          transactions: Callable[[], TransactionCoordinator | None],
          counters: Callable[[], dict[str, int]],
          cluster: Callable[[], Gauges] | None = None) -> Callable[[], Gauges]:
    """The broker's state gauges, read at scrape time (``cluster``'s too, with ``--etcd``).
    ``offsets`` and ``transactions`` give the coordinators' state (None in a cluster while
    this broker does not coordinate)."""

    def read() -> Gauges:
        partitions: dict[str, list[tuple[tuple[str, ...], float]]] = {
            "start": [], "end": [], "stable": [], "size": [], "unflushed": []}
        ends: dict[tuple[str, int], int] = {}
        for topic in list(registry.topics.values()):
            for index, plog in enumerate(topic.logs):
                labels = (topic.name, str(index))
                end = plog.high_watermark
                ends[(topic.name, index)] = end
                partitions["start"].append((labels, plog.log_start_offset))
                partitions["end"].append((labels, end))
                partitions["stable"].append((labels, plog.last_stable_offset))
                partitions["size"].append((labels, plog.size_bytes))
                partitions["unflushed"].append((labels, plog.unflushed_bytes))
        committed, lag = [], []
        store = offsets()
        for group, by_partition in list(store.groups.items() if store is not None else ()):
            for (topic_name, index), commit in by_partition.items():
                end = ends.get((topic_name, index))
                if end is None:
                    continue  # a deleted topic's offsets (they expire with the group)
                labels = (group, topic_name, str(index))
                committed.append((labels, commit.offset))
                lag.append((labels, max(end - commit.offset, 0)))
        partition_labels = ("topic", "partition")
        group_labels = ("group", "topic", "partition")
        gauges: Gauges = {
            "kelp_broker_partition_log_start_offset": (
                "First offset of the partition's log.", partition_labels, partitions["start"]),
            "kelp_broker_partition_log_end_offset": (
                "High-water mark: the next offset to be written.", partition_labels,
                partitions["end"]),
            "kelp_broker_partition_last_stable_offset": (
                "read_committed consumers read below this.", partition_labels,
                partitions["stable"]),
            "kelp_broker_partition_size_bytes": (
                "Bytes of the partition's segments.", partition_labels, partitions["size"]),
            "kelp_broker_partition_unflushed_bytes": (
                "Bytes written but not yet fdatasync'ed.", partition_labels,
                partitions["unflushed"]),
            "kelp_broker_consumer_group_committed_offset": (
                "A group's committed offset.", group_labels, committed),
            "kelp_broker_consumer_group_lag": (
                "Records a group has still to consume: log end minus committed offset.",
                group_labels, lag),
            "kelp_broker_topics": ("Topics.", (), [((), len(registry.topics))]),
            "kelp_broker_partitions": ("Partitions.", (), [((), registry.partition_count())]),
        }
        for name, value in counters().items():
            gauges[f"kelp_broker_{name}"] = (f"Now: {name.replace('_', ' ')}.", (),
                                             [((), value)])
        for name, value in SYNCER.counters.items():
            gauges[f"kelp_broker_group_commit_{name}"] = (
                f"Since start, cross-partition group commit: {name.replace('_', ' ')}.", (),
                [((), value)])
        coordinator = transactions()
        if coordinator is not None:
            open_now = sum(1 for txn in coordinator.txns.values() if txn.state.open)
            gauges["kelp_broker_transactions_open"] = (
                "Transactions under way.", (), [((), open_now)])
            gauges["kelp_broker_transactional_ids"] = (
                "Transactional ids the coordinator keeps.", (), [((), len(coordinator.txns))])
        if cluster is not None:
            gauges.update(cluster())
        return gauges

    return read
