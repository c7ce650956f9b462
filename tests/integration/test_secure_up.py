"""``kelp up --secure`` as a user runs it: SASL_SSL only, ACLs on, the registry over HTTPS
with Basic auth; ``kelp user`` and ``kelp acl`` manage it with the printed admin credentials;
Confluent's serializers work with ``basic.auth.user.info``."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.kelp_procs import REPO
from tests.kelp_up import Up, running_up

pytestmark = pytest.mark.timeout(300)
SCHEMA = ('{"type": "record", "name": "Reading", "fields": '
          '[{"name": "sensor", "type": "string"}, {"name": "value", "type": "double"}]}')


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    yield from running_up(tmp_path_factory.mktemp("secure-up"), extra=("--secure",))


def secure_dir(up: Up) -> Path:
    return up.run_dir / "secure"


def admin_password(up: Up) -> str:
    match = re.search(r"admin user\s+admin / (\S+)", up.log())
    assert match, up.log()[-2000:]
    return match.group(1)


def kelp(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kelp", *args], cwd=REPO, capture_output=True,
                          text=True, input=stdin, timeout=60)


def client(up: Up, user: str, password: str, **extra: object) -> dict[str, object]:
    return {"bootstrap.servers": up.bootstrap, "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password,
            "ssl.ca.location": str(secure_dir(up) / "ca.pem"), **extra}


def test_secure_up_prints_credentials_and_keeps_secrets_private(up: Up) -> None:
    password = admin_password(up)
    assert len(password) >= 16
    directory = secure_dir(up)
    for name in ("ca.key", "server.key", "admin.password", "users", "admin.properties"):
        assert (directory / name).stat().st_mode & 0o077 == 0, name
    assert password not in (up.data_dir / "security.json").read_text()
    # Plaintext clients get nowhere: the one Kafka listener speaks TLS.
    producer = Producer({"bootstrap.servers": up.bootstrap, "message.timeout.ms": 3000})
    outcomes: list[KafkaError | None] = []
    producer.produce("nope", b"x", on_delivery=lambda err, _msg: outcomes.append(err))
    producer.flush(6)
    assert len(outcomes) == 1 and outcomes[0] is not None  # never delivered


def test_users_and_acls_through_the_cli_then_a_client_works(up: Up) -> None:
    config = str(secure_dir(up) / "admin.properties")
    user, password, topic = f"app-{uuid.uuid4().hex[:6]}", "app-secret", "orders"
    added = kelp("user", "add", user, "--command-config", config, stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    listed = kelp("user", "list", "--command-config", config, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert user in listed.stdout and "SCRAM-SHA-512" in listed.stdout
    app = client(up, user, password)
    producer = Producer({**app, "message.timeout.ms": 5000, "retries": 0})
    errors: list[KafkaError] = []
    producer.produce(topic, b"refused", on_delivery=lambda e, _m: errors.append(e))
    producer.flush(10)
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    for operation in ("WRITE", "CREATE", "READ"):
        granted = kelp("acl", "add", "--command-config", config, "--topic", topic,
                       "--principal", f"User:{user}", "--operation", operation)
        assert granted.returncode == 0, granted.stderr
    group = kelp("acl", "add", "--command-config", config, "--group", "app-",
                 "--resource-pattern-type", "prefixed", "--principal", f"User:{user}",
                 "--operation", "READ")
    assert group.returncode == 0, group.stderr
    acls = kelp("acl", "list", "--command-config", config, "--topic", topic, "-o", "json")
    assert acls.stdout.count(f"User:{user}") == 3
    producer = Producer({**app, "message.timeout.ms": 10000})
    for i in range(5):
        producer.produce(topic, b"m%d" % i)
    assert producer.flush(15) == 0
    consumer = Consumer({**app, "group.id": "app-readers", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen = []
    try:
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                seen.append(message.value())
            if len(seen) == 5:
                break
    finally:
        consumer.close()
    assert seen == [b"m%d" % i for i in range(5)]
    removed = kelp("acl", "remove", "--command-config", config, "--topic", topic,
                   "--principal", f"User:{user}")
    assert removed.returncode == 0 and removed.stdout.count(f"User:{user}") == 3
    # A cluster that refuses answers a failing exit code and says why.
    refused = kelp("user", "delete", "nobody-at-all", "--command-config", config)
    assert refused.returncode == 1
    assert refused.stderr.strip()


def test_registry_wants_credentials_and_roles(up: Up) -> None:
    url = f"https://{'127.0.0.1'}:{up.ports['registry']}"
    ca = str(secure_dir(up) / "ca.pem")
    anonymous = httpx.post(f"{url}/subjects/s/versions", json={"schema": SCHEMA}, verify=ca)
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == 40101
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    wrong = httpx.get(f"{url}/subjects", auth=("admin", "wrong"), verify=ca)
    assert wrong.status_code == 401
    # A user without ACLs on the schemas topic may not even read.
    config = str(secure_dir(up) / "admin.properties")
    reader = f"reader-{uuid.uuid4().hex[:6]}"
    assert kelp("user", "add", reader, "--password", "pw-reader", "--command-config",
                config).returncode == 0
    assert httpx.get(f"{url}/subjects", auth=(reader, "pw-reader"),
                     verify=ca).status_code == 403
    assert kelp("acl", "add", "--command-config", config, "--topic", "_schemas",
                "--principal", f"User:{reader}", "--operation", "READ").returncode == 0
    assert httpx.get(f"{url}/subjects", auth=(reader, "pw-reader"),
                     verify=ca).status_code == 200
    write = httpx.post(f"{url}/subjects/s/versions", json={"schema": SCHEMA},
                       auth=(reader, "pw-reader"), verify=ca)
    assert write.status_code == 403
    assert write.json()["error_code"] == 40301
    # Plain HTTP to the HTTPS port gets no answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{up.ports['registry']}/subjects", timeout=5)


def test_confluent_serializers_with_basic_auth(up: Up) -> None:
    password = admin_password(up)
    registry = SchemaRegistryClient({
        "url": f"https://127.0.0.1:{up.ports['registry']}",
        "basic.auth.user.info": f"admin:{password}",
        "ssl.ca.location": str(secure_dir(up) / "ca.pem")})
    serializer = AvroSerializer(registry, SCHEMA)
    deserializer = AvroDeserializer(registry)
    topic = f"readings-{uuid.uuid4().hex[:6]}"
    context = SerializationContext(topic, MessageField.VALUE)
    value = {"sensor": "s1", "value": 21.5}
    encoded = serializer(value, context)
    assert registry.get_subjects() == [f"{topic}-value"] or f"{topic}-value" in (
        registry.get_subjects())
    admin = client(up, "admin", password)
    producer = Producer(admin)
    producer.produce(topic, encoded)
    assert producer.flush(15) == 0
    consumer = Consumer({**admin, "group.id": "avro", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        message = None
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                break
        assert message is not None and not message.error()
        assert deserializer(message.value(), context) == value
    finally:
        consumer.close()
    unauthenticated = SchemaRegistryClient({
        "url": f"https://127.0.0.1:{up.ports['registry']}",
        "ssl.ca.location": str(secure_dir(up) / "ca.pem")})
    with pytest.raises(Exception, match=r"40101|Unauthorized|401"):
        AvroSerializer(unauthenticated, SCHEMA)(
            value, SerializationContext("x", MessageField.VALUE))


def test_the_daily_work_cli_with_the_admin_credentials(up: Up, tmp_path: Path) -> None:
    """kelp topic/produce/consume/registry/cluster over SASL_SSL and the HTTPS registry with
    Basic auth, from the command config `kelp up --secure` writes (plus the registry's
    credentials); without credentials the cluster refuses and the exit code says so."""
    properties = tmp_path / "ops.properties"
    properties.write_text((secure_dir(up) / "admin.properties").read_text()
                          + f"\nbasic.auth.user.info=admin:{admin_password(up)}\n")
    registry = f"https://127.0.0.1:{up.ports['registry']}"
    topic = f"ops-{uuid.uuid4().hex[:6]}"
    common = ("--command-config", str(properties), "--registry", registry)
    assert kelp("topic", "create", topic, "--partitions", "1", *common).returncode == 0
    listed = kelp("topic", "list", "-o", "json", *common)
    assert listed.returncode == 0 and topic in listed.stdout
    assert kelp("produce", topic, *common, stdin="a\nb\n").returncode == 0
    consumed = kelp("consume", topic, "--from-beginning", "-o", "json", *common)
    assert [line.count('"value": "') for line in consumed.stdout.splitlines()] == [1, 1]
    health = kelp("cluster", "health", "-o", "json", *common)
    assert health.returncode == 0, health.stdout + health.stderr
    assert kelp("registry", "subjects", *common).returncode == 0
    # The same commands without credentials: refused, exit 1.
    anonymous = kelp("topic", "list", "--bootstrap-server", up.bootstrap)
    assert anonymous.returncode == 1
    no_auth = kelp("registry", "subjects", "--registry", registry, "--command-config",
                   str(secure_dir(up) / "admin.properties"))
    assert no_auth.returncode == 1 and "401" in no_auth.stderr
