"""SASL on the server side, sans-IO: PLAIN (RFC 4616) and SCRAM-SHA-256/512 (RFC 5802/7677),
each an exchange of tokens that ends with a user name or ``SaslFailed``.

Both check against the broker's SCRAM credentials (``kelp.scram``): SCRAM by its proofs, PLAIN by
deriving the stored key from the password it was sent. An unknown user and a wrong password fail
alike, with Kafka's message, so a client cannot tell which users exist.

The SCRAM server is written here rather than taken from ``scramp`` (the unit tests check it
against scramp's client) because Kafka's server is more lenient than RFC 5802 in one place
clients rely on: the client-final nonce need only *end with* the server's nonce. librdkafka
before 2.1 (Debian's kcat links 2.0.2) repeats its own nonce in front of it, and Kafka accepts
that; the proof still covers the whole exchange. Kafka's SCRAM extensions in the first message
(``tokenauth=...``) are accepted and ignored: kelp has no delegation tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from kelp import scram

log = logging.getLogger("kelp.gateway.sasl")

PLAIN = "PLAIN"
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", PLAIN)
MAX_TOKEN_BYTES = 64 * 1024  # a SASL token is small; anything bigger is not a client's

# (user, mechanism code) -> the credential, or None.
Lookup = Callable[[str, int], scram.Credential | None]


class SaslFailed(Exception):
    """Authentication failed; the message is what the client is told."""


@dataclass(frozen=True)
class _FirstMessage:
    """What the client-final message is checked against."""

    user: str
    bare: str  # client-first-message-bare, part of the signed AuthMessage
    server_first: str
    credential: scram.Credential
    gs2_header: str
    nonce: str  # client nonce + server nonce


class Exchange:
    """One authentication: feed it each client token, send back what ``step`` returns."""

    def __init__(self, mechanism: str, lookup: Lookup) -> None:
        self.mechanism = mechanism
        self.lookup = lookup
        self.user: str | None = None  # set once authenticated
        self._code = scram.CODES.get(mechanism, 0)
        self._first: _FirstMessage | None = None

    @property
    def complete(self) -> bool:
        return self.user is not None

    def _failed(self, reason: str) -> SaslFailed:
        # The client is told only "invalid credentials"; the reason is for the operator.
        log.debug("SASL exchange failed", extra={"mechanism": self.mechanism, "reason": reason})
        return SaslFailed("Authentication failed during authentication due to invalid "
                          f"credentials with SASL mechanism {self.mechanism}")

    def step(self, token: bytes) -> bytes:
        """The response to one client token. May take milliseconds (PLAIN derives a key):
        call it from a worker thread."""
        if self.complete:
            raise SaslFailed("Authentication already complete")
        if len(token) > MAX_TOKEN_BYTES:
            raise SaslFailed(f"SASL token longer than {MAX_TOKEN_BYTES} bytes")
        if self.mechanism == PLAIN:
            return self._plain(token)
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise self._failed("not UTF-8") from None
        if self._first is None:
            return self._client_first(text).encode()
        return self._client_final(text).encode()

    def _client_first(self, text: str) -> str:
        """``gs2-header client-first-bare``: answer ``r=<nonce>,s=<salt>,i=<count>``."""
        cbind, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not (sep and sep2) or cbind not in ("n", "y"):
            raise self._failed("bad GS2 header (channel binding is not offered)")
        attributes = _attributes(bare)
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise self._failed("client-first-message must start with n= and r=")
        user = _unescape(attributes[0][1])
        client_nonce = attributes[1][1]
        if user is None or not user or not _printable(client_nonce):
            raise self._failed("bad user name or nonce")
        if authzid and authzid != f"a={attributes[0][1]}":
            raise self._failed("authorization id differs from the user name")
        credential = self.lookup(user, self._code)
        if credential is None:
            raise self._failed("unknown user")
        nonce = client_nonce + secrets.token_urlsafe(24)
        server_first = (f"r={nonce},s={base64.b64encode(credential.salt).decode()},"
                        f"i={credential.iterations}")
        self._first = _FirstMessage(user, bare, server_first, credential,
                                    f"{cbind},{authzid},", nonce)
        return server_first

    def _client_final(self, text: str) -> str:
        """``c=<gs2>,r=<nonce>,...,p=<proof>``: check the proof, answer ``v=<signature>``."""
        first = self._first
        assert first is not None
        credential = first.credential
        without_proof, sep, proof_text = text.rpartition(",p=")
        attributes = _attributes(without_proof)
        if not sep or len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise self._failed("client-final-message must be c=..,r=..,p=..")
        if attributes[0][1] != base64.b64encode(first.gs2_header.encode()).decode():
            raise self._failed("channel binding differs from the GS2 header")
        if not attributes[1][1].endswith(first.nonce):  # Kafka's check (see the module's docstring)
            raise self._failed("nonce differs from the server's")
        try:
            proof = base64.b64decode(proof_text, validate=True)
        except binascii.Error:
            raise self._failed("proof is not base64") from None
        digest = credential.hash_name
        auth_message = f"{first.bare},{first.server_first},{without_proof}".encode()
        client_signature = hmac.digest(credential.stored_key, auth_message, digest)
        if len(proof) != len(client_signature):
            raise self._failed("proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.new(digest, client_key).digest(),
                                   credential.stored_key):
            raise self._failed("wrong password")
        self.user = first.user
        server_signature = hmac.digest(credential.server_key, auth_message, digest)
        return "v=" + base64.b64encode(server_signature).decode()

    def _plain(self, token: bytes) -> bytes:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise SaslFailed("Invalid SASL/PLAIN response: expected 3 tokens")
        try:
            authzid, user, password = (part.decode() for part in parts)
        except UnicodeDecodeError:
            raise self._failed("not UTF-8") from None
        if not user:
            raise SaslFailed("Authentication failed: username not specified")
        if authzid and authzid != user:
            raise SaslFailed("Authentication failed: Client requested an authorization id "
                             "that is different from username")
        credential = (self.lookup(user, scram.SHA_512) or self.lookup(user, scram.SHA_256))
        if credential is None or not scram.verify_password(credential, password):
            raise SaslFailed("Authentication failed: Invalid username or password")
        self.user = user
        return b""


def _attributes(message: str) -> list[tuple[str, str]]:
    """``a=1,b=2`` as [(a, 1), (b, 2)]; a part without ``=`` or a name makes the message
    malformed. Names are one letter in RFC 5802, longer for Kafka's extensions."""
    out = []
    for part in message.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.isalnum():
            return []
        out.append((name, value))
    return out


def _printable(nonce: str) -> bool:
    """RFC 5802's nonce: printable ASCII (0x21-0x7E) except the comma."""
    return bool(nonce) and all("!" <= c <= "~" for c in nonce)


def _unescape(name: str) -> str | None:
    """RFC 5802's saslname: ``=2C`` is a comma, ``=3D`` an equals sign, any other ``=`` is
    malformed (None)."""
    out, i = [], 0
    while i < len(name):
        if name[i] == "=":
            code = name[i + 1:i + 3]
            if code not in ("2C", "3D"):
                return None
            out.append("," if code == "2C" else "=")
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)
