"""Idle: with a consumer long-polling an empty partition, the three processes barely run.

The partition must exist: a consumer assigned to a topic nobody created asks for metadata
every second instead of fetching, which is not the idle this checks."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kelp_procs import Cluster, Proc

MEASURE_S = 30.0
CPU_BOUND_PERCENT = 1.0


def cpu_seconds(proc: Proc) -> float:
    assert proc.popen is not None
    with open(f"/proc/{proc.popen.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_processes_use_under_one_percent_cpu(tmp_path: Path, topic_name: str) -> None:
    cluster = Cluster(tmp_path / "c").start()
    sidecar, _socket, _http_port = cluster.sidecar()
    consumer = None
    stop = threading.Event()
    poller = None
    received: list[bytes] = []
    try:
        sidecar.start()
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "idle",
                             "fetch.wait.max.ms": 500})
        consumer.assign([TopicPartition(topic_name, 0, OFFSET_END)])

        def poll() -> None:
            while not stop.is_set():
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    received.append(message.value())

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(3)  # settle: metadata, topic creation, first fetches
        procs = (cluster.broker, cluster.gateway, sidecar)
        fetches_before = cluster.gateway_health()["idle_fetches_answered"]
        before = [cpu_seconds(p) for p in procs]
        time.sleep(MEASURE_S)
        each = {p.name: cpu_seconds(p) - b for p, b in zip(procs, before, strict=True)}
        fetches = cluster.gateway_health()["idle_fetches_answered"] - fetches_before
        percent = sum(each.values()) / MEASURE_S * 100
        print(f"idle CPU of broker+gateway+sidecar: {percent:.2f}% over {MEASURE_S:.0f}s "
              f"(CPU seconds: {', '.join(f'{n} {s:.2f}' for n, s in each.items())}), "
              f"{fetches} empty fetches answered")
        # The consumer really was long-polling (about two fetches a second) ...
        assert fetches >= MEASURE_S, fetches
        assert percent < CPU_BOUND_PERCENT
        # ... and still is: a record written now reaches it.
        producer = Producer({"bootstrap.servers": cluster.bootstrap})
        producer.produce(topic_name, b"after the quiet", partition=0)
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [b"after the quiet"]
    finally:
        stop.set()
        if poller is not None:
            poller.join()
        if consumer is not None:
            consumer.close()
        sidecar.stop()
        cluster.stop()
