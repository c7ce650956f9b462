"""A broker's place in a cluster, kept in etcd: its registration and the controller election.

A broker started with ``--etcd`` registers ``/kelp/brokers/<id>`` (its addresses and rack) under
a lease it keeps alive, as Kafka brokers register with their controller: a broker whose lease
expires is dead to the cluster, and its key is gone. A second process claiming a live broker's
id waits until that id is free (a broker restarted after a SIGKILL waits out its old lease).

The controller is the broker holding ``/kelp/controller`` (created only if absent, under the
holder's lease): when the holder dies its lease expires, the key goes, and every other broker
campaigns again; exactly one creation wins. The key's create revision is the controller epoch,
which only grows: a deposed controller's writes can be refused by comparing it.

Losing the lease (etcd unreachable for a whole TTL, or the lease revoked) ends this broker's
claims at once: it stops being controller and registers again with a new lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass

import trio

from kelp.etcd import Etcd, EtcdUnavailable, LeaseLost, Mirror

log = logging.getLogger("kelp.broker.cluster")

BROKERS = b"/kelp/brokers/"
CONTROLLER = b"/kelp/controller"
LEASE_TTL_S = 10  # Kafka's broker.session.timeout.ms is 9 s
RETRY_S = 1.0


@dataclass(frozen=True)
class BrokerInfo:
    """What a broker registers: how the others, gateways and sidecars reach it."""

    broker_id: int
    grpc: str
    http: str
    ucx: str = ""
    rack: str | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> BrokerInfo:
        value = json.loads(data)
        return cls(int(value["broker_id"]), str(value["grpc"]), str(value["http"]),
                   str(value.get("ucx", "")), value.get("rack"))


def broker_key(broker_id: int) -> bytes:
    return BROKERS + str(broker_id).encode()


class Membership:
    def __init__(self, etcd: Etcd, me: BrokerInfo, *, ttl_s: int = LEASE_TTL_S) -> None:
        self.etcd = etcd
        self.me = me
        self.ttl_s = ttl_s
        self.brokers_mirror = Mirror(etcd, BROKERS)
        self.controller_mirror = Mirror(etcd, CONTROLLER)
        self.lease = 0  # the lease of this life's registration (0: not registered)
        self.registered = False
        self.controller_id: int | None = None
        self.controller_epoch = 0
        self.lives = 0  # leases taken so far: more than one means a lease was lost
        self.lives_registered = 0  # of which got as far as registering

    @property
    def is_controller(self) -> bool:
        return self.registered and self.controller_id == self.me.broker_id

    def brokers(self) -> dict[int, BrokerInfo]:
        """The live brokers, by id (those whose registration an unexpired lease holds)."""
        found = {}
        for entry in self.brokers_mirror.entries.values():
            try:
                info = BrokerInfo.decode(entry.value)
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable broker registration", extra={"key": entry.key})
                continue
            found[info.broker_id] = info
        return found

    def health(self) -> dict[str, object]:
        return {"broker_id": self.me.broker_id, "registered": self.registered,
                "controller": self.controller_id, "controller_epoch": self.controller_epoch,
                "brokers": sorted(self.brokers())}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep this broker registered until cancelled (then deregister at once)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.brokers_mirror.run)
            await nursery.start(self.controller_mirror.run)
            while True:
                try:
                    await self._live(task_status)
                except (EtcdUnavailable, LeaseLost) as exc:
                    log.warning("registration ended, registering again", extra={
                        "error": str(exc)})
                if self.lives_registered:
                    task_status = trio.TASK_STATUS_IGNORED  # started once, by the first
                await trio.sleep(RETRY_S)

    async def _live(self, task_status: trio.TaskStatus[None]) -> None:
        """One registration: from a new lease until it is lost (or cancelled). Raises
        ``EtcdUnavailable`` when etcd cannot be reached."""
        lease = await self.etcd.grant(self.ttl_s)
        self.lease = lease
        self.lives += 1
        unavailable: EtcdUnavailable | LeaseLost | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_alive, lease, nursery.cancel_scope)
                # Caught here, not around the nursery, which would wrap it in a group.
                try:
                    await self._register(lease)
                    self.lives_registered += 1
                    task_status.started()
                    await self._follow_controller(lease)
                except (EtcdUnavailable, LeaseLost) as exc:
                    unavailable = exc
                    nursery.cancel_scope.cancel()
            if unavailable is not None:
                raise unavailable
        finally:
            self.registered = False
            self.controller_id = None if self.controller_id == self.me.broker_id \
                else self.controller_id
            self.lease = 0
            # Cancelled (shutdown) or lost: either way this lease is done with.
            with trio.CancelScope(shield=True), trio.move_on_after(2), \
                    contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(lease)

    async def _keep_alive(self, lease: int, life: trio.CancelScope) -> None:
        try:
            await self.etcd.keep_alive(lease, self.ttl_s)
        except LeaseLost as exc:
            log.error("cluster lease lost: no longer registered or controller", extra={
                "broker_id": self.me.broker_id, "error": str(exc)})
            life.cancel()

    async def _register(self, lease: int) -> None:
        key = broker_key(self.me.broker_id)
        waited = False
        while True:
            seen = self.brokers_mirror.revision
            if await self.etcd.put_if(key, self.me.encode(), mod_revision=0,
                                      lease=lease) is not None:
                break
            if not waited:
                log.warning("broker id registered by another process; waiting for its "
                            "lease to expire", extra={"broker_id": self.me.broker_id})
                waited = True
            with trio.move_on_after(RETRY_S):
                await self.brokers_mirror.wait_changed(seen)
        self.registered = True
        log.info("registered in the cluster", extra={"broker_id": self.me.broker_id,
                                                     "lease": f"{lease:x}"})

    async def _follow_controller(self, lease: int) -> None:
        """Know the controller; campaign whenever there is none. Runs until cancelled."""
        mirror = self.controller_mirror
        seen = -1
        while True:
            await mirror.wait_changed(seen)
            seen = mirror.revision
            entry = mirror.entries.get(CONTROLLER)
            if entry is None:
                self.controller_id = None
                # Whoever creates it first is controller; the mirror shows the winner.
                await self.etcd.put_if(CONTROLLER, str(self.me.broker_id).encode(),
                                       mod_revision=0, lease=lease)
                continue
            try:
                holder = int(entry.value)
            except ValueError:
                log.error("unreadable controller key", extra={"value": repr(entry.value)})
                holder = -1
            if holder == self.me.broker_id and entry.lease != lease:
                # An earlier life's claim, until its lease goes: nobody controls meanwhile.
                self.controller_id = None
                continue
            previous = self.controller_id
            self.controller_id = holder
            self.controller_epoch = entry.create_revision
            if self.controller_id != previous:
                log.info("controller elected", extra={
                    "controller": self.controller_id, "epoch": self.controller_epoch,
                    "this_broker": self.controller_id == self.me.broker_id})
