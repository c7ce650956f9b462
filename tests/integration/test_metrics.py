"""Prometheus metrics of the broker, the gateway and the sidecar, scraped over HTTP and parsed
with prometheus-client's own parser: per-topic bytes and records, partition offsets, fsync
latency, a consumer group's lag equal to the real lag after the consumer stopped midway, Kafka
requests per API with their errors and latency, registry request latency, sidecar counters."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from tests.kelp_procs import REPO, Cluster

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        text = reply.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_broker_and_gateway_metrics(cluster: Cluster, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 2)])[topic_name].result(30)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for n in range(100):
        producer.produce(topic_name, value=b"v%d" % n, partition=n % 2)
    assert producer.flush(30) == 0
    # A group consumes 40 records, commits and stops midway.
    group = f"{topic_name}-lag"
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    seen = 0
    for p in (0, 1):  # 20 records of each partition
        consumer.assign([TopicPartition(topic_name, p, 0)])
        deadline, taken = time.monotonic() + 30, 0
        while taken < 20 and time.monotonic() < deadline:
            taken += len([m for m in consumer.consume(20 - taken, timeout=1)
                          if m.error() is None])
        seen += taken
        consumer.commit(offsets=[TopicPartition(topic_name, p, taken)], asynchronous=False)
    committed = {tp.partition: tp.offset for tp in consumer.committed(
        [TopicPartition(topic_name, p) for p in (0, 1)], timeout=10)}
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic_name, p), timeout=10)[1]
            for p in (0, 1)}
    consumer.close()
    assert seen == 40 and sum(committed.values()) == 40

    broker = scrape(cluster.broker_http_port)
    for p in (0, 1):
        labels = {"topic": topic_name, "partition": str(p)}
        assert value(broker, "kelp_broker_partition_log_end_offset", **labels) == ends[p]
        assert value(broker, "kelp_broker_partition_log_start_offset", **labels) == 0
        assert value(broker, "kelp_broker_partition_last_stable_offset", **labels) == ends[p]
        assert value(broker, "kelp_broker_partition_size_bytes", **labels) > 0
        assert value(broker, "kelp_broker_consumer_group_committed_offset", group=group,
                     **labels) == committed[p]
        assert value(broker, "kelp_broker_consumer_group_lag", group=group, **labels) == \
            ends[p] - committed[p]
    assert sum(value(broker, "kelp_broker_consumer_group_lag", group=group,
                     topic=topic_name, partition=str(p)) for p in (0, 1)) == 60
    assert value(broker, "kelp_broker_produced_records_total", topic=topic_name) == 100
    assert value(broker, "kelp_broker_produced_bytes_total", topic=topic_name) > 100
    assert value(broker, "kelp_broker_fetched_records_total", topic=topic_name) >= 40
    assert value(broker, "kelp_broker_fsync_seconds_count") > 0  # acks=all waits for fsync
    assert value(broker, "kelp_broker_group_commit_bytes_count") > 0
    # Linux (CI) has native AIO: the data syncs went to the kernel, not to worker threads.
    assert value(broker, "kelp_broker_group_commit_aio_syncs") > 0
    assert value(broker, "kelp_broker_group_commit_thread_syncs") == 0
    assert 0 < value(broker, "kelp_broker_group_commit_rounds") <= value(
        broker, "kelp_broker_group_commit_jobs")
    assert value(broker, "kelp_broker_topics") >= 1
    assert value(broker, "process_resident_memory_bytes") > 10e6

    # A request refused with a top-level error, and a registry request.
    refused = Producer({"bootstrap.servers": cluster.bootstrap,
                        "transactional.id": f"{topic_name}-tx",
                        "transaction.timeout.ms": 2_000_000})  # over the 15-minute maximum
    try:
        refused.init_transactions(10)
        raise AssertionError("init_transactions should have been refused")
    except KafkaException as exc:
        assert "timeout" in str(exc).lower()
    with urllib.request.urlopen(f"{cluster.registry_url}/subjects", timeout=10) as reply:
        assert json.loads(reply.read()) is not None
    gateway = scrape(cluster.gateway_http_port)
    assert value(gateway, "kelp_gateway_requests_total", api="PRODUCE") >= 1
    assert value(gateway, "kelp_gateway_request_duration_seconds_count", api="FETCH") >= 1
    assert value(gateway, "kelp_gateway_request_errors_total", api="INIT_PRODUCER_ID",
                 error="invalid_transaction_timeout") >= 1
    assert value(gateway, "kelp_registry_request_duration_seconds_count", method="GET",
                 status="200") >= 1
    assert value(gateway, "kelp_gateway_connections") >= 1
    assert ("kelp_gateway_fetch_pool_used_bytes", ()) in gateway


def test_sidecar_metrics(cluster: Cluster, tmp_path: Path) -> None:
    proc, _socket, http_port = cluster.sidecar("metrics-sidecar", "--no-ucx")
    proc.start()
    try:
        proc.wait_for_log("ready")
        sidecar = scrape(http_port)
        assert value(sidecar, "kelp_sidecar_buffers") > 0
        assert value(sidecar, "kelp_sidecar_buffers_free") == value(sidecar,
                                                                    "kelp_sidecar_buffers")
        assert value(sidecar, "kelp_sidecar_http_requests_total") >= 1  # this scrape
        assert ("kelp_sidecar_rdma_reads_total", ()) in sidecar
        assert ("kelp_sidecar_fallback_reads_total", ()) in sidecar
    finally:
        proc.stop()


def test_the_grafana_dashboard_queries_metrics_kelp_serves(cluster: Cluster) -> None:
    """Every metric compose/grafana/dashboards/kelp.json asks Prometheus for is one the
    broker, the gateway or the sidecar exposes (a renamed metric would leave a panel empty)."""
    dashboard = json.loads((REPO / "compose" / "grafana" / "dashboards" / "kelp.json")
                           .read_text())
    asked = {re.sub(r"_(total|bucket|count|sum)$", "", name)
             for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"\b(?:kelp|process)_[a-z_]+", target["expr"])}
    proc, _socket, http_port = cluster.sidecar("dashboard-sidecar", "--no-ucx")
    proc.start()
    try:
        proc.wait_for_log("ready")
        served = set()
        for port in (cluster.broker_http_port, cluster.gateway_http_port, http_port):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                served |= {family.name for family in
                           text_string_to_metric_families(r.read().decode())}
    finally:
        proc.stop()
    assert len(asked) >= 15
    assert asked <= served, sorted(asked - served)
