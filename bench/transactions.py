"""Transactional produce against idempotent produce (librdkafka, acks=all) on the same cluster
in the same run: the cost of AddPartitionsToTxn, EndTxn and the markers per transaction."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kelp_procs import Cluster

PARTITIONS = 3


def _producer(bootstrap: str, **extra: object) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                     "batch.size": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                     "compression.type": "none", **extra})


def _send(producer: Producer, topic: str, first: int, count: int, value: bytes) -> None:
    for i in range(first, first + count):
        while True:
            try:
                producer.produce(topic, value=value, key=b"%d" % i, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.01)


def _idempotent(bootstrap: str, topic: str, records: int, value: bytes) -> float:
    producer = _producer(bootstrap, **{"enable.idempotence": True})
    _send(producer, topic, 0, PARTITIONS, value)  # warm-up: metadata, producer id
    producer.flush(30)
    started = time.perf_counter()
    _send(producer, topic, 0, records, value)
    if producer.flush(120):
        raise RuntimeError("records not delivered")
    return time.perf_counter() - started


def _transactional(bootstrap: str, topic: str, records: int, per_txn: int,
                   value: bytes) -> float:
    producer = _producer(bootstrap, **{"transactional.id": f"{topic}-bench"})
    producer.init_transactions(30)
    producer.begin_transaction()
    _send(producer, topic, 0, PARTITIONS, value)
    producer.commit_transaction(30)
    started = time.perf_counter()
    for first in range(0, records, per_txn):
        producer.begin_transaction()
        _send(producer, topic, first, min(per_txn, records - first), value)
        producer.commit_transaction(60)
    return time.perf_counter() - started


def run(records: int, record_bytes: int) -> list[tuple[str, str, str, float]]:
    value = b"v" * record_bytes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
            names = ["bench-idem", "bench-txn-big", "bench-txn-small"]
            for future in admin.create_topics([NewTopic(n, PARTITIONS) for n in names]).values():
                future.result(30)
            base = records / _idempotent(cluster.bootstrap, "bench-idem", records, value)
            print(f"idempotent produce acks=all: {base:,.0f} records/s ({PARTITIONS} partitions)")
            for topic, per_txn in (("bench-txn-big", 10_000), ("bench-txn-small", 100)):
                count = records if per_txn > 1000 else min(records, 20_000)
                rate = count / _transactional(cluster.bootstrap, topic, count, per_txn, value)
                print(f"transactional produce, {per_txn} records per transaction: "
                      f"{rate:,.0f} records/s | idempotent {base:,.0f} records/s")
                rows.append((f"txn produce {record_bytes} B, {per_txn}/txn", f"{rate:,.0f} rec/s",
                             f"{base:,.0f} idem", rate / base))
        finally:
            cluster.stop()
    return rows
