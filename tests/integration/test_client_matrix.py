"""The client matrix rows for the Python clients and kcat: create a topic, produce with
idempotence on and acks=all (headers, compression), describe configs, consume in a group and
commit, consume again with manual assignment from the beginning, list offsets by time, delete
the topic — each at the client's preferred versions (Java and KafkaJS have their own
modules)."""

from __future__ import annotations

import asyncio
import subprocess
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from tests.clients.preferred import assert_preferred_versions
from tests.cluster_procs import single_and_replicated  # noqa: F401 (the cluster fixture)
from tests.kelp_procs import Cluster
from tests.partition_reader import read_partition

COUNT = 2000
ROW = {"API_VERSIONS", "METADATA", "PRODUCE", "FETCH", "FIND_COORDINATOR", "JOIN_GROUP",
       "SYNC_GROUP", "OFFSET_COMMIT", "OFFSET_FETCH", "LIST_OFFSETS"}


def values() -> list[bytes]:
    return [b"value-%d" % i for i in range(COUNT)]


def test_confluent_kafka_row(cluster: Cluster, topic_name: str) -> None:
    client_id = f"confluent-row-{topic_name}"
    common = {"bootstrap.servers": cluster.bootstrap, "client.id": client_id}
    admin = AdminClient(common)
    admin.create_topics([NewTopic(topic_name, 2, cluster.replication_factor,
                                  config={"retention.ms": "86400000"})])[
        topic_name].result(timeout=10)
    (configs,) = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, topic_name)]).values()
    assert configs.result(timeout=10)["retention.ms"].value == "86400000"

    producer = Producer({**common, "enable.idempotence": True, "acks": "all",
                         "compression.type": "zstd"})
    failures: list[KafkaError] = []
    for i, value in enumerate(values()):
        producer.produce(topic_name, value=value, key=b"%d" % i, partition=i % 2,
                         headers=[("i", b"%d" % i)],
                         on_delivery=lambda err, _m: err and failures.append(err))
    assert producer.flush(30) == 0 and not failures

    group = Consumer({**common, "group.id": f"{topic_name}-row", "auto.offset.reset": "earliest",
                      "enable.auto.commit": False})
    group.subscribe([topic_name])
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(seen) < COUNT and time.monotonic() < deadline:
        batch = [m for m in group.consume(500, timeout=0.5) if m.error() is None]
        seen += [m.value() for m in batch]
        if batch:
            group.commit(asynchronous=False)
    committed = group.committed([TopicPartition(topic_name, p) for p in (0, 1)], timeout=10)
    group.close()
    assert sorted(seen) == sorted(values())
    assert sum(tp.offset for tp in committed) == COUNT

    again = read_partition(cluster.bootstrap, topic_name, 0, expected=COUNT // 2)  # assign()
    assert len(again) == COUNT // 2
    lookup = Consumer({**common, "group.id": f"{topic_name}-times"})
    (found,) = lookup.offsets_for_times([TopicPartition(topic_name, 0, 0)], timeout=10)
    lookup.close()
    assert found.offset == 0

    admin.delete_topics([topic_name])[topic_name].result(timeout=10)
    assert topic_name not in admin.list_topics(timeout=10).topics
    assert_preferred_versions(cluster, client_id, "confluent",
                              ROW | {"CREATE_TOPICS", "INIT_PRODUCER_ID"})


def test_kafka_python_row(cluster: Cluster, topic_name: str) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import ConfigResource as KConfigResource
    from kafka.admin import ConfigResourceType
    from kafka.admin import NewTopic as KNewTopic

    client_id = f"kafka-python-row-{topic_name}"
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, client_id=client_id)
    admin.create_topics([KNewTopic(topic_name, 2, cluster.replication_factor,
                                   topic_configs={"retention.ms": "86400000"})])
    described = admin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic_name)])
    assert "86400000" in repr(described)

    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap, client_id=client_id,
                             acks="all", compression_type="gzip")  # idempotent by default
    for i, value in enumerate(values()):
        producer.send(topic_name, value=value, partition=i % 2, headers=[("i", b"%d" % i)])
    producer.flush(30)
    producer.close()

    group = KafkaConsumer(topic_name, bootstrap_servers=cluster.bootstrap, client_id=client_id,
                          group_id=f"{topic_name}-row", auto_offset_reset="earliest",
                          enable_auto_commit=False)
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(seen) < COUNT and time.monotonic() < deadline:
        for messages in group.poll(timeout_ms=500).values():
            seen += [m.value for m in messages]
        group.commit()
    group.close()
    assert sorted(seen) == sorted(values())

    manual = KafkaConsumer(bootstrap_servers=cluster.bootstrap, client_id=client_id,
                           enable_auto_commit=False, consumer_timeout_ms=3000)
    partitions = [KTopicPartition(topic_name, p) for p in (0, 1)]
    manual.assign(partitions)
    manual.seek_to_beginning()
    assert sorted(m.value for m in manual) == sorted(values())
    found = manual.offsets_for_times({partitions[0]: 0})
    manual.close()
    assert found[partitions[0]].offset == 0

    admin.delete_topics([topic_name])
    assert topic_name not in admin.list_topics()
    admin.close()
    assert_preferred_versions(cluster, client_id, "kafka-python",
                              ROW | {"CREATE_TOPICS", "INIT_PRODUCER_ID"})


def test_aiokafka_row(cluster: Cluster, topic_name: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as ATopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin import NewTopic as ANewTopic

    client_id = f"aiokafka-row-{topic_name}"

    async def row() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, client_id=client_id)
        await admin.start()
        await admin.create_topics([ANewTopic(topic_name, 2, cluster.replication_factor,
                                             topic_configs={"retention.ms": "86400000"})])
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, client_id=client_id,
                                    enable_idempotence=True, acks="all",
                                    compression_type="lz4")
        await producer.start()
        for i, value in enumerate(values()):
            await producer.send(topic_name, value=value, partition=i % 2,
                                headers=[("i", b"%d" % i)])
        await producer.flush()
        await producer.stop()

        group = AIOKafkaConsumer(topic_name, bootstrap_servers=cluster.bootstrap,
                                 client_id=client_id, group_id=f"{topic_name}-row",
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        await group.start()
        seen: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(seen) < COUNT and time.monotonic() < deadline:
            for messages in (await group.getmany(timeout_ms=500)).values():
                seen += [m.value for m in messages]
            await group.commit()
        await group.stop()
        assert sorted(seen) == sorted(values())

        manual = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, client_id=client_id,
                                  enable_auto_commit=False)
        await manual.start()
        partition = ATopicPartition(topic_name, 0)
        manual.assign([partition])
        await manual.seek_to_beginning(partition)
        again: list[bytes] = []
        while len(again) < COUNT // 2 and time.monotonic() < deadline:
            for messages in (await manual.getmany(timeout_ms=500)).values():
                again += [m.value for m in messages]
        found = await manual.offsets_for_times({partition: 0})
        await manual.stop()
        assert len(again) == COUNT // 2 and found[partition].offset == 0

        await admin.delete_topics([topic_name])
        await admin.close()

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(row())
    assert_preferred_versions(cluster, client_id, "aiokafka",
                              ROW | {"CREATE_TOPICS", "INIT_PRODUCER_ID"})


def test_kcat_row(cluster: Cluster, topic_name: str, tmp_path) -> None:
    """kcat has no admin API: the topic is created on first use; it deletes nothing."""
    client_id = f"kcat-row-{topic_name}"
    source = tmp_path / "in.txt"
    source.write_text("".join(f"k{i}\tvalue-{i}\n" for i in range(COUNT)))
    base = ["kcat", "-b", cluster.bootstrap, "-X", f"client.id={client_id}"]
    subprocess.run([*base, "-P", "-t", topic_name, "-K", "\t", "-p", "0", "-z", "snappy",
                    "-X", "enable.idempotence=true", "-X", "acks=all", "-H", "from=kcat",
                    "-l", str(source)], check=True, timeout=60, capture_output=True)
    grouped = subprocess.run([*base, "-G", f"{topic_name}-row", "-o", "beginning", "-e",
                              "-f", "%s\n", topic_name], check=True, timeout=60,
                             capture_output=True)
    assert sorted(grouped.stdout.split()) == sorted(values())
    again = subprocess.run([*base, "-C", "-t", topic_name, "-p", "0", "-o", "beginning", "-e",
                            "-f", "%s %h\n"], check=True, timeout=60, capture_output=True)
    assert again.stdout.decode().splitlines() == [f"value-{i} from=kcat" for i in range(COUNT)]
    by_time = subprocess.run([*base, "-Q", "-t", f"{topic_name}:0:0"], check=True,
                             timeout=60, capture_output=True)
    assert f"{topic_name} [0] offset 0" in by_time.stdout.decode()
    # kcat -G -o beginning starts from explicit offsets, so it never asks for committed ones.
    assert_preferred_versions(cluster, client_id, "kcat",
                              (ROW - {"OFFSET_FETCH"}) | {"INIT_PRODUCER_ID"})
