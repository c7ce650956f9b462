"""Records sent from the broker's segment files (os.sendfile; gateway.segment_files): real
consumers get every record intact, over plaintext (sendfile) and TLS (read, then encrypted),
at the Fetch versions librdkafka, kafka-python and kcat use; and the gateway says (metric) that
the bytes came from the files rather than through the broker's stream."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kelp_procs import Cluster

COUNT = 3000


def _value(i: int) -> bytes:
    # Sizes from a few bytes to ~9 KiB: small batches (read at once) and large ones (sent from
    # the file) in the same partitions.
    return (b"%06d:" % i) * (1 + (i * 37) % 1500)


def _produce(bootstrap: str, topic: str, **settings: object) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, **settings})
    admin.create_topics([NewTopic(topic, 2)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "compression.type": "none", **settings})
    for i in range(COUNT):
        producer.produce(topic, key=b"%d" % i, value=_value(i), partition=i % 2)
        if i % 500 == 0:
            producer.flush(30)  # several batches, some of them small
    assert producer.flush(30) == 0


def _consume_confluent(bootstrap: str, topic: str, **settings: object) -> dict[int, bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-g",
                         "enable.auto.commit": False, "check.crcs": True, **settings})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in (0, 1)])
    seen: dict[int, bytes] = {}
    try:
        while len(seen) < COUNT:
            message = consumer.poll(10)
            assert message is not None, f"stalled after {len(seen)} records"
            assert message.error() is None, message.error()
            seen[int(message.key())] = message.value()
    finally:
        consumer.close()
    return seen


def _file_bytes(cluster: Cluster) -> float:
    url = f"http://127.0.0.1:{cluster.gateway_http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(r"^kelp_gateway_fetch_file_bytes_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_confluent_reads_every_record_sent_from_the_files(cluster: Cluster,
                                                          topic_name: str) -> None:
    before = _file_bytes(cluster)
    _produce(cluster.bootstrap, topic_name)
    seen = _consume_confluent(cluster.bootstrap, topic_name)
    assert seen == {i: _value(i) for i in range(COUNT)}
    assert _file_bytes(cluster) - before > COUNT * 1000  # most bytes came from the files


def test_kafka_python_reads_every_record_sent_from_the_files(cluster: Cluster,
                                                             topic_name: str) -> None:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaTopicPartition

    _produce(cluster.bootstrap, topic_name)
    consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", check_crcs=True,
                             consumer_timeout_ms=10_000)
    consumer.assign([KafkaTopicPartition(topic_name, p) for p in (0, 1)])
    seen = {int(m.key): m.value for m in consumer}
    consumer.close()
    assert seen == {i: _value(i) for i in range(COUNT)}


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat_reads_every_record_sent_from_the_files(cluster: Cluster, topic_name: str,
                                                     tmp_path: Path) -> None:
    _produce(cluster.bootstrap, topic_name)
    run = subprocess.run(
        ["kcat", "-C", "-b", cluster.bootstrap, "-t", topic_name, "-o", "beginning", "-e",
         "-X", "check.crcs=true", "-f", "%k %S %o\n"],
        capture_output=True, timeout=60, check=True)
    lines = run.stdout.decode().split("\n")
    sizes = {int(k): int(size) for k, size, _offset in (line.split() for line in lines if line)}
    assert sizes == {i: len(_value(i)) for i in range(COUNT)}


def test_tls_consumers_read_the_files_through_memory(tmp_path: Path) -> None:
    from tests.secure import SecureCluster

    secure = SecureCluster(tmp_path, authorizer=False).start()
    try:
        settings = secure.librdkafka("SSL")
        bootstrap = str(settings.pop("bootstrap.servers"))
        _produce(bootstrap, "tls-files", **settings)
        before = _file_bytes(secure.cluster)
        seen = _consume_confluent(bootstrap, "tls-files", **settings)
        assert seen == {i: _value(i) for i in range(COUNT)}
        assert _file_bytes(secure.cluster) - before > COUNT * 1000
    finally:
        secure.stop()
