"""SASL on the server side, sans-IO: PLAIN (RFC 4616) and SCRAM-SHA-256/512 (RFC 5802/7677,
through the ``scramp`` library), each an exchange of tokens that ends with a user name or
``SaslFailed``.

Both check against the broker's SCRAM credentials (``kelp.scram``): SCRAM by its proofs, PLAIN by
deriving the stored key from the password it was sent. An unknown user and a wrong password fail
alike, with Kafka's message, so a client cannot tell which users exist.
"""

from __future__ import annotations

from collections.abc import Callable

import scramp

from kelp import scram

PLAIN = "PLAIN"
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", PLAIN)
MAX_TOKEN_BYTES = 64 * 1024  # a SASL token is small; anything bigger is not a client's

# (user, mechanism code) -> the credential, or None.
Lookup = Callable[[str, int], scram.Credential | None]


class SaslFailed(Exception):
    """Authentication failed; the message is what the client is told."""


class Exchange:
    """One authentication: feed it each client token, send back what ``step`` returns."""

    def __init__(self, mechanism: str, lookup: Lookup) -> None:
        self.mechanism = mechanism
        self.lookup = lookup
        self.user: str | None = None  # set once authenticated
        self._server = None
        if mechanism != PLAIN:
            self._server = scramp.ScramMechanism(mechanism).make_server(self._auth_info)
        self._code = scram.CODES.get(mechanism, 0)

    @property
    def complete(self) -> bool:
        return self.user is not None

    def _failed(self) -> SaslFailed:
        return SaslFailed("Authentication failed during authentication due to invalid "
                          f"credentials with SASL mechanism {self.mechanism}")

    def _auth_info(self, user: str) -> tuple[bytes, bytes, bytes, int]:
        credential = self.lookup(user, self._code)
        if credential is None:
            raise scramp.ScramException("unknown user")
        self._user_asked = user
        return credential.salt, credential.stored_key, credential.server_key, \
            credential.iterations

    def step(self, token: bytes) -> bytes:
        """The response to one client token. May take milliseconds (PLAIN derives a key):
        call it from a worker thread."""
        if self.complete:
            raise SaslFailed("Authentication already complete")
        if len(token) > MAX_TOKEN_BYTES:
            raise SaslFailed(f"SASL token longer than {MAX_TOKEN_BYTES} bytes")
        if self._server is None:
            return self._plain(token)
        try:
            text = token.decode()
        except UnicodeDecodeError:
            raise self._failed() from None
        server = self._server
        try:
            if server.stage is None:
                server.set_client_first(text)
                return server.get_server_first().encode()
            server.set_client_final(text)
            final = server.get_server_final()
        except scramp.ScramException:
            raise self._failed() from None
        self.user = self._user_asked
        return final.encode()

    def _plain(self, token: bytes) -> bytes:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise SaslFailed("Invalid SASL/PLAIN response: expected 3 tokens")
        try:
            authzid, user, password = (part.decode() for part in parts)
        except UnicodeDecodeError:
            raise self._failed() from None
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
