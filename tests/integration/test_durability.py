"""Acknowledged records survive a broker SIGKILL; appends continue at the right offset."""

from __future__ import annotations

from confluent_kafka import Producer

from tests.kelp_procs import Cluster
from tests.partition_reader import read_partition


def produce(bootstrap: str, topic: str, start: int, count: int, acks: str) -> list[int]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                         "message.send.max.retries": 20, "retry.backoff.ms": 100})
    offsets: list[int] = []
    errors: list[object] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    for i in range(start, start + count):
        producer.produce(topic, key=str(i).encode(), value=f"record-{i}".encode(),
                         partition=0, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    return offsets


def consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    stored = read_partition(bootstrap, topic, expected=expected, idle_polls=15)
    return [stored[offset] for offset in sorted(stored)]


def test_sigkill_loses_nothing_acknowledged(own_cluster: Cluster, topic_name: str) -> None:
    # acks=1: acknowledged once written to the segment file (the page cache survives a process
    # crash); acks=all also waits for fdatasync (survives a power cut too).
    first = produce(own_cluster.bootstrap, topic_name, 0, 5000, acks="1")
    second = produce(own_cluster.bootstrap, topic_name, 5000, 5000, acks="all")
    assert sorted(first + second) == list(range(10_000))

    own_cluster.restart_broker(hard=True)

    third = produce(own_cluster.bootstrap, topic_name, 10_000, 1000, acks="all")
    assert sorted(third) == list(range(10_000, 11_000))  # continues at the right offset
    values = consume_all(own_cluster.bootstrap, topic_name, 11_000)
    assert values == [f"record-{i}".encode() for i in range(11_000)]


def test_sigkill_mid_stream_keeps_every_acknowledged_record(own_cluster: Cluster,
                                                            topic_name: str) -> None:
    """Kill the broker while a producer is busy: each record it was told is stored, is."""
    producer = Producer({"bootstrap.servers": own_cluster.bootstrap, "acks": "1",
                         "linger.ms": 2, "message.timeout.ms": 30000})
    acknowledged: dict[int, bytes] = {}

    def delivered(err, msg) -> None:
        if err is None:
            acknowledged[msg.offset()] = msg.value()

    killed = False
    for i in range(60_000):
        producer.produce(topic_name, value=f"r{i}".encode(), partition=0, on_delivery=delivered)
        producer.poll(0)
        if i == 30_000:
            producer.flush(30)  # some acknowledged for sure, more in flight below
        if i == 31_000 and not killed:
            own_cluster.broker.kill()
            killed = True
            own_cluster.broker.start()
    assert producer.flush(60) == 0
    assert len(acknowledged) >= 30_000

    stored = read_partition(own_cluster.bootstrap, topic_name)
    missing = {o: v for o, v in acknowledged.items() if stored.get(o) != v}
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {list(missing)[:5]}"
