"""Produce path: a librdkafka producer (1 KiB records) through gateway and broker to disk."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import trio
from confluent_kafka import Producer

from bench import raw_pipe
from tests.kelp_procs import Cluster


def _produce(bootstrap: str, topic: str, records: int, record_bytes: int, acks: str) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                         "batch.size": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                         "compression.type": "none"})
    value = b"v" * record_bytes
    # Warm up: topic creation and metadata are not part of the figure.
    producer.produce(topic, value=value, partition=0)
    producer.flush(30)
    started = time.perf_counter()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value=value, key=b"%d" % i, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"{remaining} records not delivered")
    return elapsed


def run(records: int, record_bytes: int) -> list[tuple[str, str, str, float]]:
    total = records * record_bytes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            for acks in ("1", "all"):
                seconds = _produce(cluster.bootstrap, f"bench-produce-acks-{acks}", records,
                                   record_bytes, acks)
                raw_seconds = trio.run(raw_pipe.measure, total)
                kelp_rate = total / seconds / 1e6
                raw_rate = total / raw_seconds / 1e6
                print(f"produce acks={acks}: {records / seconds:,.0f} records/s "
                      f"{kelp_rate:,.1f} MB/s | raw two-hop trio pipe {raw_rate:,.1f} MB/s")
                rows.append((f"produce {record_bytes} B records, acks={acks}",
                             f"{records / seconds:,.0f} rec/s {kelp_rate:,.1f} MB/s",
                             f"{raw_rate:,.1f} MB/s", kelp_rate / raw_rate))
        finally:
            cluster.stop()
    return rows
