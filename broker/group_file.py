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
        text = None if state is None else json.dumps(state, sort_keys=True,
                                                     separators=(",", ":"))
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
