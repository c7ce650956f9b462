"""The SASL protocol as Kafka speaks it, over raw sockets and real clients: only ApiVersions
and the SASL APIs before authentication, ILLEGAL_SASL_STATE and UNSUPPORTED_SASL_MECHANISM,
SaslHandshake v0's unframed tokens, and KIP-368 sessions: clients re-authenticate on the same
connection, a connection that does not is closed once its session ends."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest
import scramp
from confluent_kafka import Producer
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest as HandshakeV0
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from tests.kafka_raw import RawClient
from tests.secure import ALICE, ALICE_PASSWORD, SecureCluster

pytestmark = pytest.mark.timeout(240)
SESSION_MS = 2000


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    cluster = SecureCluster(tmp_path_factory.mktemp("sasl"), authorizer=False,
                            extra_gateway_args=["--connections-max-reauth-ms",
                                                str(SESSION_MS)]).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def metadata() -> MetadataRequest:
    return MetadataRequest(topics=None, allow_auto_topic_creation=False,
                           include_topic_authorized_operations=False)


def api_versions() -> ApiVersionsRequest:
    return ApiVersionsRequest(client_software_name="raw", client_software_version="1")


def scram_login(client: RawClient, mechanism: str = "SCRAM-SHA-512") -> int:
    """Authenticate over SaslHandshake v1 + SaslAuthenticate; the session lifetime in ms."""
    handshake = client.request(SaslHandshakeRequest(mechanism=mechanism), 10)
    assert handshake.error_code == ErrorCode.none
    scram = scramp.ScramClient([mechanism], ALICE, ALICE_PASSWORD)
    first = client.request(SaslAuthenticateRequest(
        auth_bytes=scram.get_client_first().encode()), 11)
    assert first.error_code == ErrorCode.none
    scram.set_server_first(first.auth_bytes.decode())
    final = client.request(SaslAuthenticateRequest(
        auth_bytes=scram.get_client_final().encode()), 12)
    assert final.error_code == ErrorCode.none, final.error_message
    scram.set_server_final(final.auth_bytes.decode())  # the server proved it knows the key
    return int(final.session_lifetime.total_seconds() * 1000)


def test_only_api_versions_before_authentication(secure: SecureCluster) -> None:
    client = RawClient(f"127.0.0.1:{secure.sasl_plain_port}")
    try:
        versions = client.request(api_versions())
        assert versions.error_code == ErrorCode.none
        advertised = {key.api_key for key in versions.api_keys}
        assert {17, 36} <= advertised  # SaslHandshake and SaslAuthenticate
        client.send(metadata(), 2)
        assert client.is_closed_by_peer()
    finally:
        client.close()
    # Once authenticated, everything is served.
    client = RawClient(f"127.0.0.1:{secure.sasl_plain_port}")
    try:
        assert scram_login(client) == SESSION_MS
        assert client.request(metadata(), 3).brokers
    finally:
        client.close()


def test_sasl_handshake_on_a_plaintext_listener_is_illegal(secure: SecureCluster) -> None:
    client = RawClient(f"127.0.0.1:{secure.plain_port}")
    try:
        answer = client.request(SaslHandshakeRequest(mechanism="PLAIN"))
        assert answer.error_code == ErrorCode.illegal_sasl_state
        assert client.request(metadata(), 2).brokers  # and the connection carries on
    finally:
        client.close()


def test_an_unsupported_mechanism_lists_the_enabled_ones(secure: SecureCluster) -> None:
    client = RawClient(f"127.0.0.1:{secure.sasl_plain_port}")
    try:
        answer = client.request(SaslHandshakeRequest(mechanism="GSSAPI"))
        assert answer.error_code == ErrorCode.unsupported_sasl_mechanism
        assert set(answer.mechanisms) == {"SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"}
        assert client.is_closed_by_peer()
    finally:
        client.close()


def test_authenticate_without_a_handshake_is_illegal(secure: SecureCluster) -> None:
    client = RawClient(f"127.0.0.1:{secure.sasl_plain_port}")
    try:
        answer = client.request(SaslAuthenticateRequest(auth_bytes=b"n,,n=alice,r=x"))
        assert answer.error_code == ErrorCode.illegal_sasl_state
        assert client.is_closed_by_peer()
    finally:
        client.close()


def test_handshake_v0_then_unframed_scram_tokens(secure: SecureCluster) -> None:
    client = RawClient(f"127.0.0.1:{secure.sasl_plain_port}")
    try:
        answer = client.request(HandshakeV0(mechanism="SCRAM-SHA-256"))
        assert answer.error_code == ErrorCode.none
        scram = scramp.ScramClient(["SCRAM-SHA-256"], ALICE, ALICE_PASSWORD)

        def token(data: bytes) -> bytes:
            client.send_bytes(struct.pack(">i", len(data)) + data)
            return client.read_frame()

        scram.set_server_first(token(scram.get_client_first().encode()).decode())
        scram.set_server_final(token(scram.get_client_final().encode()).decode())
        assert client.request(metadata(), 5).brokers
    finally:
        client.close()


def test_a_session_that_is_not_renewed_ends(secure: SecureCluster) -> None:
    client = RawClient(f"127.0.0.1:{secure.sasl_plain_port}")
    try:
        scram_login(client)
        assert client.request(metadata(), 20).brokers
        time.sleep(SESSION_MS / 1000 + 0.5)
        client.send(metadata(), 21)
        assert client.is_closed_by_peer()
    finally:
        client.close()


def test_re_authentication_keeps_the_connection(secure: SecureCluster) -> None:
    """A raw client renews its session before it ends and carries on; librdkafka producing
    for three session lifetimes re-authenticates and loses nothing."""
    client = RawClient(f"127.0.0.1:{secure.sasl_plain_port}")
    try:
        scram_login(client)
        for round_ in range(3):
            time.sleep(SESSION_MS / 1000 * 0.6)
            scram_login(client)
            assert client.request(metadata(), 30 + round_).brokers
    finally:
        client.close()
    before = secure.cluster.gateway_health()["sasl_authentications"]
    expired_before = secure.cluster.gateway.log_text().count("SASL session expired")
    errors: list[object] = []
    producer = Producer({**secure.librdkafka("SASL_SSL", "SCRAM-SHA-512"), "linger.ms": 5})
    deadline, sent = time.monotonic() + 3 * SESSION_MS / 1000, 0
    while time.monotonic() < deadline:
        producer.produce("reauth", b"%d" % sent,
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
        sent += 1
        producer.poll(0.02)
    assert producer.flush(15) == 0
    assert errors == []
    # Two connections (bootstrap and broker) and at least two renewals.
    assert secure.cluster.gateway_health()["sasl_authentications"] - before >= 4
    assert secure.cluster.gateway.log_text().count("SASL session expired") == expired_before
