"""Small helpers around real clients shared by several tests."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def read_partition(bootstrap: str, topic: str, partition: int = 0, *,
                   expected: int | None = None, idle_polls: int = 5) -> dict[int, bytes]:
    """offset -> value of everything in a partition, read with librdkafka (CRC checks on).

    Stops once ``expected`` records arrived, or after ``idle_polls`` empty one-second polls.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False, "check.crcs": True})
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    stored: dict[int, bytes] = {}
    idle = 0
    try:
        while idle < idle_polls and (expected is None or len(stored) < expected):
            batch = consumer.consume(10000, timeout=1.0)
            idle = 0 if batch else idle + 1
            for message in batch:
                assert message.error() is None, message.error()
                stored[message.offset()] = message.value()
    finally:
        consumer.close()
    return stored
