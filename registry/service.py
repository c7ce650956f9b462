"""The registry's IO: tail ``_schemas``, append to it, and take part in the leader election.

Every gateway runs one :class:`SchemaRegistry`. All of them read; only the elected leader
writes, so ids are allocated in one place. The election is a Kafka group (protocol type ``sr``,
protocol ``v0``) on the broker's own coordinator, with member metadata and assignments in the
JSON shape Confluent's registry and Karapace use, so they could share one election with kelp.

A write on the leader is: take the write lock, plan it against the current state, append the
records with acks=all (durable before we answer), then wait until this gateway's own reader has
applied them — so the answer and every later read on this gateway agree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import trio
from kio.schema.errors import ErrorCode

from kelp import recordbatch, records
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb
from registry.core import ParsedCache, RegistryError
from registry.link import BrokerDown, BrokerLink
from registry.state import RegistryState, noop_record

log = logging.getLogger("kelp.registry")

T = TypeVar("T")
Records = list[tuple[bytes, bytes | None]]
FETCH_MAX_BYTES = 8 * 1024 * 1024
WRITE_TIMEOUT_S = 30.0
HEARTBEAT_S = 3.0  # Kafka's default heartbeat.interval.ms: a third of the session
SESSION_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Identity:
    """How other registries reach this one (Confluent's SchemaRegistryIdentity)."""

    host: str
    port: int
    scheme: str = "http"
    leader_eligible: bool = True

    def to_json(self) -> dict[str, object]:
        return {"version": 1, "host": self.host, "port": self.port, "scheme": self.scheme,
                "master_eligibility": self.leader_eligible}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Identity:
        return cls(str(obj["host"]), int(str(obj["port"])), str(obj.get("scheme", "http")),
                   bool(obj.get("master_eligibility", True)))

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class SchemaRegistry:
    def __init__(self, broker: BrokerLink, identity: Identity, *, topic: str = "_schemas",
                 group: str = "schema-registry") -> None:
        self.broker = broker
        self.identity = identity
        self.topic = topic
        self.group = group
        self.state = RegistryState()
        self.cache = ParsedCache()
        self.ready = trio.Event()  # set once the reader caught up with the log at start
        self.leader: Identity | None = None
        self.is_leader = False
        self.elections = 0
        self._applied = trio.Event()  # replaced after every fetch that applied records
        self._write_lock = trio.Lock()
        self._leader_known = trio.Event()
        self._synced_as_leader = False
        self.problem: str | None = None  # why the registry cannot serve at all

    def health(self) -> dict[str, object]:
        return {"ready": self.ready.is_set(), "is_leader": self.is_leader,
                "leader": self.leader.url if self.leader else None,
                "subjects": len(self.state.subjects), "max_id": self.state.max_id,
                "offset": self.state.next_offset, "skipped_records": self.state.skipped_records,
                "elections": self.elections, "problem": self.problem}

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tail)
            nursery.start_soon(self._elect)
            task_status.started()

    async def _ensure_topic(self) -> None:
        """Create ``_schemas`` as Confluent requires: one partition, compacted."""
        spec = pb.TopicSpec(name=self.topic, partitions=1,
                            configs={"cleanup.policy": "compact"})
        reply = await self.broker.call(BROKER.create_topics,
                                       pb.CreateTopicsRequest(topics=[spec]))
        result = reply.results[0]
        if result.error_code not in (ErrorCode.none, ErrorCode.topic_already_exists):
            raise BrokerDown(f"cannot create {self.topic}: {result.error_message}")
        # Someone may have created it otherwise. Over several partitions the order of writes
        # is lost, and under a delete policy retention would one day delete schemas; Confluent
        # refuses to run on such a topic, and so does kelp (with the reason in every answer).
        described = await self.broker.call(
            BROKER.describe_topics, pb.DescribeTopicsRequest(names=[self.topic]))
        info = described.topics[0]
        policy = info.configs.get("cleanup.policy", "delete")
        if info.partitions != 1 or "compact" not in policy:
            self.problem = (f"The schemas topic {self.topic} has {info.partitions} partitions "
                            f"and cleanup.policy={policy}; the registry needs exactly one "
                            "partition and cleanup.policy=compact")
            log.error("schema registry disabled", extra={"reason": self.problem})

    async def _tail(self) -> None:
        """Apply every record of ``_schemas`` in order, for as long as the gateway runs."""
        backoff = 0.05
        start_end: int | None = None
        while True:
            try:
                if start_end is None:
                    await self.broker.wait_connected()
                    await self._ensure_topic()
                reply = await self.broker.fetch(pb.FetchRequest(
                    partitions=[pb.FetchPartition(topic=self.topic, partition=0,
                                                  offset=self.state.next_offset,
                                                  max_bytes=FETCH_MAX_BYTES)],
                    max_wait_ms=0 if start_end is None else 10_000, min_bytes=1,
                    max_bytes=FETCH_MAX_BYTES))
            except BrokerDown as exc:
                log.warning("schema reader: broker unavailable", extra={"error": str(exc)})
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            part = reply.partitions[0]
            if part.error_code == ErrorCode.offset_out_of_range:
                self.state.next_offset = part.log_start_offset  # deleted below us: skip on
                continue
            if part.error_code:
                log.warning("schema reader: fetch failed", extra={"error": part.error_code})
                await trio.sleep(0.5)
                continue
            before = self.state.next_offset
            self._apply(part.records)
            if part.records and self.state.next_offset == before:
                await trio.sleep(1.0)  # a batch whose header cannot be read: do not spin
            if start_end is None:
                start_end = part.high_watermark
            if not self.ready.is_set() and self.state.next_offset >= start_end:
                self.ready.set()
                log.info("schema registry ready", extra={
                    "subjects": len(self.state.subjects), "max_id": self.state.max_id,
                    "offset": self.state.next_offset})

    def _apply(self, data: bytes) -> None:
        """Apply the records of fetched batches; a batch that cannot be read is skipped with
        a log line (a poisoned ``_schemas`` must not stop the registry, let alone the gateway).
        """
        if not data:
            return
        try:
            self._apply_batches(data)
        except recordbatch.CorruptBatch as exc:  # a header so broken its length is unknown
            log.warning("unreadable record batch header", extra={
                "topic": self.topic, "partition": 0, "offset": self.state.next_offset,
                "reason": str(exc)})
        self._applied.set()
        self._applied = trio.Event()

    def _apply_batches(self, data: bytes) -> None:
        for position, header in recordbatch.iter_batches(data, verify_crc=False):
            if header.last_offset < self.state.next_offset:
                continue
            batch = memoryview(data)[position:position + header.size]
            found = None
            if recordbatch.crc_matches(data, position, header):
                found = records.records_or_skip(batch, log, topic=self.topic, partition=0)
            else:
                log.warning("skipping unreadable record batch", extra={
                    "topic": self.topic, "partition": 0, "offset": header.base_offset,
                    "reason": "CRC-32C mismatch"})
            for record in found or ():
                if record.offset >= self.state.next_offset:
                    self.state.apply(record.offset, record.key, record.value)
            # Compaction leaves gaps: the batch's last offset may have no record left.
            self.state.next_offset = max(self.state.next_offset, header.last_offset + 1)

    async def wait_ready(self, timeout: float = WRITE_TIMEOUT_S) -> None:
        if self.problem is not None:
            raise RegistryError(50001, self.problem)
        with trio.move_on_after(timeout):
            await self.ready.wait()
        if not self.ready.is_set():
            raise RegistryError(50002, "The schema registry has not finished reading "
                                f"{self.topic} yet")

    async def _wait_applied(self, offset: int) -> None:
        with trio.move_on_after(WRITE_TIMEOUT_S):
            while self.state.next_offset <= offset:
                await self._applied.wait()
        if self.state.next_offset <= offset:
            raise RegistryError(50002, f"Write to {self.topic} at offset {offset} was not "
                                "read back in time")

    # -- writing ---------------------------------------------------------------------------

    async def _append(self, pairs: Records) -> None:
        batch = records.build_batch(pairs, int(time.time() * 1000))
        try:
            reply = await self.broker.append(self.topic, 0, batch)
        except BrokerDown as exc:
            raise RegistryError(50001, f"Error while writing to {self.topic}: {exc}") from None
        if reply.error_code:
            raise RegistryError(50001, f"Error while writing to {self.topic}: "
                                f"{ErrorCode(reply.error_code).name} {reply.error_message}")
        await self._wait_applied(reply.base_offset + len(pairs) - 1)

    async def write(self, plan: Callable[[RegistryState], tuple[Records, T]]) -> T:
        """Run ``plan`` against the up-to-date state and append the records it returns.

        Only the leader may call this (the REST layer forwards everything else)."""
        await self.wait_ready()
        async with self._write_lock:
            if not self.is_leader:
                raise RegistryError(50004, "This registry is no longer the leader")
            if not self._synced_as_leader:
                # A previous leader's last writes may still be on their way to us: read up to
                # a marker of our own before allocating ids from what we have seen.
                await self._append([noop_record()])
                self._synced_as_leader = True
            pairs, answer = plan(self.state)
            if pairs:
                await self._append(pairs)
            return answer

    async def wait_for_leader(self, timeout: float = 10.0) -> Identity:
        with trio.move_on_after(timeout):
            while self.leader is None:
                await self._leader_known.wait()
        if self.leader is None:
            raise RegistryError(50004, "Leader not known: the registry election has not "
                                "finished")
        return self.leader

    # -- election --------------------------------------------------------------------------

    async def _elect(self) -> None:
        member_id = ""
        generation = -1
        try:
            while True:
                try:
                    member_id, generation = await self._join_and_sync(member_id)
                    member_id = await self._heartbeat_until_rebalance(member_id, generation)
                except BrokerDown as exc:
                    log.warning("registry election: broker unavailable",
                                extra={"error": str(exc)})
                    self._set_leader(None, False)
                    await trio.sleep(0.5)
        finally:
            self._set_leader(None, False)
            if member_id:
                with (trio.CancelScope(shield=True), trio.move_on_after(2),
                      contextlib.suppress(BrokerDown)):
                    await self.broker.call(BROKER.leave_group, pb.LeaveGroupRequest(
                        group_id=self.group, members=[pb.MemberIdentity(member_id=member_id)]),
                        timeout=2)

    async def _join_and_sync(self, member_id: str) -> tuple[str, int]:
        metadata = json.dumps(self.identity.to_json(), separators=(",", ":")).encode()
        while True:
            join = await self.broker.call(BROKER.join_group, pb.JoinGroupRequest(
                group_id=self.group, member_id=member_id, protocol_type="sr",
                protocols=[pb.GroupProtocol(name="v0", metadata=metadata)],
                session_timeout_ms=SESSION_TIMEOUT_MS, rebalance_timeout_ms=SESSION_TIMEOUT_MS,
                client_id="kelp-schema-registry", client_host=self.identity.host),
                timeout=SESSION_TIMEOUT_MS / 1000 + 30)
            if join.error_code == ErrorCode.unknown_member_id:
                member_id = ""
                continue
            if join.error_code:
                raise BrokerDown(f"JoinGroup: {ErrorCode(join.error_code).name}")
            member_id = join.member_id
            assignments = []
            if join.leader == member_id:
                assignments = _assign(join.members)
            sync = await self.broker.call(BROKER.sync_group, pb.SyncGroupRequest(
                group_id=self.group, generation_id=join.generation_id, member_id=member_id,
                protocol_type="sr", protocol_name="v0", assignments=assignments),
                timeout=SESSION_TIMEOUT_MS / 1000 + 30)
            if sync.error_code == ErrorCode.rebalance_in_progress:
                continue
            if sync.error_code:
                raise BrokerDown(f"SyncGroup: {ErrorCode(sync.error_code).name}")
            assignment = json.loads(sync.assignment) if sync.assignment else {}
            identity = assignment.get("master_identity")
            leader = Identity.from_json(identity) if identity else None
            self._set_leader(leader, assignment.get("master") == member_id)
            self.elections += 1
            return member_id, join.generation_id

    async def _heartbeat_until_rebalance(self, member_id: str, generation: int) -> str:
        """Heartbeat until the group rebalances; returns the member id to rejoin with."""
        while True:
            await trio.sleep(HEARTBEAT_S)
            beat = await self.broker.call(BROKER.heartbeat, pb.HeartbeatRequest(
                group_id=self.group, generation_id=generation, member_id=member_id))
            if beat.error_code == ErrorCode.none:
                continue
            self._set_leader(None, False)
            if beat.error_code == ErrorCode.rebalance_in_progress:
                return member_id
            return ""  # unknown member / illegal generation: join afresh

    def _set_leader(self, leader: Identity | None, is_leader: bool) -> None:
        if is_leader != self.is_leader or leader != self.leader:
            log.info("registry leader", extra={"leader": leader.url if leader else None,
                                               "me": is_leader})
        if not is_leader:
            self._synced_as_leader = False
        self.leader, self.is_leader = leader, is_leader
        if leader is not None:
            self._leader_known.set()
        else:
            self._leader_known = trio.Event()


def _assign(members: list[pb.GroupMember]) -> list[pb.MemberAssignment]:
    """The group leader's choice: the eligible member with the lowest URL leads (stable across
    rebalances, so a restart of another member does not move the leadership)."""
    identities: dict[str, Identity] = {}
    for member in members:
        try:
            identities[member.member_id] = Identity.from_json(json.loads(member.metadata))
        except (ValueError, KeyError, TypeError):
            log.warning("registry member with unreadable metadata",
                        extra={"member": member.member_id})
    eligible = sorted((identity.url, member_id) for member_id, identity in identities.items()
                      if identity.leader_eligible)
    body: dict[str, object] = {"version": 1, "error": 0}
    if eligible:
        chosen = eligible[0][1]
        body.update(master=chosen, master_identity=identities[chosen].to_json())
    else:
        body.update(error=1, master=None, master_identity=None)
    data = json.dumps(body, separators=(",", ":")).encode()
    return [pb.MemberAssignment(member_id=m.member_id, assignment=data) for m in members]

