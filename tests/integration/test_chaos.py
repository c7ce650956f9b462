"""Chaos: SIGKILL the gateway, then the sidecar, then the broker under a live producer and a
group consumer. ``kelp up`` restarts each; the clients resume; every acknowledged record is
stored exactly once and consumed, and the group's committed offsets end at the log end."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kelp_up import Up, running_up
from tests.partition_reader import read_partition

TOPIC = "chaos"
PARTITIONS = 3
RATE_PER_S = 400


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    yield from running_up(tmp_path)


class ProducerLoop(threading.Thread):
    """An idempotent acks=all producer sending "n" for n = 0, 1, ... until stopped."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "acks": "all", "linger.ms": 5, "message.timeout.ms": 120_000,
                                  "retry.backoff.ms": 100, "reconnect.backoff.max.ms": 500})
        self.acked: set[bytes] = set()
        self.failed: list[str] = []
        self.stop = threading.Event()

    def _report(self, err: object, message: object) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.acked.add(message.value())  # type: ignore[attr-defined]

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            self.producer.produce(TOPIC, value=b"%d" % n, key=b"%d" % (n % 97),
                                  on_delivery=self._report)
            n += 1
            self.producer.poll(0)
            time.sleep(1 / RATE_PER_S)
        self.producer.flush(120)


class ConsumerLoop(threading.Thread):
    """A group consumer committing what it has processed after every poll."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-group",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "session.timeout.ms": 10_000,
                                  "reconnect.backoff.max.ms": 500})
        self.seen: set[bytes] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        self.consumer.subscribe([TOPIC])
        try:
            while not self.stop.is_set():
                batch = self.consumer.consume(500, timeout=0.5)
                values = [m.value() for m in batch if m.error() is None]
                self.seen.update(values)
                if values:
                    # A restart in progress may refuse it: the next commit covers these too.
                    with contextlib.suppress(KafkaException):
                        self.consumer.commit(asynchronous=False)
        finally:
            self.consumer.close()


def _wait_restarted(up: Up, name: str, start_at: int) -> None:
    """Until the supervisor has noticed the kill and the new ``name`` logged ready."""
    needle = f"kelp: {name} exited (signal SIGKILL); restarting"
    up.wait_for(needle, start_at=start_at)
    after = up.log().index(needle, start_at)
    deadline = time.monotonic() + 60
    while not any(line.startswith(f"{name:8}|") and "msg=ready" in line
                  for line in up.log()[after:].splitlines()):
        assert time.monotonic() < deadline, up.log()[-3000:]
        time.sleep(0.1)


def test_kill_each_process_under_load(up: Up) -> None:
    admin = AdminClient({"bootstrap.servers": up.bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS)])[TOPIC].result(30)
    producer, consumer = ProducerLoop(up.bootstrap), ConsumerLoop(up.bootstrap)
    producer.start()
    consumer.start()
    try:
        time.sleep(4)
        for name, module in (("gateway", "gateway"), ("sidecar", "rdma"), ("broker", "broker")):
            mark = len(up.log())
            os.kill(up.child_pid(module), signal.SIGKILL)
            _wait_restarted(up, name, mark)
            time.sleep(4)  # the clients find their way back and carry on
        acked_before_stop = len(producer.acked)
        assert acked_before_stop > RATE_PER_S * 5, (acked_before_stop, producer.failed[:5])
    finally:
        producer.stop.set()
        producer.join(150)
    assert not producer.failed, producer.failed[:5]
    # The consumer catches up with everything acknowledged, then stops and commits.
    deadline = time.monotonic() + 90
    while not producer.acked <= consumer.seen and time.monotonic() < deadline:
        time.sleep(0.5)
    consumer.stop.set()
    consumer.join(30)
    assert producer.acked <= consumer.seen, f"lost {len(producer.acked - consumer.seen)}"

    # 0 lost, 0 duplicated in the log itself: each value stored exactly once.
    stored: list[bytes] = []
    for partition in range(PARTITIONS):
        stored += read_partition(up.bootstrap, TOPIC, partition).values()
    assert len(stored) == len(set(stored)), "duplicates in the log"
    assert producer.acked <= set(stored)

    # The group's committed offsets end at the log end of every partition.
    checker = Consumer({"bootstrap.servers": up.bootstrap, "group.id": "chaos-group"})
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        committed = checker.committed(partitions, timeout=30)
        for tp in committed:
            _low, high = checker.get_watermark_offsets(tp, timeout=30)
            assert tp.offset == high, (tp.partition, tp.offset, high)
    finally:
        checker.close()
