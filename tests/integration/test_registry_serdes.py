"""confluent-kafka's Avro, JSON Schema and Protobuf serializers, end to end through kelp: the
serializer registers with the built-in registry, the producer writes through the gateway, the
deserializer fetches the schema by id and decodes what the consumer read."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.kelp_procs import Cluster
from tests.registry_http import ok, wait_for_leader

COUNT = 200


def _produce_and_consume(cluster: Cluster, topic: str, values: list[Any],
                         serialize: Callable[[Any, SerializationContext], bytes],
                         deserialize: Callable[[bytes, SerializationContext], Any]) -> list[Any]:
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 5})
    for value in values:
        producer.produce(topic, value=serialize(value, SerializationContext(
            topic, MessageField.VALUE)))
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[Any] = []
    try:
        while len(out) < len(values):
            message = consumer.poll(10)
            assert message is not None, f"only {len(out)} of {len(values)} consumed"
            assert message.error() is None, message.error()
            raw = message.value()
            assert raw[0] == 0  # Confluent wire format: magic byte, then the schema id
            out.append(deserialize(raw, SerializationContext(topic, MessageField.VALUE)))
    finally:
        consumer.close()
    return out


@pytest.fixture
def registry(cluster: Cluster) -> SchemaRegistryClient:
    wait_for_leader(cluster.registry_url)
    return SchemaRegistryClient({"url": cluster.registry_url})


def test_avro_serializer_round_trip(cluster: Cluster, registry: SchemaRegistryClient,
                                   topic_name: str) -> None:
    schema = json.dumps({"type": "record", "name": "Reading", "namespace": "kelp.test",
                         "fields": [{"name": "sensor", "type": "string"},
                                    {"name": "value", "type": "double"},
                                    {"name": "tags", "type": {"type": "map",
                                                              "values": "string"}}]})
    values = [{"sensor": f"s{i}", "value": i / 3, "tags": {"i": str(i)}} for i in range(COUNT)]
    got = _produce_and_consume(cluster, topic_name, values,
                               AvroSerializer(registry, schema), AvroDeserializer(registry))
    assert got == values
    registered = ok(cluster.registry_url, "GET", f"/subjects/{topic_name}-value/versions/1")
    assert json.loads(registered["schema"])["name"] == "Reading"


def test_json_schema_serializer_round_trip(cluster: Cluster, registry: SchemaRegistryClient,
                                           topic_name: str) -> None:
    schema = json.dumps({
        "$schema": "http://json-schema.org/draft-07/schema#", "title": "Order",
        "type": "object", "required": ["id", "items"],
        "properties": {"id": {"type": "integer"},
                       "items": {"type": "array", "items": {"type": "string"}}}})
    values = [{"id": i, "items": [f"item-{j}" for j in range(i % 4)]} for i in range(COUNT)]
    got = _produce_and_consume(cluster, topic_name, values,
                               JSONSerializer(schema, registry),
                               JSONDeserializer(schema, schema_registry_client=registry))
    assert got == values
    assert ok(cluster.registry_url, "GET",
              f"/subjects/{topic_name}-value/versions/1")["schemaType"] == "JSON"


def _protobuf_message_class() -> type:
    """A message type compiled at test time (no generated *_pb2 module to ship)."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="kelp_test_event.proto", package="kelp.test", syntax="proto3")
    message = file_proto.message_type.add(name="Event")
    field_type = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="id", number=1, type=field_type.TYPE_INT64,
                      label=field_type.LABEL_OPTIONAL)
    message.field.add(name="name", number=2, type=field_type.TYPE_STRING,
                      label=field_type.LABEL_OPTIONAL)
    message.field.add(name="scores", number=3, type=field_type.TYPE_DOUBLE,
                      label=field_type.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kelp.test.Event"))


def test_protobuf_serializer_round_trip(cluster: Cluster, registry: SchemaRegistryClient,
                                        topic_name: str) -> None:
    event = _protobuf_message_class()
    values = [event(id=i, name=f"event-{i}", scores=[i, i / 2]) for i in range(COUNT)]
    serializer = ProtobufSerializer(event, registry, {"use.deprecated.format": False})
    deserializer = ProtobufDeserializer(event, {"use.deprecated.format": False})
    got = _produce_and_consume(cluster, topic_name, values, serializer, deserializer)
    assert got == values
    registered = ok(cluster.registry_url, "GET", f"/subjects/{topic_name}-value/versions/1")
    assert registered["schemaType"] == "PROTOBUF"
    # The client sent a base64 descriptor; the registry answers .proto text, as Confluent.
    assert "message Event" in registered["schema"]
    serialized = ok(cluster.registry_url, "GET",
                    f"/schemas/ids/{registered['id']}?format=serialized")["schema"]
    assert "message" not in serialized  # base64 of a FileDescriptorProto
