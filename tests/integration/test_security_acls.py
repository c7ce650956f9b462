"""ACLs with the authorizer on, driven by real clients over SASL: Kafka's semantics (DENY
wins, PREFIXED patterns, super users, nothing allowed without an ACL), the admin APIs of two
client libraries, SCRAM users managed over Kafka, and changes that take effect at once on every
gateway and survive a broker SIGKILL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from tests.secure import ADMIN, ADMIN_PASSWORD, ALICE, BOB, BOB_PASSWORD, SecureCluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    cluster = SecureCluster(tmp_path_factory.mktemp("acls")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def admin_client(secure: SecureCluster) -> AdminClient:
    return AdminClient(secure.librdkafka("SASL_PLAINTEXT", user=ADMIN, password=ADMIN_PASSWORD))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def allow(principal: str, operation: AclOperation, resource: ResourceType, name: str,
          pattern: ResourcePatternType = ResourcePatternType.LITERAL,
          permission: AclPermissionType = AclPermissionType.ALLOW) -> AclBinding:
    return AclBinding(resource, name, pattern, principal, "*", operation, permission)


def create_acls(secure: SecureCluster, *bindings: AclBinding) -> None:
    admin = admin_client(secure)  # held: a collected client fails its futures
    for future in admin.create_acls(list(bindings)).values():
        future.result(10)


def create_topic(secure: SecureCluster, name: str) -> None:
    from confluent_kafka.admin import NewTopic

    admin = admin_client(secure)
    admin.create_topics([NewTopic(name, 1)])[name].result(10)


def produce(config: dict[str, object], topic: str, count: int = 3) -> list[KafkaError]:
    """Produce ``count`` records; the delivery errors (empty when all were written)."""
    errors: list[KafkaError] = []
    producer = Producer({**config, "message.timeout.ms": 8000, "retries": 0})
    for i in range(count):
        producer.produce(topic, value=b"v%d" % i,
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert producer.flush(15) == 0
    return errors


def consume(config: dict[str, object], topic: str, group: str, want: int,
            timeout_s: float = 15) -> tuple[list[bytes], list[KafkaError]]:
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values: list[bytes] = []
    errors: list[KafkaError] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < want and time.monotonic() < deadline and not errors:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                errors.append(message.error())
            else:
                values.append(message.value())
    finally:
        consumer.close()
    return values, errors


def test_anonymous_and_users_without_acls_get_nothing(secure: SecureCluster) -> None:
    topic = unique("open")
    create_topic(secure, topic)
    assert [e.code() for e in produce(secure.librdkafka("PLAINTEXT"), topic)] == [
        KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3
    assert [e.code() for e in produce(secure.librdkafka("SASL_SSL"), topic)] == [
        KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3
    # The super user may do anything.
    assert produce(secure.librdkafka("SASL_SSL", user=ADMIN, password=ADMIN_PASSWORD),
                   topic) == []


def test_write_without_read_produces_but_cannot_consume(secure: SecureCluster) -> None:
    topic, group = unique("wo"), unique("g")
    create_topic(secure, topic)
    create_acls(secure, allow(f"User:{ALICE}", AclOperation.WRITE, ResourceType.TOPIC, topic),
                allow(f"User:{ALICE}", AclOperation.READ, ResourceType.GROUP, group))
    alice = secure.librdkafka("SASL_SSL", "SCRAM-SHA-256")
    assert produce(alice, topic) == []
    values, errors = consume(alice, topic, group, 3)
    assert values == []
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    # The records are there: the super user reads all three.
    admin = secure.librdkafka("SASL_SSL", user=ADMIN, password=ADMIN_PASSWORD)
    assert consume(admin, topic, unique("g"), 3)[0] == [b"v0", b"v1", b"v2"]


def test_group_without_read_is_refused(secure: SecureCluster) -> None:
    topic, group = unique("ng"), unique("g")
    create_topic(secure, topic)
    create_acls(secure, allow(f"User:{ALICE}", AclOperation.ALL, ResourceType.TOPIC, topic))
    alice = secure.librdkafka("SASL_SSL", "PLAIN")
    assert produce(alice, topic) == []
    values, errors = consume(alice, topic, group, 3)
    assert values == []
    assert [e.code() for e in errors] == [KafkaError.GROUP_AUTHORIZATION_FAILED]


def test_transactions_need_write_on_the_transactional_id(secure: SecureCluster) -> None:
    topic, tid = unique("tx"), unique("tid")
    create_topic(secure, topic)
    create_acls(secure, allow(f"User:{ALICE}", AclOperation.WRITE, ResourceType.TOPIC, topic))
    alice = secure.librdkafka("SASL_SSL", "SCRAM-SHA-256")
    refused = Producer({**alice, "transactional.id": tid})
    with pytest.raises(KafkaException) as denied:
        refused.init_transactions(15)
    assert denied.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    create_acls(secure, allow(f"User:{ALICE}", AclOperation.WRITE,
                              ResourceType.TRANSACTIONAL_ID, tid))
    producer = Producer({**alice, "transactional.id": tid})
    producer.init_transactions(15)
    producer.begin_transaction()
    producer.produce(topic, value=b"in a transaction")
    producer.commit_transaction(15)
    # Offsets in a transaction need READ on the group as well.
    producer.begin_transaction()
    producer.produce(topic, value=b"with offsets")
    from confluent_kafka import TopicPartition
    from confluent_kafka.cimpl import Consumer as RawConsumer

    group = unique("g")
    metadata = RawConsumer({**alice, "group.id": group}).consumer_group_metadata()
    with pytest.raises(KafkaException) as no_group:
        producer.send_offsets_to_transaction([TopicPartition(topic, 0, 1)], metadata, 15)
    assert no_group.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    admin = secure.librdkafka("SASL_SSL", user=ADMIN, password=ADMIN_PASSWORD)
    assert consume({**admin, "isolation.level": "read_committed"}, topic, unique("g"), 1)[0] \
        == [b"in a transaction"]


def test_prefixed_grants_cover_every_name_with_the_prefix(secure: SecureCluster) -> None:
    prefix = unique("team") + "-"
    topic, group = prefix + "orders", prefix + "readers"
    create_topic(secure, topic)
    for operation in (AclOperation.WRITE, AclOperation.READ):
        create_acls(secure, allow(f"User:{ALICE}", operation, ResourceType.TOPIC, prefix,
                                  ResourcePatternType.PREFIXED))
    create_acls(secure, allow(f"User:{ALICE}", AclOperation.READ, ResourceType.GROUP, prefix,
                              ResourcePatternType.PREFIXED))
    alice = secure.librdkafka("SASL_SSL")
    assert produce(alice, topic) == []
    assert consume(alice, topic, group, 3)[0] == [b"v0", b"v1", b"v2"]
    other = unique("elsewhere")
    create_topic(secure, other)
    assert [e.code() for e in produce(alice, other, 1)] == [
        KafkaError.TOPIC_AUTHORIZATION_FAILED]


def test_deny_beats_allow(secure: SecureCluster) -> None:
    topic = unique("deny")
    create_topic(secure, topic)
    create_acls(secure,
                allow("User:*", AclOperation.WRITE, ResourceType.TOPIC, topic),
                allow(f"User:{BOB}", AclOperation.WRITE, ResourceType.TOPIC, topic,
                      permission=AclPermissionType.DENY))
    assert produce(secure.librdkafka("SASL_SSL"), topic) == []  # alice, by the wildcard
    bob = secure.librdkafka("SASL_SSL", user=BOB, password=BOB_PASSWORD)
    assert [e.code() for e in produce(bob, topic, 1)] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]


def test_metadata_hides_topics_the_principal_may_not_describe(secure: SecureCluster) -> None:
    visible, hidden = unique("seen"), unique("hidden")
    create_topic(secure, visible)
    create_topic(secure, hidden)
    create_acls(secure, allow(f"User:{BOB}", AclOperation.DESCRIBE, ResourceType.TOPIC,
                              visible))
    bob = AdminClient(secure.librdkafka("SASL_SSL", user=BOB, password=BOB_PASSWORD))
    topics = set(bob.list_topics(timeout=10).topics)
    assert visible in topics
    assert hidden not in topics
    assert {visible, hidden} <= set(admin_client(secure).list_topics(timeout=10).topics)
    named = bob.list_topics(topic=hidden, timeout=10).topics[hidden]
    assert named.error is not None
    assert named.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_admin_clients_create_describe_and_delete_acls(secure: SecureCluster) -> None:
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
    )
    from kafka.admin import ResourceType as KpResourceType

    name = unique("acl-admin")
    admin = admin_client(secure)
    binding = allow(f"User:{BOB}", AclOperation.READ, ResourceType.TOPIC, name)
    create_acls(secure, binding)
    described = admin.describe_acls(AclBindingFilter(
        ResourceType.TOPIC, name, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(10)
    assert described == [binding]
    # kafka-python's admin client sees and deletes the same binding.
    kp = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{secure.sasl_plain_port}",
                          security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                          sasl_plain_username=ADMIN, sasl_plain_password=ADMIN_PASSWORD)
    try:
        acls, _error = kp.describe_acls(ACLFilter(
            principal=None, host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePattern(KpResourceType.TOPIC, name,
                                             ACLResourcePatternType.LITERAL)))
        assert [(a.principal, a.operation) for a in acls] == [(f"User:{BOB}",
                                                               ACLOperation.READ)]
        kp.create_acls([ACL(principal=f"User:{BOB}", host="*", operation=ACLOperation.WRITE,
                            permission_type=ACLPermissionType.ALLOW,
                            resource_pattern=ResourcePattern(KpResourceType.TOPIC, name))])
        deleted = kp.delete_acls([ACLFilter(
            principal=f"User:{BOB}", host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePattern(KpResourceType.TOPIC, name,
                                             ACLResourcePatternType.LITERAL))])
        assert len(deleted[0][1]) == 2
    finally:
        kp.close()
    assert admin.describe_acls(AclBindingFilter(
        ResourceType.TOPIC, name, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(10) == []
    # A user who is not allowed to ALTER the cluster may not create ACLs.
    bob = AdminClient(secure.librdkafka("SASL_SSL", user=BOB, password=BOB_PASSWORD))
    with pytest.raises(KafkaException) as refused:
        for future in bob.create_acls([binding]).values():
            future.result(10)
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_the_registry_topic_is_written_only_by_its_owner(secure: SecureCluster) -> None:
    create_acls(secure, allow(f"User:{ALICE}", AclOperation.WRITE, ResourceType.TOPIC,
                              "_schemas"))
    errors = produce(secure.librdkafka("SASL_SSL"), "_schemas", 1)
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]


def test_scram_users_managed_over_kafka(secure: SecureCluster) -> None:
    user, password = unique("carol"), "carol-secret"
    admin = admin_client(secure)
    futures = admin.alter_user_scram_credentials([
        UserScramCredentialUpsertion(user, ScramCredentialInfo(
            ScramMechanism.SCRAM_SHA_512, 8192), password.encode())])
    futures[user].result(10)
    described = admin.describe_user_scram_credentials([user])[user].result(10)
    assert [(i.mechanism, i.iterations) for i in described.scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_512, 8192)]
    topic = unique("carol")
    create_topic(secure, topic)
    create_acls(secure, allow(f"User:{user}", AclOperation.WRITE, ResourceType.TOPIC, topic))
    carol = secure.librdkafka("SASL_SSL", "SCRAM-SHA-512", user=user, password=password)
    assert produce(carol, topic) == []
    # SHA-256 was never set for carol: refused, as is PLAIN with a wrong password.
    sha256 = secure.librdkafka("SASL_SSL", "SCRAM-SHA-256", user=user, password=password)
    assert [e.code() for e in produce(sha256, topic, 1)] != []
    admin.alter_user_scram_credentials([UserScramCredentialDeletion(
        user, ScramMechanism.SCRAM_SHA_512)])[user].result(10)
    assert [e.code() for e in produce(carol, topic, 1)] != []
    with pytest.raises(KafkaException) as missing:
        admin.describe_user_scram_credentials([user])[user].result(10)
    assert "RESOURCE_NOT_FOUND" in str(missing.value) or "does not exist" in str(missing.value)


def test_acls_apply_at_once_on_every_gateway_and_survive_a_broker_kill(
        secure: SecureCluster) -> None:
    proc, port, _http = secure.cluster.extra_gateway("gateway-b")
    # The second gateway takes the same security flags but one SASL_PLAINTEXT listener.
    args = proc.command
    args[args.index("--listeners") + 1] = f"SASL_PLAINTEXT://127.0.0.1:{port}"
    proc.start()
    try:
        topic = unique("both")
        create_topic(secure, topic)
        other = {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_PLAINTEXT",
                 "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": BOB,
                 "sasl.password": BOB_PASSWORD}
        assert [e.code() for e in produce(other, topic, 1)] == [
            KafkaError.TOPIC_AUTHORIZATION_FAILED]
        create_acls(secure, allow(f"User:{BOB}", AclOperation.WRITE, ResourceType.TOPIC, topic))
        assert produce(other, topic, 1) == []  # through the other gateway, straight away
        secure.cluster.restart_broker(hard=True)
        assert produce(other, topic, 1) == []  # the ACL and bob's credentials are durable
    finally:
        proc.stop()
