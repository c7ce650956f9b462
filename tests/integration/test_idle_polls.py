"""An idle consumer's long polls are answered by the gateway (gateway.idle_polls) without holding
fetch memory, and the first record produced after the idle spell still reaches it at once, from
the broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kelp_procs import Cluster


def test_idle_fetches_are_answered_by_the_gateway_and_data_still_arrives(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c").start()
    stop = threading.Event()
    received: list[tuple[float, bytes]] = []
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "idle-polls",
                         "fetch.wait.max.ms": 200, "isolation.level": "read_committed"})
    poller = None
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic("quiet", 2, 1)])["quiet"].result(30)
        consumer.assign([TopicPartition("quiet", p, OFFSET_END) for p in (0, 1)])

        def poll() -> None:
            while not stop.is_set():
                message = consumer.poll(0.1)
                if message is not None and message.error() is None:
                    received.append((time.monotonic(), message.value()))

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(3)  # ~15 long polls of 200 ms, all on an empty topic
        health = cluster.gateway_health()
        assert health["idle_fetches_answered"] >= 5, health
        assert health["idle_partitions_watched"] == 2, health
        # A fetch waiting in the gateway for nothing holds none of its fetch memory (50 MiB
        # for librdkafka's default): idle consumers must not starve the busy ones.
        used = []
        for _ in range(20):
            used.append(cluster.gateway_health()["fetch_pool_used"])
            time.sleep(0.05)
        assert max(used) == 0, used

        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        for partition, value in ((1, b"first"), (0, b"second")):
            sent = time.monotonic()
            producer.produce("quiet", value, partition=partition)
            assert producer.flush(10) == 0
            deadline = time.monotonic() + 5
            while not any(v == value for _, v in received) and time.monotonic() < deadline:
                time.sleep(0.01)
            arrived = [at for at, v in received if v == value]
            assert arrived, f"{value!r} never reached the idle consumer"
            # Within a long poll or so: the watch ended, the fetch went to the broker.
            assert arrived[0] - sent < 1.0, arrived[0] - sent
            time.sleep(1)  # idle again: the partitions are watched at their new offsets
        assert [v for _, v in received] == [b"first", b"second"]
        assert cluster.gateway_health()["idle_partitions_watched"] == 2
    finally:
        stop.set()
        if poller is not None:
            poller.join()
        consumer.close()
        cluster.stop()
