"""Server-side schema validation: a topic with confluent.value.schema.validation=true accepts
only records in the registry's wire format with an id registered for the topic's subject."""

from __future__ import annotations

import datetime
import struct
import sys
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.batches import make_batch
from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster
from tests.partition_reader import read_partition
from tests.registry_http import avro_record, ok, wait_for_leader

PRODUCE = 0
SCHEMA = avro_record("Valid", ("n", "int"))


def _produce(cluster: Cluster, topic: str, values: list[bytes | None],
             key: bytes | None = None) -> list[KafkaError | None]:
    """Deliver ``values`` one batch each; the delivery error per value (None: stored)."""
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 0,
                         "message.send.max.retries": 0, "compression.type": "gzip"})
    errors: list[KafkaError | None] = []
    for value in values:
        producer.produce(topic, value=value, key=key,
                         on_delivery=lambda err, msg: errors.append(err))
        assert producer.flush(30) == 0
    return errors


@pytest.fixture
def validated_topic(cluster: Cluster, topic_name: str) -> str:
    wait_for_leader(cluster.registry_url)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1, 1, config={
        "confluent.value.schema.validation": "true"})])[topic_name].result(10)
    return topic_name


def test_only_registered_wire_format_values_land(cluster: Cluster,
                                                 validated_topic: str) -> None:
    topic = validated_topic
    registry = SchemaRegistryClient({"url": cluster.registry_url})
    serialize = AvroSerializer(registry, SCHEMA)
    good = serialize({"n": 7}, SerializationContext(topic, MessageField.VALUE))
    schema_id = struct.unpack(">i", good[1:5])[0]
    other = ok(cluster.registry_url, "POST", f"/subjects/{topic}-other/versions",
               {"schema": avro_record("Elsewhere", ("q", "int"))})["id"]
    errors = _produce(cluster, topic, [
        good,
        b"plain text, no magic byte",
        b"\x00" + struct.pack(">i", 999_999) + b"\x02",  # an id nobody registered
        b"\x00" + struct.pack(">i", other) + b"\x02",  # known id, another subject
        b"\x00\x00",  # too short to hold an id
        None,  # a tombstone carries no schema
        good,
    ])
    codes = [None if e is None else e.code() for e in errors]
    assert codes == [None, KafkaError.INVALID_RECORD, KafkaError.INVALID_RECORD,
                     KafkaError.INVALID_RECORD, KafkaError.INVALID_RECORD, None, None]
    stored = read_partition(cluster.bootstrap, topic, expected=3)
    assert list(stored.values()) == [good, None, good]
    assert schema_id in {s["id"] for s in ok(cluster.registry_url, "GET", "/schemas")}


def _raw_produce(cluster: Cluster, topic: str, values: list[bytes]) -> tuple[Any, ...]:
    """One Produce v9 request with one batch; (error code, message, record errors)."""
    request_type = load_request_schema(PRODUCE, 9)
    topic_type = sys.modules[request_type.__module__].TopicProduceData
    part_type = sys.modules[request_type.__module__].PartitionProduceData
    client = RawClient(cluster.bootstrap)
    try:
        response = client.request(request_type(
            transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=10),
            topic_data=(topic_type(name=topic, partition_data=(part_type(
                index=0, records=make_batch([(None, v) for v in values])),)),)))
    finally:
        client.close()
    (part,) = response.responses[0].partition_responses
    return (part.error_code, part.error_message,
            [(e.batch_index, e.batch_index_error_message) for e in part.record_errors])


def test_rejections_name_the_record_and_the_reason(cluster: Cluster,
                                                   validated_topic: str) -> None:
    known = ok(cluster.registry_url, "POST", f"/subjects/{validated_topic}-value/versions",
               {"schema": SCHEMA})["id"]
    good = b"\x00" + struct.pack(">i", known) + b"\x0e"
    code, message, record_errors = _raw_produce(cluster, validated_topic, [
        good, b"\x00" + struct.pack(">i", 999_999) + b"x", good, b"no magic"])
    assert code == ErrorCode.invalid_record
    assert message.startswith("record 1 rejected by schema validation")
    assert [i for i, _ in record_errors] == [1, 3]
    assert "schema id 999999 is unknown to the schema registry" in record_errors[0][1]
    assert "wire format" in record_errors[1][1]
    # The whole batch was refused: the good records in it were not stored either.
    assert _raw_produce(cluster, validated_topic, [good]) == (ErrorCode.none, None, [])
    assert list(read_partition(cluster.bootstrap, validated_topic, expected=1).values()) == [
        good]


def test_validation_switches_with_the_topic_config(cluster: Cluster,
                                                   topic_name: str) -> None:
    wait_for_leader(cluster.registry_url)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    assert _produce(cluster, topic_name, [b"anything goes"]) == [None]
    resource = _setting(topic_name, "confluent.key.schema.validation", "true")
    admin.incremental_alter_configs([resource])[resource].result(10)
    # Through the same gateway the change applies at once; keys are now checked, values not.
    errors = _produce(cluster, topic_name, [b"value"], key=b"not framed")
    assert errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD
    assert _produce(cluster, topic_name, [b"value"]) == [None]  # null key passes
    bad = _setting(topic_name, "confluent.value.schema.validation", "maybe")
    with pytest.raises(KafkaException):
        admin.incremental_alter_configs([bad])[bad].result(10)


def _setting(topic: str, name: str, value: str) -> ConfigResource:
    return ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
