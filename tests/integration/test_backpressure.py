"""Backpressure: a producer flood against a slow broker is throttled, and memory stays bounded."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from tests.kelp_procs import Cluster, Proc

RSS_BOUND_MB = 400


def rss_mb(proc: Proc) -> float:
    assert proc.popen is not None
    with open(f"/proc/{proc.popen.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_flood_against_a_slow_disk_is_throttled_and_bounded(tmp_path, topic_name) -> None:
    cluster = Cluster(tmp_path / "c", broker_args=["--debug", "append-delay-ms=30"])
    cluster.start()
    try:
        throttles: list[int] = []
        producer = Producer({
            "bootstrap.servers": cluster.bootstrap, "acks": "1", "linger.ms": 5,
            "batch.size": 1_000_000, "queue.buffering.max.kbytes": 65_536,
            "throttle_cb": lambda event: throttles.append(event.throttle_time)})
        value = b"x" * 1024
        peak = {"broker": 0.0, "gateway": 0.0}
        deadline = time.monotonic() + 8
        produced = 0
        while time.monotonic() < deadline:
            for _ in range(5000):
                try:
                    producer.produce(topic_name, value=value, partition=0)
                    produced += 1
                except BufferError:
                    break
            producer.poll(0.01)
            peak["broker"] = max(peak["broker"], rss_mb(cluster.broker))
            peak["gateway"] = max(peak["gateway"], rss_mb(cluster.gateway))
        assert producer.flush(60) == 0
        print(f"produced {produced}, peak RSS {peak}, throttle events {len(throttles)}")
        assert throttles and max(throttles) > 0, "the client never saw throttle_time_ms"
        assert cluster.gateway_health()["throttled"] > 0
        assert peak["broker"] < RSS_BOUND_MB and peak["gateway"] < RSS_BOUND_MB, peak
    finally:
        cluster.stop()
