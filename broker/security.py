"""The cluster's SCRAM credentials and ACL bindings, kept durably by the broker (sans-IO but
for one file).

Every change bumps ``version`` and is written to ``<data>/security.json`` (replaced
atomically, mode 0600) before it is acknowledged, so a SIGKILL never loses an acknowledged
user or ACL. Passwords are never stored: only each mechanism's salt, iteration count, stored
key and server key (``kelp.scram``). Gateways hold a copy and decide with ``kelp.acl``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kio.schema.errors import ErrorCode

from kelp import acl, scram
from kelp.files import replace_file

log = logging.getLogger("kelp.broker.security")

MAX_USERS = 100_000
MAX_BINDINGS = 100_000
MAX_USER_CHARS = 1024


class SecurityError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SecurityStore:
    path: Path | None  # None: in memory only (tests that build a broker without a data dir)
    version: int = 1
    users: dict[str, dict[int, scram.Credential]] = field(default_factory=dict)
    bindings: list[acl.Binding] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None) -> SecurityStore:
        if path is None or not path.exists():
            return cls(path)
        return cls.from_json(path, path.read_text())

    @classmethod
    def from_json(cls, path: Path | None, text: str) -> SecurityStore:
        """The store ``to_json`` wrote (raises ValueError, KeyError or TypeError if it is
        not that)."""
        store = cls(path)
        data = json.loads(text)
        store.version = int(data.get("version", 1))
        for user, mechanisms in data.get("users", {}).items():
            store.users[user] = {
                int(code): scram.Credential(int(code), _unb64(c["salt"]), _unb64(c["stored_key"]),
                                            _unb64(c["server_key"]), int(c["iterations"]))
                for code, c in mechanisms.items()}
        store.bindings = [
            acl.Binding(acl.ResourceType(b["resource_type"]), b["resource_name"],
                        acl.PatternType(b["pattern_type"]), b["principal"], b["host"],
                        acl.Operation(b["operation"]), acl.Permission(b["permission"]))
            for b in data.get("acls", [])]
        return store

    def to_json(self) -> str:
        users = {user: {str(code): {"salt": _b64(c.salt), "stored_key": _b64(c.stored_key),
                                    "server_key": _b64(c.server_key),
                                    "iterations": c.iterations}
                        for code, c in mechanisms.items()}
                 for user, mechanisms in self.users.items()}
        acls = [{k: int(v) if isinstance(v, int) else v for k, v in asdict(b).items()}
                for b in self.bindings]
        return json.dumps({"version": self.version, "users": users, "acls": acls}, indent=1)

    def save(self) -> None:
        """Durable before the change is acknowledged (call from a thread)."""
        if self.path is not None:
            replace_file(self.path, self.to_json(), durable=True, mode=0o600)

    # -- SCRAM credentials ---------------------------------------------------------------

    def upsert(self, user: str, mechanism: int, iterations: int, salt: bytes,
               salted_password: bytes) -> None:
        check_user(user)
        if mechanism not in scram.NAMES:
            raise SecurityError(ErrorCode.unsupported_sasl_mechanism,
                                f"Unknown SCRAM mechanism {mechanism}")
        if not scram.MIN_ITERATIONS <= iterations <= scram.MAX_ITERATIONS:
            raise SecurityError(
                ErrorCode.unacceptable_credential,
                f"Iterations {iterations} must be between {scram.MIN_ITERATIONS} and "
                f"{scram.MAX_ITERATIONS}")
        if not salt or not salted_password or len(salt) > 1024 or len(salted_password) > 1024:
            raise SecurityError(ErrorCode.unacceptable_credential,
                                "Salt and salted password must be given (at most 1024 bytes)")
        if user not in self.users and len(self.users) >= MAX_USERS:
            raise SecurityError(ErrorCode.unacceptable_credential,
                                f"At most {MAX_USERS} users")
        self.users.setdefault(user, {})[mechanism] = scram.from_salted_password(
            mechanism, salted_password, salt, iterations)

    def delete_credential(self, user: str, mechanism: int) -> None:
        check_user(user)
        if mechanism not in scram.NAMES:
            raise SecurityError(ErrorCode.unsupported_sasl_mechanism,
                                f"Unknown SCRAM mechanism {mechanism}")
        mechanisms = self.users.get(user, {})
        if mechanism not in mechanisms:
            raise SecurityError(ErrorCode.resource_not_found,
                                "Attempt to delete a user credential that does not exist")
        del mechanisms[mechanism]
        if not mechanisms:
            del self.users[user]

    def add_user(self, user: str, password: str) -> bool:
        """Both SCRAM mechanisms for a user who has none yet (``--scram-users-file``)."""
        check_user(user)
        if user in self.users:
            return False
        self.users[user] = {code: scram.from_password(code, password) for code in scram.NAMES}
        return True

    # -- ACLs -----------------------------------------------------------------------------

    def create(self, binding: acl.Binding) -> bool:
        """Add a binding (Kafka ignores one that exists already); False if it did."""
        acl.check_binding(binding)
        if binding in self.bindings:
            return False
        if len(self.bindings) >= MAX_BINDINGS:
            raise acl.InvalidAcl(f"At most {MAX_BINDINGS} ACLs")
        self.bindings.append(binding)
        return True

    def delete(self, acl_filter: acl.Filter) -> list[acl.Binding]:
        acl.check_filter(acl_filter)
        matching = [b for b in self.bindings if acl_filter.matches(b)]
        if matching:
            self.bindings = [b for b in self.bindings if not acl_filter.matches(b)]
        return matching


def check_user(user: str) -> None:
    if not user:
        raise SecurityError(ErrorCode.unacceptable_credential, "Username must not be empty")
    if len(user) > MAX_USER_CHARS:
        raise SecurityError(ErrorCode.unacceptable_credential,
                            f"Username longer than {MAX_USER_CHARS} characters")


def read_users_file(path: Path) -> list[tuple[str, str]]:
    """``name:password`` lines (``#`` comments), for creating the first users at start. The
    file must not be readable by others: it holds passwords."""
    if os.stat(path).st_mode & 0o077:
        raise ValueError(f"{path} is readable by group or others; chmod 600 it")
    users = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"{path}:{number}: expected name:password")
        users.append((name, password))
    return users


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
