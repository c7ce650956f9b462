"""Committed offsets of groups: commit, fetch, delete, and expiry of empty groups' offsets.

The offsets themselves live in the broker's offsets log (`broker.offsets.OffsetStore`); what
this adds is the group protocol's rules for who may commit when: a member of the current
generation (not while its new generation waits for assignments), or a standalone committer
of a group without members. Mixed into `broker.groups.Coordinator`.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from kio.schema.errors import ErrorCode

from broker.group_state import (
    MAX_METADATA_BYTES,
    Group,
    GroupError,
    Member,
    State,
    subscribed_topics,
    valid_group_id,
)
from broker.log import now_ms
from broker.offsets import Committed, OffsetStore, TopicPartition


class GroupOffsets:
    """The offsets half of the coordinator (which sets these up)."""

    store: OffsetStore
    groups: dict[str, Group]
    offsets_retention_ms: int
    # Whether a topic partition exists: commits to one that does not are refused, as Kafka
    # refuses them (UNKNOWN_TOPIC_OR_PARTITION), instead of storing offsets for nothing.
    partition_exists: Callable[[str, int], bool]

    def _member(self, group_id: str, member_id: str, instance_id: str | None,
                generation: int | None) -> tuple[Group, Member]:
        """The coordinator's membership check; raises `GroupError`."""
        raise NotImplementedError

    def consumer_commit_error(self, group_id: str, member_id: str,
                              member_epoch: int) -> ErrorCode | None:
        raise NotImplementedError  # broker.consumer_coordinator's

    def consumer_subscribed_topics(self, group_id: str) -> set[str] | None:
        raise NotImplementedError  # broker.consumer_coordinator's

    async def commit(self, group_id: str, generation: int, member_id: str,
                     instance_id: str | None,
                     offsets: dict[TopicPartition, Committed]
                     ) -> dict[TopicPartition, ErrorCode]:
        if not valid_group_id(group_id):
            return dict.fromkeys(offsets, ErrorCode.invalid_group_id)
        group = self.groups.get(group_id)
        error = ErrorCode.none
        consumer_error = self.consumer_commit_error(group_id, member_id, generation)
        if consumer_error is not None:  # a KIP-848 group: its member epoch is checked
            error = consumer_error
        elif generation < 0 and not member_id:
            # A standalone commit (assign() consumers, admin tools): fine for a group without
            # members, which is created (Empty) if needed.
            if group is not None and group.members:
                error = ErrorCode.unknown_member_id  # as Kafka: "" is no member of it
            elif group is None or group.state == State.DEAD:
                group = self.groups[group_id] = Group(group_id, empty_since_ms=now_ms())
        else:
            try:
                group, member = self._member(group_id, member_id, instance_id, generation)
                # As in Kafka: members of the current generation may still commit while a
                # rebalance is being prepared (from their revoke callbacks); only once the
                # new generation is formed and waits for its assignment are commits refused.
                if group.state == State.COMPLETING:
                    error = ErrorCode.rebalance_in_progress
                else:
                    member.deadline = trio.current_time() + member.session_timeout_s
            except GroupError as exc:
                error = exc.code
        if error != ErrorCode.none:
            return dict.fromkeys(offsets, error)
        results = {}
        accepted = {}
        for where, committed in offsets.items():
            if not self.partition_exists(*where):
                results[where] = ErrorCode.unknown_topic_or_partition
            elif committed.metadata is not None and len(committed.metadata.encode()) > \
                    MAX_METADATA_BYTES:
                results[where] = ErrorCode.offset_metadata_too_large
            else:
                accepted[where] = committed
                results[where] = ErrorCode.none
        await self.store.write(group_id, accepted)
        return results

    def txn_member_error(self, group_id: str, generation: int, member_id: str,
                         instance_id: str | None) -> ErrorCode | None:
        """KIP-447: may this member commit offsets in a transaction (TxnOffsetCommit v3+)?
        A commit without group metadata (generation -1, no member id: an older client) is
        not checked, as Kafka does not check it; one with it must come from a current
        member, whatever state the group's rebalance is in."""
        if generation < 0 and not member_id and instance_id is None:
            return None
        consumer_error = self.consumer_commit_error(group_id, member_id, generation)
        if consumer_error is not None:  # a KIP-848 group: the member epoch is checked
            return consumer_error or None
        try:
            self._member(group_id, member_id, instance_id, generation)
        except GroupError as exc:
            return exc.code
        return None

    def fetch_offsets(self, group_id: str, wanted: list[TopicPartition] | None
                      ) -> dict[TopicPartition, Committed | None]:
        committed = self.store.get(group_id)
        if wanted is None:
            return dict(committed)
        return {where: committed.get(where) for where in wanted}

    async def delete_offsets(self, group_id: str, wanted: list[TopicPartition]
                             ) -> tuple[ErrorCode, dict[TopicPartition, ErrorCode]]:
        group = self.groups.get(group_id)
        subscribed = self.consumer_subscribed_topics(group_id)  # a KIP-848 group's
        if subscribed is None:
            if group is None or group.state == State.DEAD:
                return ErrorCode.group_id_not_found, {}
            subscribed = subscribed_topics(group)
        results = {w: (ErrorCode.group_subscribed_to_topic if w[0] in subscribed
                       else ErrorCode.none) for w in wanted}
        await self.store.write(group_id, {w: None for w, code in results.items()
                                          if code == ErrorCode.none
                                          and w in self.store.get(group_id)})
        return ErrorCode.none, results

    async def _expire_offsets(self) -> None:
        horizon = now_ms() - self.offsets_retention_ms
        for group in list(self.groups.values()):
            if group.state == State.EMPTY and group.empty_since_ms < horizon:
                offsets = self.store.get(group.group_id)
                if offsets:
                    await self.store.write(group.group_id, dict.fromkeys(offsets))
                del self.groups[group.group_id]
