"""Security listeners against bad clients: garbage instead of TLS, handshakes that never
finish, oversized or malformed SASL tokens, requests before authentication, password guessing;
and certificates rotated while serving. Each costs its own connection only."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from confluent_kafka.admin import AdminClient
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from tests.kafka_raw import RawClient
from tests.secure import SecureCluster

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    cluster = SecureCluster(tmp_path_factory.mktemp("hostile-security"), authorizer=False,
                            extra_gateway_args=["--request-timeout-ms", "2000"]).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def still_serving(secure: SecureCluster) -> None:
    admin = AdminClient(secure.librdkafka("SASL_SSL"))
    assert admin.list_topics(timeout=10).brokers


def test_plaintext_garbage_on_the_tls_port_closes_only_that_connection(
        secure: SecureCluster) -> None:
    sock = socket.create_connection(("127.0.0.1", secure.ssl_port), timeout=5)
    sock.sendall(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n" * 10)
    received = b""
    while chunk := sock.recv(4096):  # perhaps a TLS alert, then the close (a timeout fails)
        received += chunk
    assert len(received) < 1024
    sock.close()
    still_serving(secure)
    assert "TLS handshake failed" in secure.cluster.gateway.log_text()


def test_a_stalled_handshake_is_dropped_and_blocks_nobody(secure: SecureCluster) -> None:
    stalled = [socket.create_connection(("127.0.0.1", secure.sasl_ssl_port), timeout=10)
               for _ in range(20)]
    try:
        still_serving(secure)  # while twenty handshakes hang
        time.sleep(3)  # past --request-timeout-ms: each is closed by the gateway
        for sock in stalled:
            assert sock.recv(1) == b""
    finally:
        for sock in stalled:
            sock.close()


def sasl_client(secure: SecureCluster) -> RawClient:
    return RawClient(f"127.0.0.1:{secure.sasl_plain_port}")


def test_requests_before_authentication_close_the_connection(secure: SecureCluster) -> None:
    client = sasl_client(secure)
    try:
        handshake = client.request(SaslHandshakeRequest(mechanism="SCRAM-SHA-512"))
        assert handshake.error_code == ErrorCode.none
        client.send(MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                    include_topic_authorized_operations=False), 2)
        assert client.is_closed_by_peer()
    finally:
        client.close()


@pytest.mark.parametrize("token", [b"", b"\xff" * 100, b"n,,n=x" + b"A" * 70_000,
                                   b"n,,n=admin,r=" + b"\x00" * 50])
def test_malformed_sasl_tokens_fail_cleanly(secure: SecureCluster, token: bytes) -> None:
    client = sasl_client(secure)
    try:
        client.request(SaslHandshakeRequest(mechanism="SCRAM-SHA-256"))
        answer = client.request(SaslAuthenticateRequest(auth_bytes=token), 2)
        assert answer.error_code == ErrorCode.sasl_authentication_failed
        assert answer.error_message
        assert client.is_closed_by_peer()
    finally:
        client.close()
    still_serving(secure)


def test_password_guessing_is_slowed_and_harmless(secure: SecureCluster) -> None:
    started = time.monotonic()
    for attempt in range(10):
        client = sasl_client(secure)
        try:
            client.request(SaslHandshakeRequest(mechanism="PLAIN"))
            answer = client.request(SaslAuthenticateRequest(
                auth_bytes=b"\0alice\0guess-%d" % attempt), 2)
            assert answer.error_code == ErrorCode.sasl_authentication_failed
        finally:
            client.close()
    assert time.monotonic() - started >= 10 * 0.1  # Kafka's failed-authentication delay
    still_serving(secure)


def test_an_unauthenticated_client_may_not_send_a_large_frame(secure: SecureCluster) -> None:
    """Kafka's sasl.server.max.receive.size (512 KiB) before authentication: the frame's
    declared size alone closes the connection, nothing of it is buffered."""
    client = sasl_client(secure)
    try:
        client.send_bytes(struct.pack(">i", 10 * 1024 * 1024) + b"\x00" * 1024)
        assert client.is_closed_by_peer()
    finally:
        client.close()
    still_serving(secure)


def test_certificates_are_reloaded_without_a_restart(secure: SecureCluster) -> None:
    """The last test on the module's cluster: it replaces its server certificate."""
    def served_issuer() -> str:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", secure.ssl_port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        from cryptography import x509
        return x509.load_der_x509_certificate(der).issuer.rfc4514_string()

    before = served_issuer()
    other_ca = trustme.CA(organization_name="rotated")
    rotated = other_ca.issue_cert("127.0.0.1")
    staging = secure.pki.directory / "staging"
    staging.mkdir(exist_ok=True)
    rotated.cert_chain_pems[0].write_to_path(str(staging / "server.pem"))
    rotated.private_key_pem.write_to_path(str(staging / "server.key"))
    # Key first, then the certificate: in between the gateway keeps the old pair.
    shutil.copy(staging / "server.key", secure.pki.server_key)
    shutil.copy(staging / "server.pem", secure.pki.server_cert)
    deadline = time.monotonic() + 10
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.5)
        after = served_issuer()
    assert "rotated" in after and after != before


def test_gateway_reaches_the_broker_over_tls(tmp_path: Path) -> None:
    """gRPC over TLS between gateway and broker, for when they are on different hosts; a
    gateway that does not speak TLS to it gets nothing from it."""
    from confluent_kafka import Consumer, Producer

    from tests.kelp_procs import Cluster
    from tests.secure import Pki

    pki = Pki(tmp_path / "pki")
    cluster = Cluster(tmp_path / "tls", broker_args=[
        "--grpc-tls-certfile", str(pki.server_cert), "--grpc-tls-keyfile", str(pki.server_key)],
        gateway_args=["--broker-tls-cafile", str(pki.ca_file)]).start()
    try:
        producer = Producer({"bootstrap.servers": cluster.bootstrap})
        for i in range(5):
            producer.produce("over-tls", b"r%d" % i)
        assert producer.flush(15) == 0
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "tls",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe(["over-tls"])
        seen: list[bytes] = []
        for _ in range(40):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                seen.append(message.value())
            if len(seen) == 5:
                break
        consumer.close()
        assert seen == [b"r%d" % i for i in range(5)]
        plain, port, _http = cluster.extra_gateway("plain-gateway")
        plain.command.remove("--broker-tls-cafile")
        plain.command.remove(str(pki.ca_file))
        plain.start()
        try:
            admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
            metadata = admin.list_topics(topic="over-tls", timeout=10)
            assert metadata.topics["over-tls"].error is not None  # no broker behind it
        finally:
            plain.stop()
    finally:
        cluster.stop()

