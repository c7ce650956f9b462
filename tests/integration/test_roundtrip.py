"""Real Kafka clients produce through the gateway and read back the same records.

Every key, value, header and the order must come back identical, with the client's CRC check
on, for each compression codec the client supports.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from kelp import recordbatch, records
from tests.clients.preferred import assert_preferred_versions
from tests.kelp_procs import Cluster

RECORDS = 100_000
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def assert_stored_with(cluster: Cluster, topic: str, codec: str) -> None:
    """Prove the codec was really used: nearly all records sit in batches compressed with it.

    librdkafka sends a batch uncompressed when compressing would not make it smaller (a tiny
    last batch), so a few uncompressed records are allowed; no other codec is.
    """
    records_by_codec: Counter[int] = Counter()
    decoded = 0
    for segment in sorted((cluster.data_dir / f"{topic}-0").glob("*.log")):
        data = segment.read_bytes()
        for position, header in recordbatch.iter_batches(data):
            records_by_codec[header.compression] += header.record_count
            # kelp's own record decoder reads what the real client compressed.
            decoded += len(list(records.iter_records(data[position : position + header.size])))
    assert decoded == RECORDS
    wanted = CODEC_IDS[codec]
    assert set(records_by_codec) <= {0, wanted}, records_by_codec
    assert records_by_codec[wanted] >= 0.95 * RECORDS, records_by_codec


def expected_records(count: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [
        (f"key-{i}".encode(), f"value-{i}-{'x' * (i % 97)}".encode(),
         [("seq", str(i).encode()), ("codec-test", b"\x00\x01binary")])
        for i in range(count)
    ]


def confluent_produce(bootstrap: str, topic: str, codec: str, records: list) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                         "client.id": f"confluent-{topic}",
                         "linger.ms": 20, "acks": "all"})
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, partition=0,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages left unsent"
    assert not failures, failures[:3]


def confluent_consume(bootstrap: str, topic: str, count: int) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                         "client.id": f"confluent-{topic}",
                         "enable.auto.commit": False, "check.crcs": True,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got: list = []
        idle = 0
        while len(got) < count and idle < 20:
            batch = consumer.consume(num_messages=10_000, timeout=1.0)
            idle = 0 if batch else idle + 1
            for message in batch:
                assert message.error() is None, message.error()
                got.append((message.key(), message.value(), list(message.headers() or [])))
        return got
    finally:
        consumer.close()


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_kafka_round_trip(cluster: Cluster, topic_name: str, codec: str) -> None:
    records = expected_records(RECORDS)
    confluent_produce(cluster.bootstrap, topic_name, codec, records)
    got = confluent_consume(cluster.bootstrap, topic_name, RECORDS)
    assert len(got) == RECORDS
    assert got == records
    assert_stored_with(cluster, topic_name, codec)
    assert_preferred_versions(cluster, f"confluent-{topic_name}", "confluent",
                              {"API_VERSIONS", "METADATA", "PRODUCE", "FETCH"})


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_round_trip(cluster: Cluster, topic_name: str, codec: str, tmp_path) -> None:
    lines = [f"key-{i}\tvalue-{i}-{'y' * (i % 89)}" for i in range(RECORDS)]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n")
    subprocess.run(
        ["kcat", "-P", "-b", cluster.bootstrap, "-t", topic_name, "-p", "0", "-K", "\t",
         "-X", f"client.id=kcat-{topic_name}",
         "-z", codec, "-H", "origin=kcat", "-H", "codec=" + codec, "-X", "acks=all",
         "-l", str(source)],
        check=True, timeout=180, capture_output=True)
    out = subprocess.run(
        ["kcat", "-C", "-b", cluster.bootstrap, "-t", topic_name, "-p", "0", "-o", "beginning",
         "-X", f"client.id=kcat-{topic_name}",
         "-e", "-X", "check.crcs=true", "-f", "%k\t%s\t%h\n"],
        check=True, timeout=180, capture_output=True)
    got = out.stdout.decode().splitlines()
    assert len(got) == RECORDS
    headers = f"origin=kcat,codec={codec}"
    assert got == [f"{line}\t{headers}" for line in lines]
    assert_stored_with(cluster, topic_name, codec)
    assert_preferred_versions(cluster, f"kcat-{topic_name}", "kcat",
                              {"API_VERSIONS", "METADATA", "PRODUCE", "FETCH"})


def test_kafka_python_round_trip(cluster: Cluster, topic_name: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition

    records = expected_records(2000)
    # kafka-python 3 is idempotent by default: InitProducerId and sequences are exercised.
    client_id = f"kafka-python-{topic_name}"
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", client_id=client_id,
                             compression_type="gzip")
    futures = [producer.send(topic_name, key=k, value=v, headers=h, partition=0)
               for k, v, h in records]
    producer.flush(60)
    offsets = [f.get(timeout=30).offset for f in futures]
    assert offsets == list(range(len(records)))
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap, enable_auto_commit=False,
                             client_id=client_id,
                             check_crcs=True, consumer_timeout_ms=5000)
    consumer.assign([KTopicPartition(topic_name, 0)])
    consumer.seek_to_beginning()
    got = []
    for message in consumer:
        got.append((message.key, message.value, list(message.headers)))
        if len(got) == len(records):
            break
    consumer.close()
    assert got == records
    assert_preferred_versions(cluster, client_id, "kafka-python",
                              {"API_VERSIONS", "METADATA", "INIT_PRODUCER_ID", "PRODUCE",
                               "LIST_OFFSETS", "FETCH"})


def test_aiokafka_round_trip(cluster: Cluster, topic_name: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as ATopicPartition

    records = expected_records(2000)

    async def run() -> list:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all",
                                    client_id=f"aiokafka-{topic_name}",
                                    compression_type="lz4")
        await producer.start()
        try:
            for key, value, headers in records:
                await producer.send(topic_name, key=key, value=value, headers=headers,
                                    partition=0)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap,
                                    client_id=f"aiokafka-{topic_name}",
                                    enable_auto_commit=False, check_crcs=True)
        await consumer.start()
        try:
            partition = ATopicPartition(topic_name, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            got = []
            while len(got) < len(records):
                batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for messages in batches.values():
                    got += [(m.key, m.value, list(m.headers)) for m in messages]
            return got
        finally:
            await consumer.stop()

    # A plain asyncio loop, whatever policy trio-asyncio installed in this test process.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        assert runner.run(run()) == records
    assert_preferred_versions(cluster, f"aiokafka-{topic_name}", "aiokafka",
                              {"API_VERSIONS", "METADATA", "PRODUCE", "LIST_OFFSETS", "FETCH"})
