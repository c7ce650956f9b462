"""SCRAM credentials as Kafka keeps them (RFC 5802, RFC 7677): never a password, only the salt,
the iteration count and the two keys derived from the salted password.

The broker stores these; gateways verify SASL/SCRAM exchanges against them (``gateway.sasl``),
and a PLAIN or HTTP Basic password by deriving the stored key from it with the credential's own
salt and count.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

# Kafka's ScramMechanism codes, names and iteration bounds (ScramMechanism.java, and
# AlterUserScramCredentials' check: at least the mechanism's minimum, at most 16384).
SHA_256, SHA_512 = 1, 2
NAMES = {SHA_256: "SCRAM-SHA-256", SHA_512: "SCRAM-SHA-512"}
CODES = {name: code for code, name in NAMES.items()}
_HASHES = {SHA_256: "sha256", SHA_512: "sha512"}
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 16384
DEFAULT_ITERATIONS = 4096


@dataclass(frozen=True, slots=True)
class Credential:
    mechanism: int
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int

    @property
    def hash_name(self) -> str:
        return _HASHES[self.mechanism]


def salted_password(mechanism: int, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802: what a client sends in AlterUserScramCredentials."""
    return hashlib.pbkdf2_hmac(_HASHES[mechanism], password.encode(), salt, iterations)


def from_salted_password(mechanism: int, salted: bytes, salt: bytes,
                         iterations: int) -> Credential:
    digest = _HASHES[mechanism]
    client_key = hmac.digest(salted, b"Client Key", digest)
    server_key = hmac.digest(salted, b"Server Key", digest)
    return Credential(mechanism, salt, hashlib.new(digest, client_key).digest(), server_key,
                      iterations)


def from_password(mechanism: int, password: str, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> Credential:
    salt = salt if salt is not None else secrets.token_bytes(32)
    return from_salted_password(
        mechanism, salted_password(mechanism, password, salt, iterations), salt, iterations)


def verify_password(credential: Credential, password: str) -> bool:
    """Whether ``password`` is the one ``credential`` was made from (constant time)."""
    derived = from_password(credential.mechanism, password, credential.iterations,
                            credential.salt)
    return hmac.compare_digest(derived.stored_key, credential.stored_key)
