"""Who a connection is, and what it may do: the gateway's copy of the broker's credentials and
ACLs, each connection's session, and the checks handlers make.

The copy is refreshed by long-polling the broker (``GetSecurity``), which answers as soon as a
change is durable, so an ACL created through any gateway is enforced by every gateway within a
round trip. Until the first copy arrives an authorizing gateway allows only super users (it
never fails open); SASL fails until then as for an unknown user.
"""

from __future__ import annotations

import hashlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from gateway.broker_client import BrokerClient, BrokerUnavailable
from gateway.listeners import ANONYMOUS, Listener
from gateway.sasl import Exchange
from kelp import acl, scram
from kelp.acl_wire import binding_from_pb
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

if TYPE_CHECKING:
    from registry.auth import Role

log = logging.getLogger("kelp.gateway.security")

POLL_WAIT_MS = 20_000
FIRST_COPY_WAIT_S = 10.0
RETRY_S = 1.0


@dataclass
class Session:
    """One connection's identity. ``authenticated`` is False only on a SASL listener before
    the client has authenticated (or after its session expired)."""

    listener: Listener | None = None  # None: a connection not made through a listener
    host: str = ""
    principal: str = ANONYMOUS
    authenticated: bool = True
    mechanism: str | None = None  # the SASL mechanism chosen by SaslHandshake
    exchange: Exchange | None = None  # the SASL exchange in progress
    raw_tokens: bool = False  # SaslHandshake v0: tokens follow without Kafka framing
    expires_at: float | None = None  # trio time the SASL session ends (KIP-368)
    close_after_answer: bool = False  # failed authentication: answer, then close

    @property
    def sasl(self) -> bool:
        return self.listener is not None and self.listener.sasl


current_session: ContextVar[Session | None] = ContextVar("current_session", default=None)


def session() -> Session:
    """The current connection's session (a plaintext ANONYMOUS one outside a connection)."""
    found = current_session.get()
    return found if found is not None else Session()


@dataclass
class SecurityView:
    broker: BrokerClient
    settings: acl.Settings = field(default_factory=acl.Settings)
    version: int = 0  # 0: nothing received yet
    authentications: int = 0  # SASL authentications completed (re-authentications too)
    authentication_failures: int = 0
    credentials: dict[tuple[str, int], scram.Credential] = field(default_factory=dict)
    authorizer: acl.Authorizer = field(init=False)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.authorizer = acl.Authorizer(self.settings)

    def lookup(self, user: str, mechanism: int) -> scram.Credential | None:
        return self.credentials.get((user, mechanism))

    def users(self) -> dict[str, list[scram.Credential]]:
        out: dict[str, list[scram.Credential]] = {}
        for (user, _), credential in sorted(self.credentials.items()):
            out.setdefault(user, []).append(credential)
        return out

    def apply(self, snapshot: pb.SecuritySnapshot) -> None:
        self.credentials = {
            (c.user, c.mechanism): scram.Credential(c.mechanism, c.salt, c.stored_key,
                                                    c.server_key, c.iterations)
            for c in snapshot.credentials}
        bindings = []
        for message in snapshot.acls:
            try:
                bindings.append(binding_from_pb(message))
            except acl.InvalidAcl:
                log.warning("ignoring an ACL with unknown codes", extra={"acl": str(message)})
        self.authorizer = acl.Authorizer(self.settings, bindings)
        self.version = snapshot.version
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, needed_at_start: bool = True,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the copy current for as long as the gateway runs. When the gateway
        authenticates or authorizes (``needed_at_start``), reports started only once the first
        copy is in (or after ``FIRST_COPY_WAIT_S`` without a broker), so a gateway that says
        it is ready can authenticate its users; otherwise at once."""
        with trio.move_on_after(FIRST_COPY_WAIT_S if needed_at_start else 0):
            while not self.version:
                try:
                    self.apply(await self.broker.call(
                        BROKER.get_security, pb.GetSecurityRequest(known_version=0, wait_ms=0)))
                except Exception:
                    await trio.sleep(0.1)
        task_status.started()
        while True:
            try:
                snapshot = await self.broker.call(
                    BROKER.get_security,
                    pb.GetSecurityRequest(known_version=self.version, wait_ms=POLL_WAIT_MS),
                    timeout=POLL_WAIT_MS / 1000 + 10)
            except BrokerUnavailable:
                await trio.sleep(RETRY_S)
                continue
            except Exception:
                log.exception("could not read the broker's credentials and ACLs")
                await trio.sleep(RETRY_S)
                continue
            if snapshot.version != self.version:
                self.apply(snapshot)

    async def caught_up(self, version: int, timeout_s: float = 5.0) -> None:
        """Wait until this gateway enforces ``version`` (after a change it made itself)."""
        with trio.move_on_after(timeout_s):
            while self.version < version:
                await self._changed.wait()

    # -- decisions for the current connection ----------------------------------------------

    def allows(self, operation: acl.Operation, resource_type: acl.ResourceType,
               name: str) -> bool:
        current = session()
        return self.authorizer.authorize(current.principal, current.host, operation,
                                         resource_type, name)

    def allows_any(self, operation: acl.Operation, resource_type: acl.ResourceType) -> bool:
        current = session()
        return self.authorizer.authorize_any(current.principal, current.host, operation,
                                             resource_type)

    def allows_cluster(self, operation: acl.Operation) -> bool:
        return self.allows(operation, acl.ResourceType.CLUSTER, acl.CLUSTER_NAME)

    def operations(self, resource_type: acl.ResourceType, name: str) -> int:
        current = session()
        return self.authorizer.operations(current.principal, current.host, resource_type, name)


class RegistryUsers:
    """The registry's users are the broker's SCRAM users; their roles come from ACLs on the
    registry's topic: READ or DESCRIBE reads, WRITE registers and soft-deletes, ALTER
    administers (configs, modes, permanent deletes). Super users administer."""

    MAX_REMEMBERED = 1024

    def __init__(self, view: SecurityView, topic: str) -> None:
        self.view = view
        self.topic = topic
        # Basic auth sends the password with every request, and checking one derives a key
        # (milliseconds of CPU on the event loop): a check that passed is remembered, by a
        # hash of the credentials, until the users change.
        self._verified: dict[bytes, tuple[int, str]] = {}

    def authenticate(self, user: str, password: str) -> str | None:
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        remembered = self._verified.get(key)
        if remembered is not None and remembered[0] == self.view.version:
            return remembered[1]
        credential = (self.view.lookup(user, scram.SHA_512)
                      or self.view.lookup(user, scram.SHA_256))
        if credential is None or not scram.verify_password(credential, password):
            return None
        if len(self._verified) >= self.MAX_REMEMBERED:
            self._verified.clear()
        self._verified[key] = (self.view.version, "User:" + user)
        return "User:" + user

    def role(self, principal: str, host: str) -> Role:
        from registry.auth import Role

        authorizer = self.view.authorizer
        for operation, role in ((acl.Operation.ALTER, Role.ADMIN),
                                (acl.Operation.WRITE, Role.WRITE),
                                (acl.Operation.DESCRIBE, Role.READ)):
            if authorizer.authorize(principal, host, operation, acl.ResourceType.TOPIC,
                                    self.topic):
                return role
        return Role.NONE
