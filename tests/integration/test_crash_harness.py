"""Crash harness: a librdkafka producer (acks=all) keeps producing while the broker is killed
with SIGKILL and restarted, again and again. Every record whose delivery report said "stored
at offset N" must be at offset N afterwards — under the default durability policy (fsync
before the ack) and the interval policy (ack after the write; a process crash loses nothing
because the bytes were already in the file). The producer is idempotent, so the retries that
follow each kill must not store anything twice: the broker rebuilds producer state from the
log and answers a retry of a stored batch with its original offsets.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from confluent_kafka import Producer

from tests.kelp_procs import Cluster
from tests.partition_reader import read_partition

CYCLES = int(os.environ.get("KELP_CRASH_CYCLES", "6"))


def run_harness(cluster: Cluster, topic: str, cycles: int) -> tuple[int, int]:
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                         "enable.idempotence": True,
                         "linger.ms": 2, "message.timeout.ms": 60000,
                         "retry.backoff.ms": 50, "reconnect.backoff.ms": 20,
                         "reconnect.backoff.max.ms": 200})
    acknowledged: dict[int, bytes] = {}
    failed: list[object] = []

    def delivered(err, msg) -> None:
        if err is None:
            acknowledged[msg.offset()] = msg.value()
        else:
            failed.append(err)

    stop = threading.Event()
    sent = 0

    def produce_forever() -> None:
        nonlocal sent
        while not stop.is_set():
            try:
                producer.produce(topic, value=b"r%d" % sent, partition=0,
                                 on_delivery=delivered)
                sent += 1
            except BufferError:
                pass
            producer.poll(0.001 if sent % 100 == 0 else 0)

    worker = threading.Thread(target=produce_forever)
    worker.start()
    try:
        for _ in range(cycles):
            time.sleep(0.4)
            cluster.broker.kill()
            cluster.broker.start()
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert producer.flush(60) == 0

    stored = read_partition(cluster.bootstrap, topic)

    lost = {o: v for o, v in acknowledged.items() if stored.get(o) != v}
    assert not lost, f"{len(lost)} acknowledged records lost or moved, e.g. {sorted(lost)[:5]}"
    duplicated = len(stored) - len(set(stored.values()))
    assert duplicated == 0, f"{duplicated} records stored twice"
    assert len(stored) == sent, f"{sent} produced, {len(stored)} stored"
    assert not failed, failed[:3]
    return len(acknowledged), len(stored)


@pytest.mark.parametrize("policy", ["fsync-on-ack", "interval"])
def test_acknowledged_records_survive_repeated_sigkill(tmp_path, topic_name, policy) -> None:
    broker_args = [] if policy == "fsync-on-ack" else ["--config", "flush.ms=1000"]
    cluster = Cluster(tmp_path / "c", broker_args=broker_args)
    cluster.start()
    try:
        acked, stored = run_harness(cluster, topic_name, CYCLES)
        print(f"{policy}: {CYCLES} SIGKILL cycles, {acked} acknowledged records checked, "
              f"{stored} stored")
        assert acked > 1000
    finally:
        cluster.stop()
