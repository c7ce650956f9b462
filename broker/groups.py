"""The group coordinator (Kafka's classic protocol), owned by the broker.

Gateways are stateless: every JoinGroup, SyncGroup, Heartbeat and commit reaches this one
coordinator, so a gateway restart never disturbs a group.

States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable (and back), Dead once
deleted. A JoinGroup parks until every known member has rejoined (or the rebalance timeout
drops the ones that did not); the leader alone receives the members' metadata, and every
member's SyncGroup parks until the leader's assignment arrives. Members are identified by the
member id kelp hands out (never by client id, which many clients share); static members
(KIP-345) by their group.instance.id. Protocol types other than "consumer" (Schema Registry's
"sr") pass through untouched: kelp never looks inside metadata or assignments, except to list
a consumer group's subscribed topics for OffsetDelete.

Timers (session expiry, rebalance timeout, the delayed initial rebalance, offset retention of
empty groups) run in one task that sleeps until the next deadline or until state changes.

The groups and members themselves are in ``group_state``; committing, fetching and deleting
offsets in ``group_offsets``. This module is the state machine: join, sync, heartbeat, leave.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import trio
from kio.schema.errors import ErrorCode

from broker.consumer_coordinator import ConsumerCoordination
from broker.consumer_group import ConsumerGroup
from broker.group_file import GroupFile
from broker.group_offsets import GroupOffsets
from broker.group_state import (
    MAX_GROUP_ID_LENGTH,
    MAX_MEMBERS,
    MAX_METADATA_BYTES,
    MAX_SESSION_TIMEOUT_MS,
    MIN_SESSION_TIMEOUT_MS,
    Group,
    GroupError,
    JoinResult,
    Member,
    Parked,
    State,
    choose_protocol,
    common_protocols,
    group_from_json,
    group_to_json,
    valid_group_id,
)
from broker.log import now_ms
from broker.offsets import OffsetStore

__all__ = [  # the model lives in group_state; callers import it from here as before
    "MAX_GROUP_ID_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_SESSION_TIMEOUT_MS",
    "MIN_SESSION_TIMEOUT_MS",
    "Coordinator",
    "Group",
    "GroupError",
    "JoinResult",
    "Member",
    "State",
    "valid_group_id",
]

log = logging.getLogger("kelp.broker.groups")

class Coordinator(ConsumerCoordination, GroupOffsets):
    def __init__(self, store: OffsetStore, *, initial_rebalance_delay_s: float = 3.0,
                 offsets_retention_ms: int = 7 * 24 * 3600 * 1000,
                 session_timeout_bounds_ms: tuple[int, int] = (MIN_SESSION_TIMEOUT_MS,
                                                               MAX_SESSION_TIMEOUT_MS),
                 partition_exists: Callable[[str, int], bool] | None = None,
                 topics: Callable[[], dict[str, tuple[uuid.UUID, int]]] | None = None,
                 group_config: Callable[[str, str], int] | None = None,
                 state_dir: Path | None = None,
                 group_files: tuple[GroupFile, GroupFile] | None = None) -> None:
        self.store = store
        # Groups' state kept across restarts (None: in memory only, for tests): classic
        # groups' stable generations, and KIP-848 groups (broker.consumer_group_store). In a
        # cluster, ``group_files`` keep them in the shared coordination log instead.
        self.classic_file, self.consumer_file = group_files or (
            GroupFile(state_dir and state_dir / "classic-groups.json"),
            GroupFile(state_dir and state_dir / "consumer-groups.json"))
        # KIP-848 consumer groups (broker.consumer_coordinator): every topic's id and size,
        # and the group configs (consumer.session.timeout.ms, ...).
        self.consumer_groups: dict[str, ConsumerGroup] = {}
        self.topics = topics or dict
        self.group_config = group_config or _default_group_config
        # group.min/max.session.timeout.ms: the session timeouts a member may ask for.
        self.session_timeout_bounds_ms = session_timeout_bounds_ms
        self.partition_exists = partition_exists or (lambda _topic, _partition: True)
        self.groups: dict[str, Group] = {}
        self.initial_rebalance_delay_s = initial_rebalance_delay_s
        self.offsets_retention_ms = offsets_retention_ms
        self._changed = trio.Event()
        for group_id in store.groups:  # groups known only by their offsets start Empty
            self.groups[group_id] = Group(group_id, empty_since_ms=now_ms())

    def load_groups(self) -> None:
        """Bring back the groups a restart would otherwise forget: members carry on in their
        generation (heartbeats and commits keep working), and nobody is handed partitions
        that a member which has not noticed the restart still consumes."""
        now = trio.current_time()
        for group_id, value in self.classic_file.read().items():
            try:
                group = group_from_json(group_id, value, now)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.error("group state skipped", extra={"group": group_id,
                                                        "error": repr(exc)})
                continue
            self.groups[group_id] = group
            self._note(group)
        self.load_consumer_groups()

    def _note(self, group: Group) -> None:
        """Remember the group for the group file; called where it becomes Stable or Empty
        (in between, the file keeps its last stable generation, as Kafka's log does)."""
        self.classic_file.note(group.group_id, group_to_json(group))
        self._poke()  # the timer task writes what nobody waits for

    # -- timers -------------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()

    async def run(self) -> None:
        """Drive every deadline until cancelled (one task for all groups)."""
        while True:
            wake = self._next_deadline()
            with trio.move_on_at(wake):
                await self._changed.wait()
            self._changed = trio.Event()
            await self._on_timers(trio.current_time())
            try:
                await self.classic_file.save()
            except OSError as exc:  # kept in memory: the next change retries the write
                log.error("group state not written", extra={"error": str(exc)})

    def _next_deadline(self) -> float:
        deadlines = [trio.current_time() + 60.0, *self.consumer_deadlines()]
        for group in self.groups.values():
            if group.state == State.PREPARING:
                deadlines.append(group.initial_delay_until if self._all_joined(group)
                                  else group.rebalance_deadline)
            deadlines += group.pending.values()
            deadlines += [m.deadline for m in group.members.values() if m.join is None]
        return min(deadlines)

    async def _on_timers(self, now: float) -> None:
        await self.expire_consumer_members(now)
        await self.expire_empty_consumer_groups()
        for group in list(self.groups.values()):
            for member_id in [m for m, deadline in group.pending.items() if deadline <= now]:
                del group.pending[member_id]  # handed out by MEMBER_ID_REQUIRED, never used
            expired = [m for m in group.members.values() if m.join is None and m.deadline <= now]
            for member in expired:
                log.info("member session expired", extra={"group": group.group_id,
                                                          "member": member.member_id})
                self._remove(group, member, ErrorCode.unknown_member_id)
            if expired:
                self._rebalance_after_departure(group)
            if group.state == State.PREPARING:
                self._maybe_complete_join(group, now)
        await self._expire_offsets()

    # -- join ---------------------------------------------------------------------------

    async def join(self, group_id: str, member_id: str, instance_id: str | None,
                   protocol_type: str, protocols: list[tuple[str, bytes]],
                   session_timeout_ms: int, rebalance_timeout_ms: int,
                   require_known_member_id: bool, client_id: str,
                   client_host: str) -> JoinResult:
        if not valid_group_id(group_id):
            return JoinResult(ErrorCode.invalid_group_id)
        if self.join_refused(group_id):
            return JoinResult(ErrorCode.inconsistent_group_protocol, member_id=member_id)
        low, high = self.session_timeout_bounds_ms
        if not low <= session_timeout_ms <= high:
            return JoinResult(ErrorCode.invalid_session_timeout, member_id=member_id)
        group = self.groups.get(group_id)
        if group is None or group.state == State.DEAD:
            group = self.groups[group_id] = Group(group_id, empty_since_ms=now_ms())
        if not protocols or (group.members and (
                protocol_type != group.protocol_type
                or not common_protocols(group, protocols))):
            return JoinResult(ErrorCode.inconsistent_group_protocol, member_id=member_id)
        now = trio.current_time()
        rebalance_s = (rebalance_timeout_ms if rebalance_timeout_ms > 0
                       else session_timeout_ms) / 1000

        if not member_id:
            if instance_id is not None and instance_id in group.static:
                return await self._rejoin_static(group, instance_id, protocols, client_id,
                                                 client_host, session_timeout_ms, rebalance_s)
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            if require_known_member_id and instance_id is None:
                group.pending[member_id] = now + session_timeout_ms / 1000
                return JoinResult(ErrorCode.member_id_required, member_id=member_id)
        elif member_id not in group.members and group.pending.pop(member_id, None) is None:
            return JoinResult(ErrorCode.unknown_member_id, member_id=member_id)
        member = group.members.get(member_id)
        if member is None and len(group.members) >= MAX_MEMBERS:
            return JoinResult(ErrorCode.group_max_size_reached, member_id=member_id)
        if member is None:
            member = group.members[member_id] = Member(
                member_id, instance_id, client_id, client_host, session_timeout_ms / 1000,
                rebalance_s, protocols)
            if instance_id is not None:
                group.static[instance_id] = member_id
            group.protocol_type = protocol_type
            log.info("member joined", extra={"group": group_id, "member": member_id})
        else:
            unchanged = member.protocols == protocols
            member.protocols = protocols
            member.session_timeout_s = session_timeout_ms / 1000
            member.rebalance_timeout_s = rebalance_s
            if (group.state == State.STABLE and unchanged and member_id != group.leader):
                # Nothing to rebalance: hand back the current generation.
                member.deadline = now + member.session_timeout_s
                return self._join_result(group, member)
        return await self._park_join(group, member)

    async def _rejoin_static(self, group: Group, instance_id: str,
                             protocols: list[tuple[str, bytes]], client_id: str,
                             client_host: str, session_timeout_ms: int,
                             rebalance_s: float) -> JoinResult:
        """A restarted static member takes over its old identity without a rebalance."""
        old = group.members[group.static[instance_id]]
        new_id = f"{instance_id}-{uuid.uuid4()}"
        if old.join is not None:
            old.join.finish(JoinResult(ErrorCode.fenced_instance_id, member_id=old.member_id))
        if old.sync is not None:
            old.sync.finish(ErrorCode.fenced_instance_id)
        del group.members[old.member_id]
        member = Member(new_id, instance_id, client_id, client_host, session_timeout_ms / 1000,
                        rebalance_s, protocols, assignment=old.assignment)
        group.members[new_id] = member
        group.static[instance_id] = new_id
        if group.leader == old.member_id:
            group.leader = new_id
        if group.state == State.STABLE and old.protocols == protocols:
            member.deadline = trio.current_time() + member.session_timeout_s
            self._note(group)  # after a restart the new member id must be the known one
            await self.classic_file.save()
            result = self._join_result(group, member)
            result.members = []  # the assignment stands: no need to compute a new one
            return result
        return await self._park_join(group, member)

    async def _park_join(self, group: Group, member: Member) -> JoinResult:
        if group.state != State.PREPARING:
            self._prepare_rebalance(group)
        elif group.initial_delay_until > trio.current_time():
            # The delayed initial rebalance waits a little longer for each newcomer.
            group.initial_delay_until = min(
                trio.current_time() + self.initial_rebalance_delay_s, group.rebalance_deadline)
        member.joined = True
        member.join = parked = Parked()
        self._maybe_complete_join(group, trio.current_time())
        self._poke()
        await parked.done.wait()
        assert isinstance(parked.result, JoinResult)
        return parked.result

    def _prepare_rebalance(self, group: Group) -> None:
        now = trio.current_time()
        if group.state == State.EMPTY:
            group.initial_delay_until = now + self.initial_rebalance_delay_s
        else:
            group.initial_delay_until = 0.0
        for member in group.members.values():
            member.joined = False
            if member.sync is not None:
                member.sync.finish(ErrorCode.rebalance_in_progress)
                member.sync = None
        group.state = State.PREPARING
        group.rebalance_deadline = now + max(
            (m.rebalance_timeout_s for m in group.members.values()), default=0.0)
        log.info("rebalancing", extra={"group": group.group_id,
                                       "members": len(group.members)})

    def _all_joined(self, group: Group) -> bool:
        return all(m.joined for m in group.members.values())

    def _maybe_complete_join(self, group: Group, now: float) -> None:
        if group.state != State.PREPARING:
            return
        if not (self._all_joined(group) and now >= group.initial_delay_until) and (
                now < group.rebalance_deadline):
            return
        for member in [m for m in group.members.values() if not m.joined]:
            log.info("member did not rejoin in time", extra={"group": group.group_id,
                                                            "member": member.member_id})
            self._remove(group, member, ErrorCode.unknown_member_id)
        group.generation += 1
        if not group.members:
            group.state, group.leader, group.protocol_name = State.EMPTY, "", ""
            group.empty_since_ms = now_ms()
            self._note(group)
            return
        group.protocol_name = choose_protocol(group)
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.state = State.COMPLETING
        for member in group.members.values():
            member.deadline = now + member.session_timeout_s
            if member.join is not None:
                member.join.finish(self._join_result(group, member))
                member.join = None
        log.info("rebalance joined", extra={"group": group.group_id,
                                            "generation": group.generation,
                                            "members": len(group.members),
                                            "protocol": group.protocol_name})

    def _join_result(self, group: Group, member: Member) -> JoinResult:
        members = []
        if member.member_id == group.leader:
            members = [(m.member_id, m.instance_id, m.metadata_for(group.protocol_name))
                       for m in group.members.values()]
        return JoinResult(ErrorCode.none, group.generation, group.protocol_type,
                          group.protocol_name, group.leader, member.member_id, members)

    # -- sync, heartbeat, leave -------------------------------------------------------------

    def _member(self, group_id: str, member_id: str, instance_id: str | None,
                generation: int | None) -> tuple[Group, Member]:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            if group is not None and instance_id is not None and instance_id in group.static:
                raise GroupError(ErrorCode.fenced_instance_id)
            raise GroupError(ErrorCode.unknown_member_id)
        if instance_id is not None and member.instance_id not in (None, instance_id):
            raise GroupError(ErrorCode.fenced_instance_id)
        if generation is not None and generation != group.generation:
            raise GroupError(ErrorCode.illegal_generation)
        return group, member

    async def sync(self, group_id: str, generation: int, member_id: str,
                   instance_id: str | None, protocol_type: str, protocol_name: str,
                   assignments: dict[str, bytes]) -> tuple[ErrorCode, bytes, str, str]:
        try:
            group, member = self._member(group_id, member_id, instance_id, generation)
        except GroupError as exc:
            return exc.code, b"", "", ""
        if (protocol_type and protocol_type != group.protocol_type) or (
                protocol_name and protocol_name != group.protocol_name):
            return ErrorCode.inconsistent_group_protocol, b"", "", ""
        member.deadline = trio.current_time() + member.session_timeout_s
        if group.state == State.PREPARING:
            return ErrorCode.rebalance_in_progress, b"", "", ""
        if group.state == State.COMPLETING:
            if member_id == group.leader:
                for other in group.members.values():
                    other.assignment = assignments.get(other.member_id, b"")
                group.state = State.STABLE
                generation = group.generation
                # Durable before anyone hears of it: a restart must not hand these
                # partitions to someone else while their owners still consume them.
                self._note(group)
                await self.classic_file.save()
                if group.state != State.STABLE or group.generation != generation:
                    return ErrorCode.rebalance_in_progress, b"", "", ""  # changed meanwhile
                for other in group.members.values():
                    if other.sync is not None:
                        other.sync.finish(ErrorCode.none)
                        other.sync = None
                log.info("group stable", extra={"group": group_id,
                                                "generation": group.generation})
            else:
                member.sync = parked = Parked()
                await parked.done.wait()
                if parked.result != ErrorCode.none:
                    assert isinstance(parked.result, ErrorCode)
                    return parked.result, b"", "", ""
        return ErrorCode.none, member.assignment, group.protocol_type, group.protocol_name

    def heartbeat(self, group_id: str, generation: int, member_id: str,
                  instance_id: str | None) -> ErrorCode:
        try:
            group, member = self._member(group_id, member_id, instance_id, generation)
        except GroupError as exc:
            return exc.code
        member.deadline = trio.current_time() + member.session_timeout_s
        if group.state == State.PREPARING:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave(self, group_id: str, identities: list[tuple[str, str | None]]
              ) -> tuple[ErrorCode, list[tuple[str, str | None, ErrorCode]]]:
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.unknown_member_id, [
                (m, i, ErrorCode.unknown_member_id) for m, i in identities]
        results = []
        removed = False
        for member_id, instance_id in identities:
            if instance_id is not None and not member_id:
                member_id = group.static.get(instance_id, "")
            member = group.members.get(member_id)
            if member is None:
                results.append((member_id, instance_id, ErrorCode.unknown_member_id))
                continue
            if instance_id is not None and member.instance_id != instance_id:
                results.append((member_id, instance_id, ErrorCode.fenced_instance_id))
                continue
            log.info("member left", extra={"group": group_id, "member": member_id})
            self._remove(group, member, ErrorCode.unknown_member_id)
            results.append((member_id, instance_id, ErrorCode.none))
            removed = True
        if removed:
            self._rebalance_after_departure(group)
        top = ErrorCode.none if len(identities) != 1 else results[0][2]
        return top, results

    def _remove(self, group: Group, member: Member, reason: ErrorCode) -> None:
        group.members.pop(member.member_id, None)
        if member.instance_id is not None and group.static.get(member.instance_id) == \
                member.member_id:
            del group.static[member.instance_id]
        for parked in (member.join, member.sync):
            if parked is not None:
                parked.finish(JoinResult(reason, member_id=member.member_id)
                              if parked is member.join else reason)

    def _rebalance_after_departure(self, group: Group) -> None:
        if group.state in (State.STABLE, State.COMPLETING):
            if group.members:
                self._prepare_rebalance(group)
            else:
                group.generation += 1
                group.state, group.leader = State.EMPTY, ""
                group.empty_since_ms = now_ms()
                self._note(group)
        elif group.state == State.PREPARING:
            self._maybe_complete_join(group, trio.current_time())
        self._poke()

    # -- admin ----------------------------------------------------------------------------

    def list_groups(self, states: list[str], types: list[str]) -> list[Group]:
        wanted_states = {s.lower() for s in states}
        wanted_types = {t.lower() for t in types}
        return [g for g in self.groups.values() if g.state != State.DEAD
                and (not wanted_states or g.state.value.lower() in wanted_states)
                and (not wanted_types or "classic" in wanted_types)]

    def describe(self, group_id: str) -> Group:
        return self.groups.get(group_id) or Group(group_id, state=State.DEAD)

    async def delete_group(self, group_id: str) -> ErrorCode:
        consumer = self.delete_consumer(group_id)
        if consumer is not None:
            if consumer == ErrorCode.none:
                await self.save_consumer_groups()
                offsets = self.store.get(group_id)
                await self.store.write(group_id, dict.fromkeys(offsets))
            return consumer
        group = self.groups.get(group_id)
        if group is None or group.state == State.DEAD:
            return ErrorCode.group_id_not_found
        if group.state != State.EMPTY:
            return ErrorCode.non_empty_group
        offsets = self.store.get(group_id)
        await self.store.write(group_id, dict.fromkeys(offsets))
        # Another DeleteGroups (or a join that re-created it) may have run meanwhile.
        if self.groups.get(group_id) is group:
            del self.groups[group_id]
        return ErrorCode.none


def _default_group_config(group_id: str, name: str) -> int:
    """Kafka's defaults, for a coordinator built without the broker's configs (tests)."""
    return {"consumer.session.timeout.ms": 45_000, "consumer.heartbeat.interval.ms": 5_000}[name]
