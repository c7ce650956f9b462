"""The broker's coordinator for KIP-848 consumer groups: ConsumerGroupHeartbeat and
ConsumerGroupDescribe over ``broker.consumer_group``'s rules, session and revocation timers,
the member-epoch check of offset commits, and coexistence with classic groups.

Mixed into ``broker.groups.Coordinator``. A group id is one kind at a time, as in Kafka: a
heartbeat to a classic group with members is refused (GROUP_ID_NOT_FOUND), to an empty one
converts it; a JoinGroup to a consumer group with members is INCONSISTENT_GROUP_PROTOCOL.
Groups, members, epochs and assignments are kept by ``broker.consumer_group_store``.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable

import trio
from kio.schema.errors import ErrorCode

from broker import consumer_group as cg
from broker.consumer_group import (
    ConsumerGroup,
    ConsumerMember,
    HeartbeatError,
)
from broker.consumer_group_store import SESSION_TIMEOUT, ConsumerGroupStore
from broker.consumer_heartbeat import Heartbeat, HeartbeatResult, check_heartbeat
from broker.group_state import Group, State, valid_group_id
from broker.log import now_ms
from broker.offsets import OffsetStore

log = logging.getLogger("kelp.broker.groups")

CONSUMER_TIMER_S = 1.0
HEARTBEAT_INTERVAL = "consumer.heartbeat.interval.ms"
EMPTY_GROUP_CHECK_MS = 600_000  # Kafka's offsets.retention.check.interval.ms default


class ConsumerCoordination(ConsumerGroupStore):
    groups: dict[str, Group]
    consumer_groups: dict[str, ConsumerGroup]
    # Every topic: name -> (topic id, partition count).
    topics: Callable[[], dict[str, tuple[uuid.UUID, int]]]
    # A group config's value for a group (its override, else the broker's).
    group_config: Callable[[str, str], int]
    store: OffsetStore
    offsets_retention_ms: int

    async def consumer_heartbeat(self, beat: Heartbeat) -> HeartbeatResult:
        try:
            result = self._heartbeat(beat, trio.current_time())
        except HeartbeatError as exc:
            result = HeartbeatResult(exc.code, str(exc), beat.member_id, beat.member_epoch)
        # Whatever the member is told is durable first: a restart must not forget what it
        # owns (and give it to another).
        await self.save_consumer_groups(beat.group_id)
        return result

    def _heartbeat(self, beat: Heartbeat, now: float) -> HeartbeatResult:
        check_heartbeat(beat)
        if not valid_group_id(beat.group_id):
            raise HeartbeatError(ErrorCode.invalid_group_id, "invalid group id")
        group = self._consumer_group(beat.group_id, create=beat.member_epoch == cg.JOIN)
        if beat.member_epoch in (cg.LEAVE, cg.LEAVE_STATIC):
            member = group.members.get(beat.member_id)
            if member is None:
                raise HeartbeatError(ErrorCode.unknown_member_id,
                                     f"member {beat.member_id} is not in the group")
            if beat.member_epoch == cg.LEAVE_STATIC and member.instance_id is not None:
                # A static member leaving for a restart keeps its partitions (nobody else
                # gets them, the group epoch stays) until its session ends or it comes back.
                member.previous_member_epoch, member.member_epoch = (member.member_epoch,
                                                                     cg.LEAVE_STATIC)
            else:
                self._remove_member(group, member, "left")
            return HeartbeatResult(member_id=beat.member_id, member_epoch=beat.member_epoch)
        epoch_before = group.group_epoch
        if beat.member_epoch == cg.JOIN:
            member = self._join(group, beat, now)
        else:
            member = self._known_member(group, beat)
        self._update(group, member, beat, now)
        self._refresh_target(group, epoch_before)
        owned = beat.owned if beat.owned is not None else member.owned
        cg.reconcile(group, member, owned, now)
        full = beat.member_epoch == cg.JOIN or beat.owned is not None
        assignment = None
        if full or member.assigned != member.last_sent:
            assignment = member.last_sent = dict(member.assigned)
        return HeartbeatResult(
            member_id=member.member_id, member_epoch=member.member_epoch,
            heartbeat_interval_ms=self.group_config(group.group_id, HEARTBEAT_INTERVAL),
            assignment=assignment)

    def _consumer_group(self, group_id: str, *, create: bool) -> ConsumerGroup:
        group = self.consumer_groups.get(group_id)
        if group is not None:
            return group
        classic = self.groups.get(group_id)
        live_classic = classic is not None and classic.state != State.DEAD
        if live_classic and (classic.members or not create):
            raise HeartbeatError(ErrorCode.group_id_not_found,
                                 f"Group {group_id} is not a consumer group")
        if not create:  # as Kafka answers a heartbeat or leave to a group it does not have
            raise HeartbeatError(ErrorCode.group_id_not_found,
                                 f"Consumer group {group_id} not found.")
        if live_classic:
            del self.groups[group_id]  # an empty classic group converts (its offsets stay)
        group = self.consumer_groups[group_id] = ConsumerGroup(group_id)
        return group

    def _join(self, group: ConsumerGroup, beat: Heartbeat, now: float) -> ConsumerMember:
        member_id = beat.member_id or str(uuid.uuid4())
        previous = None
        if beat.instance_id is not None:
            previous = next((m for m in group.members.values()
                             if m.instance_id == beat.instance_id), None)
            if previous is not None and previous.member_epoch != cg.LEAVE_STATIC:
                raise HeartbeatError(ErrorCode.unreleased_instance_id,
                                     f"static member {beat.instance_id} is still in the group "
                                     f"as {previous.member_id}")
        old = group.members.get(member_id)
        if old is not None and old is not previous:  # joining again after being fenced
            self._remove_member(group, old, "rejoined")
        if previous is not None:
            return self._replace_static(group, previous, member_id)
        if len(group.members) >= cg.MAX_MEMBERS:
            raise HeartbeatError(ErrorCode.group_max_size_reached,
                                 f"the group has {cg.MAX_MEMBERS} members")
        member = group.members[member_id] = ConsumerMember(member_id)
        group.group_epoch += 1
        return member

    @staticmethod
    def _replace_static(group: ConsumerGroup, previous: ConsumerMember,
                        member_id: str) -> ConsumerMember:
        """A static member back from a restart (under a new member id) takes over its
        partitions and epoch as they were, without a rebalance, as in Kafka."""
        del group.members[previous.member_id]
        target = group.target.pop(previous.member_id, None)
        member = dataclasses.replace(previous, member_id=member_id, last_sent=None)
        member.member_epoch = previous.previous_member_epoch  # its epoch before it left
        if target is not None:
            group.target[member_id] = target
        group.members[member_id] = member
        return member

    @staticmethod
    def _known_member(group: ConsumerGroup, beat: Heartbeat) -> ConsumerMember:
        member = group.members.get(beat.member_id)
        if member is None:
            raise HeartbeatError(ErrorCode.unknown_member_id,
                                 f"member {beat.member_id} is not in the group")
        if beat.member_epoch != member.member_epoch:
            owned = {(t, p) for t, ps in (beat.owned or {}).items() for p in ps}
            assigned = {(t, p) for t, ps in member.assigned.items() for p in ps}
            # Its last answer was lost: what it owns is still within what it was given.
            if not (beat.member_epoch == member.previous_member_epoch
                    and beat.owned is not None and owned <= assigned):
                raise HeartbeatError(ErrorCode.fenced_member_epoch,
                                     f"member epoch {beat.member_epoch} is not the member's "
                                     f"epoch {member.member_epoch}")
        return member

    def _update(self, group: ConsumerGroup, member: ConsumerMember, beat: Heartbeat,
                now: float) -> None:
        before = (member.subscribed_topic_names, member.subscribed_topic_regex,
                  member.server_assignor)
        # Sizes, the regex and the assignor were checked by check_heartbeat.
        if beat.subscribed_topic_names is not None:
            member.subscribed_topic_names = tuple(sorted(set(beat.subscribed_topic_names)))
        if beat.subscribed_topic_regex is not None:
            member.subscribed_topic_regex = beat.subscribed_topic_regex or None
        if beat.server_assignor is not None:
            member.server_assignor = beat.server_assignor
        for name in ("instance_id", "rack_id"):
            if getattr(beat, name) is not None:
                setattr(member, name, getattr(beat, name))
        if beat.rebalance_timeout_ms > 0:
            member.rebalance_timeout_ms = beat.rebalance_timeout_ms
        member.client_id, member.client_host = beat.client_id, beat.client_host
        if beat.owned is not None:
            member.owned = beat.owned
        member.session_deadline = now + self.group_config(group.group_id,
                                                          SESSION_TIMEOUT) / 1000
        if (member.subscribed_topic_names, member.subscribed_topic_regex,
                member.server_assignor) != before:
            group.group_epoch += 1

    def _refresh_target(self, group: ConsumerGroup, epoch_before: int) -> None:
        """A new target when the members or their topics' metadata changed. Whatever
        changed in one heartbeat (a join, its subscription, new topics) is one new group
        epoch, as Kafka counts them."""
        every = self.topics()
        cached = group.subscribed_cache
        # Members' subscriptions change only with the group epoch; resolving every member's
        # names and regex again on each heartbeat would cost members x topics each time.
        if cached is not None and cached[0] == group.group_epoch and cached[1] == every:
            wanted = cached[2]
        else:
            wanted = set()
            for member in group.members.values():
                wanted.update(cg.subscribed(member, every))
        metadata = {t: every[t] for t in sorted(wanted)}
        if metadata != group.metadata:
            group.metadata = metadata
            group.group_epoch += 1
        group.group_epoch = min(group.group_epoch, epoch_before + 1)
        group.subscribed_cache = (group.group_epoch, dict(every), wanted)
        if group.assignment_epoch < group.group_epoch:
            group.target = cg.assign(group.assignor(), group.members, metadata,
                                     {m: member.assigned for m, member in
                                      group.members.items()})
            group.assignment_epoch = group.group_epoch

    def _remove_member(self, group: ConsumerGroup, member: ConsumerMember, why: str) -> None:
        group.members.pop(member.member_id, None)
        group.target.pop(member.member_id, None)
        group.group_epoch += 1
        if not group.members:
            group.empty_since_ms = now_ms()
        log.info("consumer group member removed", extra={
            "group": group.group_id, "member": member.member_id, "reason": why})

    # -- timers, commits, admin -----------------------------------------------------------

    def consumer_deadlines(self) -> list[float]:
        """When the timers must look at consumer groups next: every second while any has
        members (heartbeats move deadlines all the time; waking each one would cost more)."""
        if any(group.members for group in self.consumer_groups.values()):
            return [trio.current_time() + CONSUMER_TIMER_S]
        return []

    async def expire_consumer_members(self, now: float) -> None:
        for group in list(self.consumer_groups.values()):
            expired = False
            for member in list(group.members.values()):
                if member.session_deadline <= now:
                    self._remove_member(group, member, "session expired")
                    expired = True
                elif member.revoke_deadline is not None and member.revoke_deadline <= now:
                    self._remove_member(group, member, "did not revoke within its "
                                        "rebalance timeout")
                    expired = True
            if expired:
                await self.save_consumer_groups(group.group_id)

    async def expire_empty_consumer_groups(self) -> None:
        """As Kafka's offset retention: a consumer group empty for offsets.retention.minutes
        loses its offsets, and an empty one without offsets is gone (its id free for either
        kind again) after Kafka's offsets.retention.check.interval.ms (until then DeleteGroups
        still finds it)."""
        horizon = now_ms() - self.offsets_retention_ms
        for group in list(self.consumer_groups.values()):
            if group.members:
                continue
            offsets = self.store.get(group.group_id)
            if offsets and group.empty_since_ms < horizon:
                await self.store.write(group.group_id, dict.fromkeys(offsets))
                offsets = {}
            if (not offsets and group.empty_since_ms < now_ms() - EMPTY_GROUP_CHECK_MS
                    and self.consumer_groups.get(group.group_id) is group):
                del self.consumer_groups[group.group_id]
                await self.save_consumer_groups(group.group_id)

    def consumer_commit_error(self, group_id: str, member_id: str,
                              member_epoch: int) -> ErrorCode | None:
        """For a consumer group: whether this commit may go ahead (None: not one)."""
        group = self.consumer_groups.get(group_id)
        if group is None:
            return None
        if not member_id and member_epoch < 0:
            return ErrorCode.unknown_member_id if group.members else ErrorCode.none
        return _epoch_error(group, member_id, member_epoch)

    def consumer_fetch_error(self, group_id: str, member_id: str,
                             member_epoch: int) -> ErrorCode:
        """OffsetFetch v9 from a member: its epoch must be current (admin fetches, with no
        member id and epoch -1, and fetches from classic groups are not checked)."""
        group = self.consumer_groups.get(group_id)
        if group is None or (not member_id and member_epoch < 0):
            return ErrorCode.none
        return _epoch_error(group, member_id, member_epoch)

    def consumer_subscribed_topics(self, group_id: str) -> set[str] | None:
        """The topics a consumer group's members subscribe to (OffsetDelete refuses those:
        GROUP_SUBSCRIBED_TO_TOPIC); None: not a consumer group."""
        group = self.consumer_groups.get(group_id)
        if group is None:
            return None
        every = self.topics()
        return {t for m in group.members.values() for t in cg.subscribed(m, every)}

    def join_refused(self, group_id: str) -> bool:
        """A classic JoinGroup to a consumer group with members (INCONSISTENT_GROUP_PROTOCOL).
        An empty consumer group becomes classic again, as Kafka's downgrade allows."""
        group = self.consumer_groups.get(group_id)
        if group is None:
            return False
        if group.members:
            return True
        del self.consumer_groups[group_id]
        return False

    def describe_consumer(self, group_id: str) -> ConsumerGroup | None:
        return self.consumer_groups.get(group_id)

    def delete_consumer(self, group_id: str) -> ErrorCode | None:
        """None: not a consumer group; else what deleting it answers (offsets: the caller)."""
        group = self.consumer_groups.get(group_id)
        if group is None:
            return None
        if group.members:
            return ErrorCode.non_empty_group
        del self.consumer_groups[group_id]
        return ErrorCode.none


def _epoch_error(group: ConsumerGroup, member_id: str, member_epoch: int) -> ErrorCode:
    """A member's commit or fetch: it must be in the group, at its current epoch."""
    member = group.members.get(member_id)
    if member is None:
        return ErrorCode.unknown_member_id
    if member_epoch != member.member_epoch:
        return ErrorCode.stale_member_epoch
    return ErrorCode.none
