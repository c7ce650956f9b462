"""A file of groups' state, ``{group id: state}`` as one JSON object, kept durable.

The coordinator writes it before telling members anything that must outlive a restart (a
classic group's generation and assignments, a KIP-848 group's epochs), as Kafka writes group
records to its offsets topic. Each group's encoding is cached, so a change re-encodes only the
group it touched; the file is replaced atomically and fsynced (``kelp.files.replace_file``).

Versions count changes in memory and on disk: one write covers every change made before it, so
callers queued behind a write need none of their own, and a failed write leaves the versions
apart so the next save retries.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import trio

from broker import internal_log
from broker.internal_log import Replicated, group_key, is_group_key
from broker.log import PartitionLog, now_ms
from kelp import records
from kelp.files import replace_file

log = logging.getLogger("kelp.broker.groups")


class GroupFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: kept in memory only (tests)
        self._texts: dict[str, str] = {}  # each group's encoded state, as last noted
        self._version = 0
        self._written = 0
        self._lock = trio.Lock()

    def read(self) -> dict[str, object]:
        """Every group's saved state ({} when there is none). A damaged file (it is replaced
        atomically, so damaged only by hand) is set aside for a person to look at: the
        broker starts and members rejoin."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            state = json.loads(self.path.read_text())
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            log.error("group state unreadable, set aside", extra={
                "path": str(self.path), "error": str(exc)})
            self.path.replace(self.path.with_name(self.path.name + ".damaged"))
            return {}
        return state

    def note(self, group_id: str, state: object | None) -> None:
        """Remember a group's state as it is now (None: nothing to keep)."""
        text = None if state is None else _encode(state)
        if self._texts.get(group_id) == text:
            return
        if text is None:
            del self._texts[group_id]
        else:
            self._texts[group_id] = text
        self._version += 1

    def keep_only(self, group_ids: set[str]) -> None:
        for gone in set(self._texts) - group_ids:
            self.note(gone, None)

    async def save(self) -> None:
        """Write what was noted if the file lacks it (one write at a time, shielded: a
        caller that gives up must not leave memory ahead of the disk)."""
        if self.path is None:
            return
        wanted = self._version
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self._written >= wanted:
                    return  # written by a save that started after this change
                version = self._version
                text = "{" + ",".join(f"{json.dumps(g)}:{t}"
                                      for g, t in sorted(self._texts.items())) + "}"
                path = self.path
                await trio.to_thread.run_sync(lambda: replace_file(path, text, durable=True))
                self._written = version


class GroupLog(GroupFile):
    """Groups' state as records of a cluster's shared coordination log, one per group keyed
    ``[kind, group id]`` (a tombstone when a group goes), so that the replicas of that log
    hold it and whichever broker leads it next coordinates the same groups. A save appends
    the groups changed since the last one and waits until every in-sync replica has them."""

    def __init__(self, kind: str, plog: PartitionLog, replicated: Replicated) -> None:
        super().__init__(None)
        self.kind = kind
        self.plog = plog
        self.replicated = replicated
        self._on_log: dict[str, str] = {}  # each group's state as the log last got it
        self._preloaded: dict[str, object] | None = None

    def preload(self) -> None:
        """Replay the log now (in a worker thread), for the next ``read``: the coordinator
        reads its groups on the event loop."""
        self._preloaded = self.read()

    def read(self) -> dict[str, object]:
        if self._preloaded is not None:
            state, self._preloaded = self._preloaded, None
            return state
        state: dict[str, object] = {}

        def apply(key: list[str], value: object | None) -> None:
            if value is None:
                state.pop(key[1], None)
            else:
                state[key[1]] = value

        internal_log.replay(self.plog, apply, f"{self.kind} group", is_group_key(self.kind))
        self._on_log = {group_id: _encode(value) for group_id, value in state.items()}
        return state

    async def save(self) -> None:
        wanted = self._version
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self._written >= wanted:
                    return
                version, texts = self._version, dict(self._texts)
                changed = [(internal_log.encode(group_key(self.kind, group_id)),
                            None if text is None else text.encode())
                           for group_id in sorted(set(texts) | set(self._on_log))
                           if (text := texts.get(group_id)) != self._on_log.get(group_id)]
                if changed:
                    result = self.plog.append(records.build_batch(changed, now_ms()))
                    if self.plog.config.sync_on_ack:
                        await self.plog.wait_durable(result.write_mark)
                    if self.replicated is not None:
                        await self.replicated(result.last_offset + 1)
                self._on_log = texts
                self._written = version


def _encode(state: object) -> str:
    """A group's state as ``GroupFile.note`` encodes it (so unchanged states compare equal)."""
    return json.dumps(state, sort_keys=True, separators=(",", ":"))
