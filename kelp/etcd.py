"""An etcd v3 client for trio, on grpclib (``kelp.grpc``), for the cluster's metadata.

What kelp needs from etcd, and no more:

* key-value calls: ``get``, ``get_prefix`` (with the store's revision), ``put``, ``delete``;
* compare-and-swap: ``put_if`` writes a key only if it is still at the revision the caller read
  (or absent, revision 0): every change to a partition's state goes through it, so two writers
  never both win;
* leases: ``grant``, ``revoke`` and ``keep_alive``, which raises ``LeaseLost`` once etcd has
  forgotten the lease (the keys under it are gone: a broker that sees this is no longer
  registered and must stop acting on its old claims);
* ``Mirror``: a live copy of every key under a prefix, loaded with one range read and kept
  current by a watch from the next revision; it survives etcd restarts and compactions by
  loading again.

Several endpoints may be given: a call that cannot reach one tries the next. Every call has a
timeout; an unreachable etcd is ``EtcdUnavailable``, never a hang.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from grpclib.exceptions import GRPCError, StreamTerminatedError

from kelp.address import Address
from kelp.grpc import Channel, Route, Routes
from kelp.rpc import etcdserverpb as pb

log = logging.getLogger("kelp.etcd")

KV = Routes(pb.KvBase)
LEASE = Routes(pb.LeaseBase)
WATCH = Routes(pb.WatchBase)
MAINTENANCE = Routes(pb.MaintenanceBase)

CALL_TIMEOUT_S = 5.0
RETRY_DELAY_S = 0.5

# What a call that never reached a working etcd raises: connection refused or reset, a stream
# cut, a deadline, or etcd itself saying it cannot serve (no leader, shutting down).
_UNREACHED = (OSError, StreamTerminatedError, GRPCError, EOFError, trio.BrokenResourceError)


class EtcdUnavailable(Exception):
    """No endpoint answered."""


class LeaseLost(Exception):
    """etcd no longer holds the lease (it expired or was revoked): its keys are gone."""


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix`` (etcd's
    convention: the prefix with its last byte below 0xff incremented; b"\\0" for all keys)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass
class Entry:
    """One key as etcd holds it."""

    key: bytes
    value: bytes
    mod_revision: int  # the revision that last wrote it: ``put_if``'s precondition
    create_revision: int = 0  # the revision that created it (an epoch: it only grows)
    lease: int = 0


def _entry(kv: pb.KeyValue) -> Entry:
    return Entry(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease)


class Etcd:
    def __init__(self, endpoints: Sequence[Address], *, timeout_s: float = CALL_TIMEOUT_S
                 ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._current = 0  # the endpoint that answered last
        self._channels: dict[int, Channel] = {}

    @classmethod
    def from_text(cls, text: str) -> Etcd:
        """``host:port[,host:port...]`` (``--etcd``)."""
        return cls([Address.parse(part.strip()) for part in text.split(",") if part.strip()])

    def _channel(self, index: int) -> Channel:
        if index not in self._channels:
            self._channels[index] = Channel(self.endpoints[index])
        return self._channels[index]

    def _drop_channel(self, index: int) -> None:
        """Forget an endpoint's channel (it failed): the next use connects afresh."""
        channel = self._channels.pop(index, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    async def _call(self, route: Route, request: object) -> object:
        """A unary call on the endpoint that answered last, then on each other in turn."""
        failures = []
        for step in range(len(self.endpoints)):
            index = (self._current + step) % len(self.endpoints)
            try:
                reply = await self._channel(index).call(route, request, timeout=self.timeout_s)
            except _UNREACHED as exc:
                if isinstance(exc, GRPCError) and "lease not found" in (exc.message or ""):
                    raise LeaseLost(exc.message) from exc  # a write under an expired lease
                if isinstance(exc, GRPCError) and exc.status.name in (
                        "INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE"):
                    raise  # etcd answered: the request itself is wrong
                failures.append(f"{self.endpoints[index]}: {exc!r}")
                self._drop_channel(index)
                continue
            except TimeoutError as exc:
                failures.append(f"{self.endpoints[index]}: timed out ({exc!r})")
                self._drop_channel(index)
                continue
            self._current = index
            return reply
        raise EtcdUnavailable("; ".join(failures))

    # -- key-value ------------------------------------------------------------------------

    async def get(self, key: bytes) -> Entry | None:
        reply = await self._call(KV.range, pb.RangeRequest(key=key))
        assert isinstance(reply, pb.RangeResponse)
        return _entry(reply.kvs[0]) if reply.kvs else None

    async def get_prefix(self, prefix: bytes) -> tuple[list[Entry], int]:
        """Every key under ``prefix``, in key order, and the store's revision they are at."""
        reply = await self._call(KV.range, pb.RangeRequest(key=prefix,
                                                           range_end=prefix_end(prefix)))
        assert isinstance(reply, pb.RangeResponse)
        return [_entry(kv) for kv in reply.kvs], reply.header.revision

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the revision that wrote it."""
        reply = await self._call(KV.put, pb.PutRequest(key=key, value=value, lease=lease))
        assert isinstance(reply, pb.PutResponse)
        return reply.header.revision

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); how many keys went."""
        request = pb.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        reply = await self._call(KV.delete_range, request)
        assert isinstance(reply, pb.DeleteRangeResponse)
        return reply.deleted

    async def write_if(self, conditions: Sequence[tuple[bytes, str, int]],
                       puts: Sequence[tuple[bytes, bytes]] = (), *, deletes: Sequence[bytes] = (),
                       delete_prefixes: Sequence[bytes] = (), lease: int = 0) -> int | None:
        """Apply ``puts`` and ``deletes`` (keys, and every key under ``delete_prefixes``)
        together only if every condition holds; the new revision, or None when one did not.
        A condition is ``(key, "mod" | "create", revision)``: the key was last written, or
        created, at that revision (0: absent)."""
        targets = {"mod": pb.CompareCompareTarget.MOD, "create": pb.CompareCompareTarget.CREATE}
        compares = []
        for key, field, revision in conditions:
            compare = pb.Compare(result=pb.CompareCompareResult.EQUAL, target=targets[field],
                                 key=key)
            if field == "mod":
                compare.mod_revision = revision
            else:
                compare.create_revision = revision
            compares.append(compare)
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=v, lease=lease))
               for k, v in puts]
        ops += [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k)) for k in deletes]
        ops += [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
            key=k, range_end=prefix_end(k))) for k in delete_prefixes]
        reply = await self._call(KV.txn, pb.TxnRequest(compare=compares, success=ops))
        assert isinstance(reply, pb.TxnResponse)
        return reply.header.revision if reply.succeeded else None

    async def put_if(self, key: bytes, value: bytes, *, mod_revision: int, lease: int = 0
                     ) -> int | None:
        """Write ``key`` only if it was last written at ``mod_revision`` (0: only if absent).
        The new revision, or None when someone else wrote it first."""
        return await self.write_if([(key, "mod", mod_revision)], [(key, value)], lease=lease)

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        """Delete ``key`` only if it was last written at ``mod_revision``."""
        return await self.write_if([(key, "mod", mod_revision)], deletes=[key]) is not None

    async def status(self) -> pb.StatusResponse:
        reply = await self._call(MAINTENANCE.status, pb.StatusRequest())
        assert isinstance(reply, pb.StatusResponse)
        return reply

    # -- leases ---------------------------------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        """A new lease that lives ``ttl_s`` seconds past its last keep-alive; its id."""
        reply = await self._call(LEASE.lease_grant, pb.LeaseGrantRequest(ttl=ttl_s))
        assert isinstance(reply, pb.LeaseGrantResponse)
        if reply.error:
            raise EtcdUnavailable(f"lease not granted: {reply.error}")
        return reply.id

    async def revoke(self, lease: int) -> None:
        """End a lease now: its keys are deleted (a clean shutdown's deregistration)."""
        with contextlib.suppress(LeaseLost):  # already expired: nothing to end
            await self._call(LEASE.lease_revoke, pb.LeaseRevokeRequest(id=lease))

    async def keep_alive(self, lease: int, ttl_s: int) -> None:
        """Renew ``lease`` every third of its TTL until cancelled. Raises ``LeaseLost`` when
        etcd says the lease is gone, or when no renewal got through for a whole TTL (etcd may
        have expired it meanwhile: a holder must assume the worst)."""
        renewed_at = trio.current_time()
        while True:
            # Nothing is raised inside the stream's block (its nursery would wrap it in an
            # exception group): each way out leaves a reason instead.
            expired, failure = False, ""
            try:
                async with self._channel(self._current).open_stream(
                        LEASE.lease_keep_alive) as stream:
                    while not (expired or failure):
                        try:
                            stream.send(pb.LeaseKeepAliveRequest(id=lease))
                        except trio.BrokenResourceError as exc:
                            failure = repr(exc)
                            break
                        reply = None
                        with trio.move_on_after(max(ttl_s / 3, 0.5)):
                            reply = await stream.recv()
                        if reply is None:
                            failure = repr(stream.error or "no answer in time")
                        elif reply.ttl <= 0:
                            expired = True
                        else:
                            renewed_at = trio.current_time()
                            await trio.sleep(ttl_s / 3)
            except (*_UNREACHED, TimeoutError) as exc:
                failure = repr(exc)
            if expired:
                raise LeaseLost(f"lease {lease:x} expired")
            if trio.current_time() - renewed_at >= ttl_s:
                raise LeaseLost(f"lease {lease:x} not renewed for {ttl_s} s ({failure})")
            log.warning("lease keep-alive failed, retrying", extra={"error": failure})
            self._drop_channel(self._current)
            self._current = (self._current + 1) % len(self.endpoints)
            await trio.sleep(RETRY_DELAY_S)


class Mirror:
    """A live copy of every key under ``prefix``: ``entries`` and the ``revision`` they are at.

    ``run`` loads the prefix, reports started, then applies the watch's events in order. On
    any failure (etcd down, the watch's start revision compacted away) it loads again: the
    copy is never left with a gap. ``wait_changed`` wakes on every change.
    """

    def __init__(self, etcd: Etcd, prefix: bytes) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.entries: dict[bytes, Entry] = {}
        self.revision = 0
        self._changed = trio.Event()

    async def wait_changed(self, seen_revision: int) -> None:
        """Until the copy is past ``seen_revision``."""
        while self.revision <= seen_revision:
            await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        started = False
        while True:
            try:
                entries, revision = await self.etcd.get_prefix(self.prefix)
                self.entries = {e.key: e for e in entries}
                self.revision = revision
                self._signal()
                if not started:
                    started = True
                    task_status.started()
                reason = await self._follow()
            except (EtcdUnavailable, *_UNREACHED, TimeoutError) as exc:
                reason = repr(exc)
            log.warning("etcd watch interrupted, reloading", extra={
                "prefix": self.prefix.decode(errors="replace"), "reason": reason})
            self.etcd._drop_channel(self.etcd._current)
            await trio.sleep(RETRY_DELAY_S)

    async def _follow(self) -> str:
        """Apply the watch's events until it ends; why it ended."""
        etcd = self.etcd
        create = pb.WatchCreateRequest(key=self.prefix, range_end=prefix_end(self.prefix),
                                       start_revision=self.revision + 1, progress_notify=True)
        async with etcd._channel(etcd._current).open_stream(WATCH.watch) as stream:
            stream.send(pb.WatchRequest(create_request=create))
            while (reply := await stream.recv()) is not None:
                if reply.canceled or reply.compact_revision:
                    return f"watch cancelled: {reply.cancel_reason or 'compacted'}"
                for event in reply.events:
                    if event.type == pb.EventEventType.DELETE:
                        self.entries.pop(event.kv.key, None)
                    else:
                        self.entries[event.kv.key] = _entry(event.kv)
                if reply.events:
                    # Not the header's revision: a watch catching up sends the store's
                    # current revision with a batch that may not reach it yet.
                    reached = reply.events[-1].kv.mod_revision
                elif reply.created:
                    # The store's revision when the watch was made, before the events since
                    # ``start_revision`` are sent: the copy is not there yet.
                    continue
                else:
                    reached = reply.header.revision  # a progress notice: every event is sent
                if reached > self.revision:
                    self.revision = reached
                    self._signal()
            return f"watch stream ended: {stream.error!r}"


async def wait_any_change(seen: Sequence[tuple[Mirror, int]], timeout_s: float) -> None:
    """Until one of the mirrors is past the revision paired with it, or ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as nursery:
            async def wake_on(mirror: Mirror, revision: int) -> None:
                await mirror.wait_changed(revision)
                nursery.cancel_scope.cancel()

            for mirror, revision in seen:
                nursery.start_soon(wake_on, mirror, revision)
