"""Where KIP-848 consumer groups are kept across broker restarts: ``<data>/consumer-groups.json``,
every group's epochs, members, targets and assignments (Kafka keeps the same as records in its
offsets topic). It is written before a member is told anything, so a restart neither forgets
what a member owns nor gives it to another; members carry on with their epochs.

Mixed into ``broker.groups.Coordinator`` (through ``broker.consumer_coordinator``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from broker import consumer_group as cg
from broker.consumer_group import ConsumerGroup
from broker.group_file import GroupFile
from broker.group_state import Group
from broker.log import now_ms

log = logging.getLogger("kelp.broker.groups")

SESSION_TIMEOUT = "consumer.session.timeout.ms"


class ConsumerGroupStore:
    groups: dict[str, Group]
    consumer_groups: dict[str, ConsumerGroup]
    group_config: Callable[[str, str], int]
    consumer_file: GroupFile

    def load_consumer_groups(self) -> None:
        now = trio.current_time()
        for group_id, value in self.consumer_file.read().items():
            session_s = self.group_config(group_id, SESSION_TIMEOUT) / 1000
            try:
                group = cg.group_from_json(group_id, value, now, session_s)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.error("consumer group state skipped", extra={
                    "group": group_id, "error": repr(exc)})
                continue
            group.empty_since_ms = now_ms()
            self.consumer_groups[group_id] = group
            # Every group with offsets was made an Empty classic group before this; a group
            # id is one kind at a time.
            classic = self.groups.get(group_id)
            if classic is not None and not classic.members:
                del self.groups[group_id]
        self._note_consumer_groups(None)

    def _note_consumer_groups(self, group_id: str | None) -> None:
        """Re-encode one group (a heartbeat touches one), or every group (None)."""
        names = list(self.consumer_groups) if group_id is None else [group_id]
        for name in names:
            group = self.consumer_groups.get(name)
            self.consumer_file.note(name, None if group is None else cg.group_to_json(group))
        if group_id is None:
            self.consumer_file.keep_only(set(self.consumer_groups))

    async def save_consumer_groups(self, group_id: str | None = None) -> None:
        """Write the groups' state if it changed. A heartbeat re-encodes only its own group,
        and writes only when that changed (most heartbeats change nothing durable:
        deadlines are not kept)."""
        self._note_consumer_groups(group_id)  # at once: the state as this caller left it
        await self.consumer_file.save()
