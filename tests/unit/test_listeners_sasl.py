"""Listener configs, principal mapping rules and the SASL exchanges, against scramp's client
(the same RFC 5802 implementation on the other side) and Kafka's rules."""

from __future__ import annotations

import pytest
import scramp

from gateway import listeners
from gateway.listeners import ListenerError, PrincipalRules
from gateway.sasl import Exchange, SaslFailed
from kelp import scram

CREDENTIALS = {("alice", code): scram.from_password(code, "secret") for code in scram.NAMES}


def lookup(user: str, mechanism: int) -> scram.Credential | None:
    return CREDENTIALS.get((user, mechanism))


def test_listeners_as_kafka_spells_them() -> None:
    parsed = listeners.parse(
        "PLAINTEXT://127.0.0.1:9092,INTERNAL://[::1]:9093,SASL_SSL://:9094",
        "INTERNAL://broker.example:19093",
        "INTERNAL:SASL_PLAINTEXT")
    assert [(li.name, li.protocol, li.host, li.port) for li in parsed] == [
        ("PLAINTEXT", "PLAINTEXT", "127.0.0.1", 9092),
        ("INTERNAL", "SASL_PLAINTEXT", "::1", 9093),
        ("SASL_SSL", "SASL_SSL", "", 9094)]
    assert parsed[1].url(advertised=True) == "INTERNAL://broker.example:19093"
    assert parsed[0].url(advertised=True) == "PLAINTEXT://127.0.0.1:9092"
    assert parsed[2].tls and parsed[2].sasl and not parsed[0].tls


@pytest.mark.parametrize(("spec", "advertised", "mapping", "error"), [
    ("PLAINTEXT://a:1,PLAINTEXT://b:2", None, None, "different name"),
    ("CUSTOM://a:1", None, None, "no security protocol"),
    ("PLAINTEXT://a:1", "OTHER://b:2", None, "not one of the listeners"),
    ("PLAINTEXT://a:99999", None, None, "out of range"),
    ("PLAINTEXT:a:1", None, None, "NAME://HOST:PORT"),
    ("X://a:1", None, "X:TLS", "NAME:PROTOCOL"),
])
def test_listener_mistakes_are_refused(spec: str, advertised: str | None, mapping: str | None,
                                       error: str) -> None:
    with pytest.raises(ListenerError, match=error):
        listeners.parse(spec, advertised, mapping)


def test_principal_mapping_rules() -> None:
    dn = "CN=alice,OU=eng,O=kelp,C=NL"
    assert PrincipalRules().principal(dn) == "User:" + dn
    rules = PrincipalRules("RULE:^CN=(.*?),OU=eng,.*$/$1-eng/U, RULE:^CN=(.*?),.*$/$1/L, DEFAULT")
    assert rules.principal(dn) == "User:ALICE-ENG"
    assert rules.principal("CN=Bob,O=kelp") == "User:bob"
    with pytest.raises(ListenerError):
        PrincipalRules("RULE:broken")
    with pytest.raises(ListenerError, match=r"no ssl\.principal\.mapping\.rules"):
        PrincipalRules("RULE:^CN=x$/y/").principal(dn)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_with_scramps_client(mechanism: str) -> None:
    client = scramp.ScramClient([mechanism], "alice", "secret")
    exchange = Exchange(mechanism, lookup)
    server_first = exchange.step(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    server_final = exchange.step(client.get_client_final().encode())
    client.set_server_final(server_final.decode())  # the client checks the server's proof
    assert exchange.complete and exchange.user == "alice"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_wrong_password_and_unknown_user_fail_alike(mechanism: str) -> None:
    client = scramp.ScramClient([mechanism], "alice", "guess")
    exchange = Exchange(mechanism, lookup)
    client.set_server_first(exchange.step(client.get_client_first().encode()).decode())
    with pytest.raises(SaslFailed) as wrong:
        exchange.step(client.get_client_final().encode())
    with pytest.raises(SaslFailed) as unknown:
        Exchange(mechanism, lookup).step(b"n,,n=mallory,r=abcdef")
    assert str(wrong.value) == str(unknown.value)
    assert not exchange.complete


@pytest.mark.parametrize("token", [b"", b"\xff\xfe", b"n,,", b"garbage", b"x" * 70_000])
def test_scram_garbage_is_a_failure_not_a_crash(token: bytes) -> None:
    with pytest.raises(SaslFailed):
        Exchange("SCRAM-SHA-512", lookup).step(token)


def test_plain() -> None:
    exchange = Exchange("PLAIN", lookup)
    assert exchange.step(b"\0alice\0secret") == b""
    assert exchange.user == "alice"
    assert Exchange("PLAIN", lookup).step(b"alice\0alice\0secret") == b""
    for token in (b"\0alice\0wrong", b"\0bob\0secret", b"bob\0alice\0secret", b"alice\0secret",
                  b"\0\0secret"):
        with pytest.raises(SaslFailed):
            Exchange("PLAIN", lookup).step(token)


def test_credentials_derive_as_rfc_5802_says() -> None:
    # RFC 7677's SCRAM-SHA-256 example: user/pencil, salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096.
    import base64
    credential = scram.from_password(scram.SHA_256, "pencil", 4096,
                                     base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    _salt, stored, server, _ = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        "pencil", 4096, base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    assert (credential.stored_key, credential.server_key) == (stored, server)


def _final_for(client_first_bare: str, server_first: str, password: str, mechanism: int,
               nonce: str) -> str:
    """A client-final message computed by hand (RFC 5802), for nonces scramp would not send."""
    import base64
    import hashlib
    import hmac

    attributes = dict(part.split("=", 1) for part in server_first.split(","))
    salt, count = base64.b64decode(attributes["s"]), int(attributes["i"])
    digest = {scram.SHA_256: "sha256", scram.SHA_512: "sha512"}[mechanism]
    salted = scram.salted_password(mechanism, password, salt, count)
    client_key = hmac.digest(salted, b"Client Key", digest)
    without_proof = f"c=biws,r={nonce}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.new(digest, client_key).digest(), auth_message, digest)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def test_scram_accepts_what_kafka_accepts() -> None:
    """Kafka checks only that the final nonce ends with the server's: librdkafka 2.0 repeats
    its own nonce in front of it. Extensions (tokenauth) in the first message are ignored."""
    for extra, repeat in (("", True), (",tokenauth=false", False)):
        bare = "n=alice,r=abc" + extra
        exchange = Exchange("SCRAM-SHA-256", lookup)
        server_first = exchange.step(b"n,," + bare.encode()).decode()
        nonce = server_first.split(",")[0][2:]
        final = _final_for(bare, server_first, "secret", scram.SHA_256,
                           ("abc" if repeat else "") + nonce)
        assert exchange.step(final.encode()).startswith(b"v=")
        assert exchange.user == "alice"


def test_scram_refuses_a_nonce_that_is_not_the_servers() -> None:
    exchange = Exchange("SCRAM-SHA-256", lookup)
    server_first = exchange.step(b"n,,n=alice,r=abc").decode()
    final = _final_for("n=alice,r=abc", server_first, "secret", scram.SHA_256, "abcFORGED")
    with pytest.raises(SaslFailed):
        exchange.step(final.encode())


def test_scram_user_names_are_unescaped_and_authzid_must_match() -> None:
    credentials = {("a,b=c", scram.SHA_512): scram.from_password(scram.SHA_512, "pw")}
    client = scramp.ScramClient(["SCRAM-SHA-512"], "a,b=c", "pw")
    exchange = Exchange("SCRAM-SHA-512", lambda u, m: credentials.get((u, m)))
    client.set_server_first(exchange.step(client.get_client_first().encode()).decode())
    exchange.step(client.get_client_final().encode())
    assert exchange.user == "a,b=c"
    for first in (b"n,a=bob,n=alice,r=x", b"n,,n=al=ice,r=x", b"p=tls-unique,,n=alice,r=x"):
        with pytest.raises(SaslFailed):
            Exchange("SCRAM-SHA-256", lookup).step(first)


@pytest.mark.parametrize("nonce", ["", "a\x00b", "caf\u00e9", "a b"])
def test_scram_nonces_must_be_printable(nonce: str) -> None:
    with pytest.raises(SaslFailed):
        Exchange("SCRAM-SHA-512", lookup).step(f"n,,n=alice,r={nonce}".encode())
