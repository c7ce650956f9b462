"""Fetch byte limits as Kafka applies them (KIP-74): a response stays within the request's
``max_bytes``, except that the first partition with data returns its first batch whole even
when it alone is larger; later partitions get nothing when their next batch does not fit."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.index import load_request_schema

from tests.clients.prepare import run_java
from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster

BIG = 900_000


def _two_big_batches(cluster: Cluster, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, 2)])[topic].result(30)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 0,
                         "message.max.bytes": 2_000_000, "compression.type": "none"})
    for partition in (0, 1):
        producer.produce(topic, value=bytes([partition]) * BIG, partition=partition)
    assert producer.flush(30) == 0


def test_a_fetch_stays_within_max_bytes_past_its_first_partition(cluster: Cluster,
                                                                 topic_name: str) -> None:
    _two_big_batches(cluster, topic_name)
    fetch = load_request_schema(1, 11)
    module = __import__(fetch.__module__, fromlist=["FetchTopic"])
    partitions = tuple(module.FetchPartition(
        partition=index, current_leader_epoch=-1, fetch_offset=0, log_start_offset=-1,
        partition_max_bytes=1_000_000) for index in (0, 1))
    request = fetch(replica_id=-1, max_wait=datetime.timedelta(0), min_bytes=1, max_bytes=1_000_000,
                    isolation_level=0, session_id=0, session_epoch=-1,
                    topics=(module.FetchTopic(topic=topic_name, partitions=partitions),),
                    forgotten_topics_data=(), rack_id="")
    client = RawClient(cluster.bootstrap, timeout=30)
    try:
        response = client.request(request)
    finally:
        client.close()
    sizes = [len(p.records or b"") for p in response.responses[0].partitions]
    assert sizes[0] > BIG and sizes[1] == 0  # the second batch would pass 1,000,000 bytes


def test_librdkafka_consumes_batches_near_its_fetch_max_bytes(cluster: Cluster,
                                                              topic_name: str) -> None:
    _two_big_batches(cluster, topic_name)
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": topic_name,
                         "fetch.max.bytes": 1_000_000, "receive.message.max.bytes": 1_100_000,
                         "max.partition.fetch.bytes": 1_000_000, "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic_name, p, 0) for p in (0, 1)])
        got, deadline = {}, time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is not None:
                assert message.error() is None, message.error()
                got[message.partition()] = message.value()
    finally:
        consumer.close()
    assert got == {0: b"\x00" * BIG, 1: b"\x01" * BIG}


def test_java_consumes_batches_near_its_fetch_max_bytes(cluster: Cluster, topic_name: str,
                                                        tmp_path: Path) -> None:
    run = run_java("KelpJavaSemantics", ["fetch-limits", cluster.bootstrap, topic_name],
                   tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "OK fetch-limits consumed=2" in run.stdout
