"""Memory has a ceiling whatever clients do: non-reading fetchers, half-sent huge frames,
slowloris and idle sockets. Meanwhile another client keeps producing and consuming."""

from __future__ import annotations

import contextlib
import datetime
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kio.schema.fetch.v4.request import FetchPartition, FetchRequest, FetchTopic

from tests.kafka_raw import RawClient, encode_request
from tests.kelp_procs import Cluster
from tests.partition_reader import read_partition

RSS_LIMIT_MB = 300


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[Cluster]:
    # Half-sent frames waiting for room are not read, so their closing is noticed only when
    # their request timeout ends them: 10 s keeps the test short.
    running = Cluster(tmp_path / "bounded", gateway_args=["--request-timeout-ms", "10000"])
    try:
        yield running.start()
    finally:
        running.stop()


def _fill(bootstrap: str, topic: str, megabytes: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "batch.size": 1_000_000, "compression.type": "none"})
    value = b"m" * 1024
    for i in range(megabytes * 1024):
        while True:
            try:
                producer.produce(topic, value=value, key=b"%d" % i, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def _non_reading_fetcher(bootstrap: str, topic: str) -> socket.socket:
    host, port = bootstrap.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # and never read
    sock.connect((host, int(port)))
    fetch = FetchRequest(replica_id=-1, max_wait=datetime.timedelta(milliseconds=100),
                         min_bytes=1, max_bytes=50 * 1024 * 1024, isolation_level=0,
                         topics=(FetchTopic(topic=topic, partitions=(FetchPartition(
                             partition=0, fetch_offset=0,
                             partition_max_bytes=10 * 1024 * 1024),)),))
    for correlation in range(4):
        sock.sendall(encode_request(fetch, correlation_id=correlation))
    return sock


def _half_sent_frame(bootstrap: str) -> socket.socket:
    """A 40 MB Produce frame of which only the size, a header and 10 MB arrive."""
    host, port = bootstrap.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(2)
    header = struct.pack(">hhih", 0, 9, 1, 1) + b"x\x00"
    with contextlib.suppress(TimeoutError):  # the gateway stopped reading it: the point
        sock.sendall(struct.pack(">i", 40 * 1024 * 1024) + header + b"\x00" * (10 << 20))
    return sock


def test_every_process_stays_bounded_under_hostile_clients(bounded: Cluster) -> None:
    cluster = bounded
    _fill(cluster.bootstrap, "big", 24)
    pids = {"broker": cluster.broker.popen.pid, "gateway": cluster.gateway.popen.pid}
    peak = dict.fromkeys(pids, 0.0)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_mb(pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    hostile: list[socket.socket] = []
    try:
        hostile += [_non_reading_fetcher(cluster.bootstrap, "big") for _ in range(50)]
        senders = [threading.Thread(target=lambda: hostile.append(
            _half_sent_frame(cluster.bootstrap))) for _ in range(20)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(30)
        time.sleep(3)  # let whatever the gateway and broker will hold pile up
        # Meanwhile an ordinary client produces and consumes.
        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        for i in range(2000):
            producer.produce("ordinary", value=b"v%d" % i, partition=0)
        assert producer.flush(60) == 0
        del producer  # librdkafka closes its connections when the handle goes
        got = read_partition(cluster.bootstrap, "ordinary", expected=2000)
        assert len(got) == 2000
        time.sleep(2)
    finally:
        stop.set()
        watcher.join(5)
        for sock in hostile:
            sock.close()
    print(f"peak RSS MB: {peak}")
    for name, value in peak.items():
        assert value < RSS_LIMIT_MB, f"{name} peaked at {value:.0f} MB"
    assert cluster.gateway.popen.poll() is None and cluster.broker.popen.poll() is None
    # Once they are gone, everything they held is given back.
    deadline = time.monotonic() + 30
    while True:
        health = cluster.gateway_health()
        if (health["connections"], health["request_pool_used"],
                health["fetch_pool_used"]) == (0, 0, 0):
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.2)


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "impatient",
                      gateway_args=["--request-timeout-ms", "1500",
                                    "--connections-max-idle-ms", "2000"])
    try:
        yield running.start()
    finally:
        running.stop()


def test_slowloris_and_idle_connections_are_closed(impatient: Cluster) -> None:
    slow = [RawClient(impatient.bootstrap) for _ in range(20)]
    for client in slow:  # a size and a few bytes, then nothing
        client.send_bytes(struct.pack(">i", 1000) + b"\x00\x03")
    idle = [RawClient(impatient.bootstrap) for _ in range(5)]
    started = time.monotonic()
    for client in slow:
        assert client.is_closed_by_peer(timeout=10)
    assert time.monotonic() - started < 6
    for client in idle:
        assert client.is_closed_by_peer(timeout=10)
    for client in slow + idle:
        client.close()
    assert "request not received whole within the request timeout" in \
        impatient.gateway.log_text()
    # A busy client is not idle: it is served throughout.
    busy = RawClient(impatient.bootstrap)
    from tests.integration.test_gateway_protocol import ApiVersionsV0
    for _ in range(5):
        assert busy.request(ApiVersionsV0()).error_code == 0
        time.sleep(0.8)
    busy.close()
