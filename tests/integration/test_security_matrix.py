"""Six real clients over kelp's secured listeners: confluent-kafka, kafka-python, aiokafka,
kcat, Java kafka-clients and KafkaJS each produce and read back in order over SASL_SSL with
SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN, and over SSL with a client certificate; a wrong
password is refused with each library's authentication error; an expired certificate and one
from an unknown CA are refused on the SSL listener."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from kio.schema.api_versions.v3.request import ApiVersionsRequest

from tests.clients.prepare import JS_DIR, run_java
from tests.kafka_raw import encode_request
from tests.secure import ALICE, ALICE_PASSWORD, SecureCluster

pytestmark = pytest.mark.timeout(400)
COUNT = 20
MODES = [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "PLAIN"),
         ("SSL", None)]
MODE_IDS = ["scram-512", "scram-256", "plain", "ssl-cert"]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    cluster = SecureCluster(tmp_path_factory.mktemp("matrix"), authorizer=False).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def topic_for(client: str) -> str:
    return f"{client}-{uuid.uuid4().hex[:8]}"


def values() -> list[bytes]:
    return [b"v%d" % i for i in range(COUNT)]


def port_of(secure: SecureCluster, protocol: str) -> int:
    return secure.ssl_port if protocol == "SSL" else secure.sasl_ssl_port


@pytest.mark.parametrize(("protocol", "mechanism"), MODES, ids=MODE_IDS)
def test_confluent_kafka(secure: SecureCluster, protocol: str, mechanism: str | None) -> None:
    config = secure.librdkafka(protocol, mechanism)
    topic = topic_for("confluent")
    producer = Producer(config)
    for value in values():
        producer.produce(topic, value, partition=0)
    assert producer.flush(20) == 0
    consumer = Consumer({**config, "group.id": topic, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen: list[bytes] = []
    try:
        for _ in range(80):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                seen.append(message.value())
            if len(seen) == COUNT:
                break
    finally:
        consumer.close()
    assert seen == values()


def kafka_python_settings(secure: SecureCluster, protocol: str,
                          mechanism: str | None, password: str = ALICE_PASSWORD) -> dict:
    settings: dict[str, object] = {
        "bootstrap_servers": f"127.0.0.1:{port_of(secure, protocol)}",
        "security_protocol": protocol, "ssl_cafile": str(secure.pki.ca_file)}
    if protocol == "SSL":
        settings.update(ssl_certfile=str(secure.pki.client_cert),
                        ssl_keyfile=str(secure.pki.client_key))
    else:
        settings.update(sasl_mechanism=mechanism, sasl_plain_username=ALICE,
                        sasl_plain_password=password)
    return settings


@pytest.mark.parametrize(("protocol", "mechanism"), MODES, ids=MODE_IDS)
def test_kafka_python(secure: SecureCluster, protocol: str, mechanism: str | None) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    settings = kafka_python_settings(secure, protocol, mechanism)
    topic = topic_for("kafka-python")
    producer = KafkaProducer(**settings)
    for value in values():
        producer.send(topic, value, partition=0)
    producer.flush(20)
    producer.close()
    consumer = KafkaConsumer(topic, group_id=topic, auto_offset_reset="earliest",
                             consumer_timeout_ms=20_000, **settings)
    seen = []
    for message in consumer:
        seen.append(message.value)
        if len(seen) == COUNT:
            break
    consumer.close()
    assert seen == values()


def aiokafka_settings(secure: SecureCluster, protocol: str, mechanism: str | None,
                      password: str = ALICE_PASSWORD) -> dict:
    from aiokafka.helpers import create_ssl_context

    context = create_ssl_context(
        cafile=str(secure.pki.ca_file),
        certfile=str(secure.pki.client_cert) if protocol == "SSL" else None,
        keyfile=str(secure.pki.client_key) if protocol == "SSL" else None)
    settings: dict[str, object] = {
        "bootstrap_servers": f"127.0.0.1:{port_of(secure, protocol)}",
        "security_protocol": protocol, "ssl_context": context}
    if protocol != "SSL":
        settings.update(sasl_mechanism=mechanism, sasl_plain_username=ALICE,
                        sasl_plain_password=password)
    return settings


@pytest.mark.parametrize(("protocol", "mechanism"), MODES, ids=MODE_IDS)
def test_aiokafka(secure: SecureCluster, protocol: str, mechanism: str | None) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    settings = aiokafka_settings(secure, protocol, mechanism)
    topic = topic_for("aiokafka")

    async def round_trip() -> list[bytes]:
        producer = AIOKafkaProducer(**settings)
        await producer.start()
        try:
            for value in values():
                await producer.send_and_wait(topic, value, partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, group_id=topic, auto_offset_reset="earliest",
                                    **settings)
        await consumer.start()
        seen = []
        try:
            while len(seen) < COUNT:
                message = await asyncio.wait_for(consumer.getone(), 20)
                seen.append(message.value)
        finally:
            await consumer.stop()
        return seen

    assert asyncio.run(round_trip()) == values()


def kcat_options(secure: SecureCluster, protocol: str, mechanism: str | None,
                 password: str = ALICE_PASSWORD) -> list[str]:
    options = ["-b", f"127.0.0.1:{port_of(secure, protocol)}",
               "-X", f"security.protocol={protocol}",
               "-X", f"ssl.ca.location={secure.pki.ca_file}"]
    if protocol == "SSL":
        options += ["-X", f"ssl.certificate.location={secure.pki.client_cert}",
                    "-X", f"ssl.key.location={secure.pki.client_key}"]
    else:
        options += ["-X", f"sasl.mechanism={mechanism}", "-X", f"sasl.username={ALICE}",
                    "-X", f"sasl.password={password}"]
    return options


@pytest.mark.parametrize(("protocol", "mechanism"), MODES, ids=MODE_IDS)
def test_kcat(secure: SecureCluster, protocol: str, mechanism: str | None) -> None:
    options = kcat_options(secure, protocol, mechanism)
    topic = topic_for("kcat")
    lines = "\n".join(v.decode() for v in values()) + "\n"
    produced = subprocess.run(["kcat", *options, "-P", "-t", topic, "-p", "0"], input=lines,
                              capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(["kcat", *options, "-C", "-t", topic, "-o", "beginning", "-e",
                               "-c", str(COUNT)], capture_output=True, text=True, timeout=60)
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.split() == [v.decode() for v in values()]


def java_properties(secure: SecureCluster, directory: Path) -> list[str]:
    """One properties file per mode, and one whose password is wrong."""
    directory.mkdir(parents=True, exist_ok=True)
    # Java's PEM keystore: an unencrypted PKCS#8 key, then its chain.
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(secure.pki.client_key.read_bytes(), password=None)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    keystore = directory / "client-keystore.pem"
    keystore.write_bytes(pkcs8 + secure.pki.client_cert.read_bytes())
    files = []
    for (protocol, mechanism), name in [*zip(MODES, MODE_IDS, strict=True),
                                        (("SASL_SSL", "SCRAM-SHA-512"), "refused-password")]:
        lines = [f"bootstrap.servers=127.0.0.1:{port_of(secure, protocol)}",
                 f"security.protocol={protocol}", "ssl.truststore.type=PEM",
                 f"ssl.truststore.location={secure.pki.ca_file}"]
        if protocol == "SSL":
            lines += ["ssl.keystore.type=PEM", f"ssl.keystore.location={keystore}"]
        else:
            password = "wrong" if name.startswith("refused") else ALICE_PASSWORD
            module = ("org.apache.kafka.common.security.plain.PlainLoginModule"
                      if mechanism == "PLAIN" else
                      "org.apache.kafka.common.security.scram.ScramLoginModule")
            lines += [f"sasl.mechanism={mechanism}",
                      f'sasl.jaas.config={module} required username="{ALICE}" '
                      f'password="{password}";']
        path = directory / f"{name}.properties"
        path.write_text("\n".join(lines) + "\n")
        files.append(str(path))
    return files


def test_java(secure: SecureCluster, tmp_path: Path) -> None:
    if shutil.which("java") is None:
        pytest.fail("java is not installed (the README lists Java 17 as a test requirement)")
    files = java_properties(secure, tmp_path / "java")
    run = run_java("KelpJavaSecure", [str(COUNT), topic_for("java"), *files], tmp_path,
                   timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert run.stdout.strip().endswith(",".join([*MODE_IDS, "refused-password"]))


def kafkajs(secure: SecureCluster, protocol: str, mechanism: str | None,
            password: str = ALICE_PASSWORD, refused: bool = False) -> subprocess.CompletedProcess:
    mode: dict[str, object] = {"ca": str(secure.pki.ca_file), "refused": refused}
    if protocol == "SSL":
        mode.update(cert=str(secure.pki.client_cert), key=str(secure.pki.client_key))
    else:
        mode.update(mechanism=str(mechanism).lower(), username=ALICE, password=password)
    bootstrap = f"127.0.0.1:{port_of(secure, protocol)}"
    return subprocess.run(["node", "kelp-kafkajs-secure.js", bootstrap, topic_for("kafkajs"),
                           str(COUNT), json.dumps(mode)],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("protocol", "mechanism"), MODES, ids=MODE_IDS)
def test_kafkajs(secure: SecureCluster, protocol: str, mechanism: str | None) -> None:
    run = kafkajs(secure, protocol, mechanism)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("OK")


def test_wrong_passwords_are_refused_with_each_librarys_error(secure: SecureCluster) -> None:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KafkaPythonError

    # librdkafka: the error names the SASL failure and Kafka's message.
    admin = AdminClient(secure.librdkafka("SASL_SSL", "SCRAM-SHA-512", password="wrong"))
    errors: list[KafkaError] = []
    producer = Producer({**secure.librdkafka("SASL_SSL", "SCRAM-SHA-512", password="wrong"),
                         "error_cb": errors.append})
    producer.poll(5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert any("invalid credentials" in e.str() for e in errors), errors
    del admin
    # kafka-python retries a failed authentication until its bootstrap gives up, so what it
    # raises is "Unable to bootstrap"; the gateway counts the refusals.
    failures = secure.cluster.gateway_health()["sasl_failures"]
    with pytest.raises(KafkaPythonError):
        KafkaProducer(**kafka_python_settings(secure, "SASL_SSL", "PLAIN", "wrong"),
                      bootstrap_timeout_ms=5000)
    assert secure.cluster.gateway_health()["sasl_failures"] > failures
    # aiokafka likewise.
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError as AioKafkaError

    async def start() -> None:
        producer = AIOKafkaProducer(**aiokafka_settings(secure, "SASL_SSL", "SCRAM-SHA-256",
                                                        "wrong"))
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(AioKafkaError):
        asyncio.run(start())
    # KafkaJS: KafkaJSSASLAuthenticationError (the script checks the error's name).
    run = kafkajs(secure, "SASL_SSL", "SCRAM-SHA-512", "wrong", refused=True)
    assert run.returncode == 0 and run.stdout.startswith("OK refused"), run.stdout + run.stderr
    # kcat: a metadata request fails and says why.
    listed = subprocess.run(["kcat", *kcat_options(secure, "SASL_SSL", "PLAIN", "wrong"), "-L",
                             "-m", "5"], capture_output=True, text=True, timeout=60)
    assert listed.returncode != 0
    assert "Authentication failed" in listed.stderr or "authentication" in listed.stderr.lower()


@pytest.mark.parametrize("problem", ["expired", "unknown-ca"])
def test_bad_client_certificates_are_refused(secure: SecureCluster, problem: str) -> None:
    if problem == "expired":
        cert, key = secure.pki.issue_client("late", "expired", expired=True)
    else:
        cert, key = secure.pki.issue_client("stranger", "stranger", ca=trustme.CA())
    context = ssl.create_default_context(cafile=str(secure.pki.ca_file))
    context.load_cert_chain(str(cert), str(key))
    answered = False
    try:
        with socket.create_connection(("127.0.0.1", secure.ssl_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(encode_request(ApiVersionsRequest(
                client_software_name="t", client_software_version="1")))
            answered = len(tls.recv(4)) == 4  # TLS 1.3: the refusal arrives on first read
    except (ssl.SSLError, ConnectionError):
        pass
    assert not answered, "the gateway answered a client with a bad certificate"
    errors: list[KafkaError] = []
    producer = Producer({**secure.librdkafka("SSL"), "ssl.certificate.location": str(cert),
                         "ssl.key.location": str(key), "error_cb": errors.append})
    producer.poll(5)
    assert errors, "the gateway accepted a bad client certificate"
