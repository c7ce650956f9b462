"""Helpers for the transaction tests: read a topic the way a read_committed (or
read_uncommitted) consumer sees it, with librdkafka."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def read_topic(bootstrap: str, topic: str, partitions: int, *, committed: bool,
               expected: int | None = None, settle_s: float = 1.0,
               timeout_s: float = 30.0) -> dict[int, list[bytes]]:
    """partition -> values in offset order, as a consumer with this isolation level sees
    them. Reads until ``expected`` records arrived (then ``settle_s`` more, to catch any
    extra) or, without ``expected``, until ``settle_s`` passes with nothing new."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
        "enable.auto.commit": False, "check.crcs": True,
        "isolation.level": "read_committed" if committed else "read_uncommitted"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    seen: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    count = 0
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.2)
            for message in batch:
                assert message.error() is None, message.error()
                seen[message.partition()].append(message.value())
                count += 1
            if batch:
                quiet_since = time.monotonic()
            if expected is not None and count < expected:
                continue
            if time.monotonic() - quiet_since >= settle_s:
                break
    finally:
        consumer.close()
    return seen
