"""Replication's price, in one run: librdkafka (idempotent, acks=all) producing to one broker
with RF=1 against three brokers on a real etcd with RF=3 behind a routing gateway.

Two figures each: throughput (as fast as the producer can) and acknowledgement latency at a
fixed rate (p50 / p99, each record timed from produce() to its delivery report), with the CPU
seconds every process spent. All processes share this machine's cores (2 here): an RF=3
cluster on one host pays for three brokers' work on the same cores, which a real deployment
spreads over machines.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.cluster_procs import BrokerCluster, gateway_on, wait_for
from tests.kelp_procs import Cluster, Proc

PARTITIONS = 3
LATENCY_RATE = 2_000  # records/s
LATENCY_SECONDS = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(procs: list[Proc]) -> float:
    total = 0
    for proc in procs:
        assert proc.popen is not None
        fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                     "linger.ms": 5, "batch.size": 1_000_000,
                     "queue.buffering.max.kbytes": 1_048_576, "compression.type": "none"})


def _throughput(bootstrap: str, records: int, value: bytes) -> float:
    producer = _producer(bootstrap)
    producer.produce("bench", value, partition=0)
    producer.flush(30)
    started = time.perf_counter()
    for i in range(records):
        while True:
            try:
                producer.produce("bench", value, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(180):
        raise RuntimeError("records not delivered")
    return records / (time.perf_counter() - started)


@contextlib.contextmanager
def replicated_cluster(workdir: Path) -> Iterator[tuple[str, list[Proc]]]:
    """Three registered brokers on a real etcd behind a routing gateway: (bootstrap, the
    kelp processes), all stopped on exit."""
    three = BrokerCluster(workdir).start()
    gateway = None
    try:
        wait_for(lambda: all(b.cluster()["registered"] for b in three.brokers),
                 "three brokers registered")
        gateway, port = gateway_on(three.brokers[0], workdir, "--no-registry",
                                   "--etcd", three.etcd.endpoint)
        yield f"127.0.0.1:{port}", [b.proc for b in three.brokers] + [gateway]
    finally:
        if gateway is not None:
            gateway.stop()
        three.stop()


def _latency(bootstrap: str, value: bytes) -> tuple[float, float]:
    """(p50, p99) acknowledgement latency in ms at LATENCY_RATE records/s."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 0})
    producer.produce("bench", value, partition=0)
    producer.flush(30)
    latencies: list[float] = []
    count = int(LATENCY_RATE * LATENCY_SECONDS)
    started = time.perf_counter()
    for i in range(count):
        due = started + i / LATENCY_RATE
        while (now := time.perf_counter()) < due:
            producer.poll(min(due - now, 0.001))
        sent = time.perf_counter()
        producer.produce("bench", value, partition=i % PARTITIONS,
                         on_delivery=lambda _e, _m, s=sent: latencies.append(
                             time.perf_counter() - s))
        producer.poll(0)
    producer.flush(60)
    latencies.sort()
    return (latencies[len(latencies) // 2] * 1000,
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000)


def _measure(bootstrap: str, procs: list[Proc], records: int, value: bytes,
             label: str) -> tuple[float, float, float, float]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("bench", PARTITIONS, 3 if "RF=3" in label else 1)])[
        "bench"].result(30)
    cpu_before = _cpu_seconds(procs)
    rate = _throughput(bootstrap, records, value)
    cpu = _cpu_seconds(procs) - cpu_before
    p50, p99 = _latency(bootstrap, value)
    print(f"{label}: {rate:,.0f} records/s, {cpu:.1f} CPU s in kelp's processes for "
          f"{records:,} records; acks at {LATENCY_RATE}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    return rate, cpu, p50, p99


def run(records: int, record_bytes: int) -> list[tuple[str, str, str, float]]:
    value = b"v" * record_bytes
    records = min(records, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        single = Cluster(Path(tmp) / "single").start()
        try:
            one = _measure(single.bootstrap, [single.broker, single.gateway], records, value,
                           "RF=1, one broker")
        finally:
            single.stop()
        with replicated_cluster(Path(tmp) / "three") as (bootstrap, procs):
            replicated = _measure(bootstrap, procs, records, value, "RF=3, three brokers")
    size = f"{record_bytes} B"
    return [
        (f"produce {size} RF=3 vs RF=1 (rec/s)", f"{replicated[0]:,.0f}", f"{one[0]:,.0f}",
         replicated[0] / one[0]),
        ("CPU s per 100k records RF=3 vs RF=1", f"{replicated[1] * 1e5 / records:.1f}",
         f"{one[1] * 1e5 / records:.1f}", one[1] / max(replicated[1], 1e-9)),
        ("ack p99 ms at 2k/s RF=3 vs RF=1", f"{replicated[3]:.1f} (p50 {replicated[2]:.1f})",
         f"{one[3]:.1f} (p50 {one[2]:.1f})", one[3] / replicated[3]),
    ]
