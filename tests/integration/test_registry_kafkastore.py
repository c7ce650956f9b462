"""What an external registry (Confluent's KafkaStore, Karapace) needs from kelp, done the way
they do it with librdkafka, and the two-way interop through the shared ``_schemas`` topic."""

from __future__ import annotations

import json

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster
from tests.registry_http import avro_record, ok, wait_for_leader

SCHEMAS = "_schemas"
DESCRIBE_GROUPS = 15
NOOP_KEY = b'{"keytype":"NOOP","magic":0}'


def _write(cluster: Cluster, key: bytes, value: bytes | None) -> int:
    """Append one record with acks=all, as KafkaStore does; returns its offset."""
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    offsets: list[int] = []
    producer.produce(SCHEMAS, key=key, value=value, partition=0,
                     on_delivery=lambda err, msg: offsets.append(
                         -1 if err else msg.offset()))
    assert producer.flush(30) == 0
    assert offsets and offsets[0] >= 0
    return offsets[0]


def _read_until(cluster: Cluster, offset: int) -> list[tuple[int, dict, dict | None]]:
    """KafkaStore's reader: assign (no subscription), from the beginning, up to ``offset``."""
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "kafkastore-test",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(SCHEMAS, 0, OFFSET_BEGINNING)])
    seen: list[tuple[int, dict, dict | None]] = []
    try:
        while not seen or seen[-1][0] < offset:
            message = consumer.poll(10)
            assert message is not None, f"read up to {seen[-1][0] if seen else None}"
            if message.error() is not None:
                assert message.error().code() == KafkaError._PARTITION_EOF
                continue
            value = message.value()
            seen.append((message.offset(), json.loads(message.key()),
                         json.loads(value) if value else None))
    finally:
        consumer.close()
    return seen


def test_schemas_topic_is_what_confluent_checks(cluster: Cluster) -> None:
    wait_for_leader(cluster.registry_url)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = admin.list_topics(SCHEMAS, timeout=10).topics[SCHEMAS]
    assert topic.error is None and len(topic.partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, SCHEMAS)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["cleanup.policy"].value == "compact"
    # Karapace creates the topic on every start and expects TOPIC_ALREADY_EXISTS.
    created = admin.create_topics([NewTopic(SCHEMAS, 1, 1,
                                            config={"cleanup.policy": "compact"})])
    error = created[SCHEMAS].exception(10)
    assert error is not None and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS


def test_noop_write_is_read_back_by_offset(cluster: Cluster, topic_name: str) -> None:
    base = cluster.registry_url
    wait_for_leader(base)
    subject = f"{topic_name}-value"
    registered = ok(base, "POST", f"/subjects/{subject}/versions",
                    {"schema": avro_record("Rec", ("f", "int"))})
    noop_offset = _write(cluster, NOOP_KEY, None)
    seen = _read_until(cluster, noop_offset)
    assert seen[-1] == (noop_offset, {"keytype": "NOOP", "magic": 0}, None)
    mine = [(key, value) for _, key, value in seen
            if key.get("keytype") == "SCHEMA" and key.get("subject") == subject]
    # Confluent's own record format, key fields in Confluent's order.
    assert mine == [({"keytype": "SCHEMA", "subject": subject, "version": 1, "magic": 1},
                     {"subject": subject, "version": 1, "id": registered["id"],
                      "schema": json.dumps(json.loads(avro_record("Rec", ("f", "int"))),
                                           separators=(",", ":")),
                      "deleted": False})]


def test_records_written_by_another_registry_are_served(cluster: Cluster,
                                                        topic_name: str) -> None:
    """A Confluent registry sharing the topic writes a schema; kelp's API serves it, and kelp
    never hands out that id again."""
    base = cluster.registry_url
    wait_for_leader(base)
    subject = f"{topic_name}-value"
    foreign_id = max([0, *(s["id"] for s in ok(base, "GET", "/schemas"))]) + 1000
    schema = avro_record("Foreign", ("x", "string"))
    key = json.dumps({"keytype": "SCHEMA", "subject": subject, "version": 1, "magic": 1},
                     separators=(",", ":")).encode()
    value = json.dumps({"subject": subject, "version": 1, "id": foreign_id, "schema": schema,
                        "deleted": False}).encode()
    _write(cluster, key, value)
    _write(cluster, json.dumps({"keytype": "CONFIG", "subject": subject, "magic": 0},
                               separators=(",", ":")).encode(),
           b'{"compatibilityLevel":"NONE"}')
    # The registry reads the topic continuously; a NOOP round trip through the REST API
    # (any write) makes sure it has caught up.
    ok(base, "PUT", f"/config/{topic_name}-sync", {"compatibility": "FULL"})
    got = ok(base, "GET", f"/subjects/{subject}/versions/1")
    assert (got["id"], json.loads(got["schema"])) == (foreign_id, json.loads(schema))
    assert ok(base, "GET", f"/config/{subject}") == {"compatibilityLevel": "NONE"}
    fresh = ok(base, "POST", f"/subjects/{topic_name}-next/versions",
               {"schema": avro_record("Next" + topic_name.replace("-", ""), ("y", "int"))})
    assert fresh["id"] > foreign_id


def test_registry_election_group_has_protocol_type_sr(cluster: Cluster) -> None:
    wait_for_leader(cluster.registry_url)
    # A raw request: kafka-python's admin decodes every group's metadata as the consumer
    # protocol and fails on the registry's JSON.
    client = RawClient(cluster.bootstrap)
    try:
        describe_type = load_request_schema(DESCRIBE_GROUPS, 5)
        (group,) = client.request(describe_type(
            groups=("schema-registry",), include_authorized_operations=False)).groups
    finally:
        client.close()
    assert (group.error_code, group.group_state, group.protocol_type, group.protocol_data) == (
        ErrorCode.none, "Stable", "sr", "v0")
    (member,) = group.members
    identity = json.loads(member.member_metadata)
    assert identity["port"] == cluster.gateway_http_port and identity["master_eligibility"]
    assignment = json.loads(member.member_assignment)
    assert assignment["master"] == member.member_id
