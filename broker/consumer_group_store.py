"""Where KIP-848 consumer groups are kept across broker restarts: ``<data>/consumer-groups.json``,
every group's epochs, members, targets and assignments (Kafka keeps the same as records in its
offsets topic). It is written before a member is told anything, so a restart neither forgets
what a member owns nor gives it to another; members carry on with their epochs.

Mixed into ``broker.groups.Coordinator`` (through ``broker.consumer_coordinator``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import trio

from broker import consumer_group as cg
from broker.consumer_group import ConsumerGroup
from broker.group_state import Group
from broker.log import now_ms
from kelp.files import replace_file

log = logging.getLogger("kelp.broker.groups")

SESSION_TIMEOUT = "consumer.session.timeout.ms"


class ConsumerGroupStore:
    groups: dict[str, Group]
    consumer_groups: dict[str, ConsumerGroup]
    group_config: Callable[[str, str], int]
    consumer_state_path: Path | None  # None: kept in memory only (tests)
    _consumer_save_lock: trio.Lock
    # Versions of the encoded state: changed in memory, and durable on disk. A write covers
    # every change made before it, so heartbeats queued behind one write need none of their
    # own (and a failed write leaves the versions apart: the next save retries).
    _texts_version: int
    _written_version: int
    _group_texts: dict[str, str]  # each group's encoded state, as last saved or loaded

    def load_consumer_groups(self) -> None:
        if self.consumer_state_path is None or not self.consumer_state_path.exists():
            return
        path = self.consumer_state_path
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            # Damaged (it is replaced atomically, so only by hand): kept aside for a person
            # to look at; the broker starts, members rejoin, committed offsets are elsewhere.
            log.error("consumer group state unreadable, set aside", extra={
                "path": str(path), "error": str(exc)})
            path.replace(path.with_name(path.name + ".damaged"))
            return
        now = trio.current_time()
        for group_id, value in state.items():
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
        self._refresh_texts(None)

    def _refresh_texts(self, group_id: str | None) -> bool:
        """Re-encode one group (a heartbeat touches one), or every group (None); whether
        any encoding changed."""
        changed = False
        names = list(self.consumer_groups) if group_id is None else [group_id]
        for name in names:
            group = self.consumer_groups.get(name)
            text = None if group is None else json.dumps(
                cg.group_to_json(group), sort_keys=True, separators=(",", ":"))
            if self._group_texts.get(name) != text:
                changed = True
                if text is None:
                    del self._group_texts[name]
                else:
                    self._group_texts[name] = text
        if group_id is None:
            for gone in set(self._group_texts) - set(self.consumer_groups):
                del self._group_texts[gone]
                changed = True
        return changed

    def _file_text(self) -> str:
        return "{" + ",".join(f"{json.dumps(g)}:{text}"
                              for g, text in sorted(self._group_texts.items())) + "}"

    async def save_consumer_groups(self, group_id: str | None = None) -> None:
        """Write the groups' state if it changed (one write at a time, shielded: a caller
        that gives up must not leave memory ahead of the disk). A heartbeat re-encodes only
        its own group, and writes only when that changed (most heartbeats change nothing
        durable: deadlines are not kept)."""
        if self.consumer_state_path is None:
            return
        if self._refresh_texts(group_id):  # at once: the state as this caller left it
            self._texts_version += 1
        wanted = self._texts_version
        with trio.CancelScope(shield=True):
            async with self._consumer_save_lock:
                if self._written_version >= wanted:
                    return  # written by a save that started after this change
                version, text = self._texts_version, self._file_text()
                path = self.consumer_state_path
                await trio.to_thread.run_sync(
                    lambda: replace_file(path, text, durable=True))
                self._written_version = version
