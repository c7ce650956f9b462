"""A cluster's SCRAM credentials and ACLs, kept in etcd (``/kelp/security``).

A lone broker keeps them in ``<data>/security.json``; in a cluster every broker must answer
the same, and a change made through one must outlive it. So the store's JSON lives in one etcd
key, written by compare-and-swap on the revision this broker last saw: a change is
acknowledged once etcd has it, and a broker whose copy was stale (someone else changed it
first) undoes its change, takes the newer copy and asks the client to retry. Every broker
mirrors the key and swaps the newer store in as soon as it changes, waking the gateways that
long-poll ``GetSecurity`` on it.

When etcd has no copy yet, the first broker to start writes its own (its ``security.json`` and
``--scram-users-file`` users), so a broker that joins a cluster brings its users along only if
the cluster had none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from broker.security import SecurityStore
from kelp.etcd import Etcd, EtcdUnavailable, Mirror

log = logging.getLogger("kelp.broker.security")

KEY = b"/kelp/security"


class ClusterSecurity:
    def __init__(self, etcd: Etcd, store: Callable[[], SecurityStore],
                 replace: Callable[[SecurityStore], None]) -> None:
        self.etcd = etcd
        self.store = store        # the service's current store
        self.replace = replace    # swaps a newer store in (and wakes GetSecurity pollers)
        self.mirror = Mirror(etcd, KEY)
        self.revision = 0         # etcd's mod revision of the copy this broker holds

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.mirror.run)
            await self._seed()
            self._apply()
            task_status.started()
            while True:
                await self.mirror.wait_changed(self.mirror.revision)
                self._apply()

    async def _seed(self) -> None:
        """Give etcd this broker's store if it has none (a first start, or a cluster made of
        brokers that ran alone before)."""
        if self.mirror.entries.get(KEY) is not None:
            return
        try:
            written = await self.etcd.put_if(KEY, self.store().to_json().encode(),
                                             mod_revision=0)
        except EtcdUnavailable as exc:
            log.warning("could not give etcd the credentials and ACLs", extra={
                "error": str(exc)})
            return
        if written is not None:
            self.revision = written
            log.info("credentials and ACLs written to etcd", extra={
                "users": len(self.store().users), "acls": len(self.store().bindings)})

    def _apply(self) -> None:
        entry = self.mirror.entries.get(KEY)
        if entry is None or entry.mod_revision <= self.revision:
            return
        current = self.store()
        try:
            newer = SecurityStore.from_json(current.path, entry.value.decode())
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable credentials and ACLs in etcd, keeping this broker's", extra={
                "revision": entry.mod_revision, "error": repr(exc)})
            self.revision = entry.mod_revision
            return
        self.revision = entry.mod_revision
        newer.version = max(newer.version, current.version + 1)  # gateways see it is newer
        self.replace(newer)

    async def commit(self, store: SecurityStore) -> bool:
        """Write ``store`` if etcd still holds the copy this broker saw; False if someone
        changed it first (the mirror brings that change in). Raises ``GRPCError``
        (UNAVAILABLE) when etcd cannot be reached."""
        try:
            written = await self.etcd.put_if(KEY, store.to_json().encode(),
                                             mod_revision=self.revision)
        except EtcdUnavailable as exc:
            raise GRPCError(Status.UNAVAILABLE, f"etcd is unreachable: {exc}") from None
        if written is None:
            return False
        self.revision = written
        return True
