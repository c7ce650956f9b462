"""The cluster token: a secret the broker requires on every gRPC call, so that only kelp's own
processes (gateways, sidecars) can use it. Without it, anyone who reaches the broker's port
could create ACLs, change passwords or read segments around the gateway's authentication.

The broker creates the file (mode 0600, 32 random bytes as hex) if it does not exist; the others
read it. ``kelp up`` gives all three ``<run dir>/cluster.token``. The token travels as gRPC
metadata ``kelp-token`` (use gRPC over TLS when it crosses hosts) and, for the broker's HTTP
data routes, as the header ``x-kelp-token``.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

METADATA_KEY = "kelp-token"
HEADER = "x-kelp-token"


class TokenError(Exception):
    pass


def read(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"cannot read the cluster token {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise TokenError(f"the cluster token {path} is readable by group or others; "
                         "chmod 600 it")
    if len(text) < 32:
        raise TokenError(f"the cluster token in {path} is too short (at least 32 characters)")
    return text


def ensure(path: Path) -> str:
    """The token in ``path``, made first if the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read(path)  # another process made it a moment ago
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
    return read(path)


def matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
