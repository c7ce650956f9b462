"""HTTP Basic authentication and roles for the registry's REST API, sans-IO.

Confluent's clients send ``Authorization: Basic base64(user:password)`` when given
``basic.auth.user.info``. Every route needs a role: reading (GET, lookups, compatibility
checks) needs READ, registering and soft deletes WRITE, configs, modes and permanent deletes
ADMIN; a route not listed needs ADMIN (deny by default). Who the users are and what role each
has is the ``Authenticator``'s business (the gateway's: SCRAM users and ACLs).
"""

from __future__ import annotations

import base64
import binascii
import re
from enum import IntEnum
from typing import Protocol

MAX_HEADER_CHARS = 4096


class Role(IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 3


class Authenticator(Protocol):
    def authenticate(self, user: str, password: str) -> str | None:
        """The principal (``User:alice``) for good credentials, else None."""

    def role(self, principal: str, host: str) -> Role: ...


class Unauthorized(Exception):
    """No credentials, or unreadable ones (a 401)."""


def credentials(header: str | None) -> tuple[str, str]:
    """(user, password) from an Authorization header; raises Unauthorized."""
    if not header:
        raise Unauthorized("Authentication required")
    if len(header) > MAX_HEADER_CHARS:
        raise Unauthorized("Authorization header too long")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthorized("Basic authentication required")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("Malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise Unauthorized("Malformed Basic credentials")
    return user, password


# (method, path pattern) -> role. ``*`` is one path segment.
_ROUTES: list[tuple[str, str, Role]] = [
    ("POST", "/subjects/*", Role.READ),  # lookup: is this schema registered?
    ("POST", "/compatibility/subjects/*/versions", Role.READ),
    ("POST", "/compatibility/subjects/*/versions/*", Role.READ),
    ("POST", "/subjects/*/versions", Role.WRITE),
    ("DELETE", "/subjects/*", Role.WRITE),
    ("DELETE", "/subjects/*/versions/*", Role.WRITE),
    ("PUT", "/config", Role.ADMIN),
    ("PUT", "/config/*", Role.ADMIN),
    ("DELETE", "/config", Role.ADMIN),
    ("DELETE", "/config/*", Role.ADMIN),
    ("PUT", "/mode", Role.ADMIN),
    ("PUT", "/mode/*", Role.ADMIN),
    ("DELETE", "/mode", Role.ADMIN),
    ("DELETE", "/mode/*", Role.ADMIN),
]
_COMPILED = [(method, re.compile("^" + re.escape(pattern).replace(r"\*", "[^/]+") + "$"), role)
             for method, pattern, role in _ROUTES]


def required_role(method: str, path: str, query: dict[str, str]) -> Role:
    if method in ("GET", "HEAD"):
        return Role.READ
    for route_method, pattern, role in _COMPILED:
        if route_method == method and pattern.match(path):
            if method == "DELETE" and query.get("permanent", "").lower() == "true":
                return Role.ADMIN  # a hard delete cannot be undone
            return role
    return Role.ADMIN


def denied_message(principal: str, method: str, path: str) -> str:
    return f"User {principal} is denied operation {method} on {path}"
