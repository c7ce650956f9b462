"""GetSecurity, AlterScramCredentials, CreateAcls and DeleteAcls: part of ``BrokerService``.

Gateways keep a copy of every credential and binding and long-poll ``GetSecurity`` with the
version they hold: it answers as soon as a change is durable, so a new ACL or a deleted user
takes effect on every gateway at once (within one round trip), not at the next poll.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from kio.schema.errors import ErrorCode

from broker.security import SecurityError, SecurityStore
from kelp import acl
from kelp.acl_wire import binding_from_pb, binding_to_pb, filter_from_pb
from kelp.rpc.broker import v1 as pb

if TYPE_CHECKING:
    from broker.cluster_security import ClusterSecurity

MAX_WAIT_MS = 30_000


class SecurityCalls:
    security: SecurityStore
    _security_lock: trio.Lock
    _security_changed: trio.Event
    # In a cluster, the store lives in etcd (broker.cluster_security); None for a lone broker.
    cluster_security: ClusterSecurity | None

    def replace_security(self, newer: SecurityStore) -> None:
        """Swap in the store another broker changed (a cluster), and wake the pollers."""
        self.security = newer
        self._security_changed.set()
        self._security_changed = trio.Event()

    def security_snapshot(self) -> pb.SecuritySnapshot:
        store = self.security
        return pb.SecuritySnapshot(
            version=store.version,
            credentials=[pb.ScramCredential(user=user, mechanism=c.mechanism, salt=c.salt,
                                            stored_key=c.stored_key, server_key=c.server_key,
                                            iterations=c.iterations)
                         for user, mechanisms in store.users.items()
                         for c in mechanisms.values()],
            acls=[binding_to_pb(b) for b in store.bindings])

    async def get_security(self, request: pb.GetSecurityRequest) -> pb.SecuritySnapshot:
        if request.known_version == self.security.version and request.wait_ms:
            with trio.move_on_after(min(request.wait_ms, MAX_WAIT_MS) / 1000):
                await self._security_changed.wait()
        return self.security_snapshot()

    async def alter_scram_credentials(self, request: pb.AlterScramCredentialsRequest
                                      ) -> pb.AlterScramCredentialsReply:
        store = self.security
        results: dict[str, pb.SecurityResult] = {}
        async with self._security_lock:
            before = copy.deepcopy(store.users)
            for deletion in request.deletions:
                results[deletion.user] = _result(deletion.user, lambda d=deletion: (
                    store.delete_credential(d.user, d.mechanism)))
            for upsertion in request.upsertions:
                if results.get(upsertion.user, pb.SecurityResult()).error_code:
                    continue
                results[upsertion.user] = _result(upsertion.user, lambda u=upsertion: (
                    store.upsert(u.user, u.mechanism, u.iterations, u.salt, u.salted_password)))
            if store.users != before:
                await self._commit_security(lambda: setattr(store, "users", before))
        return pb.AlterScramCredentialsReply(results=list(results.values()),
                                             version=store.version)

    async def create_acls(self, request: pb.CreateAclsRequest) -> pb.CreateAclsReply:
        store = self.security
        results = []
        async with self._security_lock:
            before = list(store.bindings)
            for message in request.creations:
                result = pb.SecurityResult()
                try:
                    store.create(binding_from_pb(message))
                except acl.InvalidAcl as exc:
                    result.error_code, result.error_message = ErrorCode.invalid_request, str(exc)
                results.append(result)
            if store.bindings != before:
                await self._commit_security(lambda: setattr(store, "bindings", before))
        return pb.CreateAclsReply(results=results, version=store.version)

    async def delete_acls(self, request: pb.DeleteAclsRequest) -> pb.DeleteAclsReply:
        store = self.security
        results = []
        async with self._security_lock:
            before = list(store.bindings)
            for message in request.filters:
                result = pb.DeleteAclsFilterResult()
                try:
                    result.matching = [binding_to_pb(b)
                                       for b in store.delete(filter_from_pb(message))]
                except acl.InvalidAcl as exc:
                    result.error_code, result.error_message = ErrorCode.invalid_request, str(exc)
                results.append(result)
            if store.bindings != before:
                await self._commit_security(lambda: setattr(store, "bindings", before))
        return pb.DeleteAclsReply(results=results, version=store.version)

    async def _commit_security(self, undo: Callable[[], None]) -> None:
        """Bump the version, make it durable (or undo the change in memory), wake pollers.
        Shielded: a caller that gives up must not leave memory and disk disagreeing."""
        store = self.security
        cluster = self.cluster_security
        with trio.CancelScope(shield=True):
            store.version += 1
            try:
                if cluster is None:
                    await trio.to_thread.run_sync(store.save)
                elif not await cluster.commit(store):
                    raise GRPCError(Status.ABORTED, "credentials or ACLs were changed "
                                    "through another broker meanwhile: retry")
            except BaseException:
                store.version -= 1
                undo()
                raise
        self._security_changed.set()
        self._security_changed = trio.Event()


def _result(user: str, change: Callable[[], None]) -> pb.SecurityResult:
    result = pb.SecurityResult(user=user)
    try:
        change()
    except SecurityError as exc:
        result.error_code, result.error_message = exc.code, str(exc)
    return result
