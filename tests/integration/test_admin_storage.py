"""Topic configs, DeleteRecords and retention through a real admin client."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from tests.kelp_procs import Cluster


def produce(bootstrap: str, topic: str, count: int, partition: int = 0) -> None:
    # Small batches, so that small segments roll many times.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "batch.num.messages": 100})
    for i in range(count):
        producer.produce(topic, value=b"%d" % i, partition=partition)
    assert producer.flush(30) == 0


def topic_configs(admin: AdminClient, topic: str) -> dict:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    (future,) = admin.describe_configs([resource]).values()
    return future.result(timeout=10)


def test_topic_configs_are_durable_and_alterable(own_cluster: Cluster, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": own_cluster.bootstrap})
    created = admin.create_topics([NewTopic(topic_name, 2, 1, config={
        "cleanup.policy": "compact", "retention.ms": "3600000"})])
    created[topic_name].result(timeout=10)

    configs = topic_configs(admin, topic_name)
    assert configs["cleanup.policy"].value == "compact"
    assert not configs["cleanup.policy"].is_default
    assert configs["max.message.bytes"].is_default  # a broker default, shown as such

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "60000",
                    incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("cleanup.policy", "delete",
                    incremental_operation=AlterConfigOpType.APPEND)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=10)
    bad = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    (failed,) = admin.incremental_alter_configs([bad]).values()
    try:
        failed.result(timeout=10)
        raise AssertionError("an invalid config value was accepted")
    except Exception as exc:  # KafkaException carrying INVALID_CONFIG
        assert "INVALID_CONFIG" in str(exc) or "retention.ms" in str(exc)

    own_cluster.restart_broker(hard=True)
    admin = AdminClient({"bootstrap.servers": own_cluster.bootstrap})
    configs = topic_configs(admin, topic_name)
    assert configs["retention.ms"].value == "60000"
    assert configs["cleanup.policy"].value == "compact,delete"


def test_delete_records_moves_the_log_start(cluster: Cluster, topic_name: str) -> None:
    produce(cluster.bootstrap, topic_name, 100)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    (future,) = admin.delete_records([TopicPartition(topic_name, 0, 40)]).values()
    assert future.result(timeout=10).low_watermark == 40

    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "dr",
                         "enable.auto.commit": False})
    low, high = consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
    assert (low, high) == (40, 100)
    consumer.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
    values = []
    deadline = time.monotonic() + 15
    while len(values) < 60 and time.monotonic() < deadline:
        values += [m.value() for m in consumer.consume(100, timeout=0.5) if m.error() is None]
    consumer.close()
    assert values == [b"%d" % i for i in range(40, 100)]


def test_retention_deletes_old_segments(tmp_path, topic_name: str) -> None:
    cluster = Cluster(tmp_path / "c", broker_args=["--retention-check-ms", "200",
                                                   "--config", "segment.bytes=4000"])
    cluster.start()
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic(topic_name, 1, 1, config={"retention.bytes": "10000"})])[
            topic_name].result(timeout=10)
        produce(cluster.bootstrap, topic_name, 3000)
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "ret"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic_name, 0),
                                                       timeout=10)
            if low > 0:
                break
            time.sleep(0.2)
        consumer.close()
        assert 0 < low < high == 3000
        segments = sorted((cluster.data_dir / f"{topic_name}-0").glob("*.log"))
        assert sum(p.stat().st_size for p in segments[1:]) < 10000
        assert int(segments[0].stem) == low
    finally:
        cluster.stop()


def test_delete_topics_and_create_partitions(cluster: Cluster, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 2, 1)])[topic_name].result(timeout=10)
    produce(cluster.bootstrap, topic_name, 50)

    from confluent_kafka.admin import NewPartitions
    admin.create_partitions([NewPartitions(topic_name, 5)])[topic_name].result(timeout=10)
    produce(cluster.bootstrap, topic_name, 10, partition=4)  # a new partition takes data
    topic = admin.list_topics(topic_name, timeout=10).topics[topic_name]
    assert sorted(topic.partitions) == [0, 1, 2, 3, 4]
    (fewer,) = admin.create_partitions([NewPartitions(topic_name, 3)]).values()
    try:
        fewer.result(timeout=10)
        raise AssertionError("shrinking a topic was accepted")
    except Exception as exc:
        assert "INVALID_PARTITIONS" in str(exc) or "partitions" in str(exc)

    cluster_info = admin.describe_cluster().result(timeout=10)
    assert [node.id for node in cluster_info.nodes] == [0]

    admin.delete_topics([topic_name])[topic_name].result(timeout=10)
    assert not list((cluster.data_dir).glob(f"{topic_name}-*"))
    (missing,) = admin.delete_topics([topic_name]).values()
    try:
        missing.result(timeout=10)
        raise AssertionError("deleting a missing topic succeeded")
    except Exception as exc:
        assert "UNKNOWN_TOPIC" in str(exc)
    # The name is free again, and starts empty.
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(timeout=10)
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "recreated"})
    assert consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (0, 0)
    consumer.close()
