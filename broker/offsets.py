"""Committed offsets, durable in a compacted internal log (like Kafka's __consumer_offsets).

Each commit is a record keyed by (group, topic, partition) whose value holds the offset,
leader epoch, metadata string and commit time; deleting offsets writes tombstones. A commit is
acknowledged only once durable under the same policy as records. On start the whole log is
replayed (``broker.internal_log``, the path the transaction log shares); compaction keeps it
to one record per key.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import internal_log
from broker.log import LogConfig, PartitionLog

log = logging.getLogger("kelp.broker.offsets")


@dataclass(frozen=True, slots=True)
class Committed:
    offset: int
    leader_epoch: int
    metadata: str | None
    commit_ms: int


TopicPartition = tuple[str, int]


class OffsetStore:
    def __init__(self, directory: Path | None, config: LogConfig | None = None, *,
                 shared: PartitionLog | None = None,
                 replicated: internal_log.Replicated = None) -> None:
        """A lone broker's offsets log in ``directory``; in a cluster, the ``shared``
        coordination log (offsets, groups and transactions in one replicated partition),
        where a commit is acknowledged once ``replicated``."""
        if shared is None:
            assert directory is not None
            shared_keys = None
            self.log = PartitionLog.open(directory, config)
        else:
            shared_keys = internal_log.is_offset_key
            self.log = shared
        self._owns_log = shared is None
        self._shared_keys = shared_keys
        self.replicated = replicated
        self.groups: dict[str, dict[TopicPartition, Committed]] = {}
        # Commits written but not yet visible, in log order: (write mark, group, changes).
        # They become visible in that order once durable, whatever order their writers'
        # waits resume in, so pipelined commits read back the last one, as after a replay.
        self._pending: collections.deque[
            tuple[int, str, dict[TopicPartition, Committed | None]]] = collections.deque()
        self._replay()

    def _replay(self) -> None:
        """Rebuild every group's offsets (an unreadable record is skipped with a log line)."""
        internal_log.replay(self.log, self._apply, "commit", self._shared_keys)
        for group in [g for g, offsets in self.groups.items() if not offsets]:
            del self.groups[group]

    def _apply(self, key: Any, value: Any | None) -> None:
        group, topic, partition = key
        if not (isinstance(group, str) and isinstance(topic, str) and isinstance(partition, int)):
            raise TypeError("key is not [group, topic, partition]")
        offsets = self.groups.setdefault(group, {})
        if value is None:
            offsets.pop((topic, partition), None)
            return
        committed = Committed(int(value["o"]), int(value["e"]), value["m"], int(value["ts"]))
        if committed.metadata is not None and not isinstance(committed.metadata, str):
            raise TypeError("metadata is not a string")
        offsets[(topic, partition)] = committed

    async def write(self, group: str, changes: dict[TopicPartition, Committed | None]) -> None:
        """Store commits (or tombstones for None) durably, then make them visible."""
        if not changes:
            return
        pairs = [([group, topic, partition],
                  None if c is None else {"o": c.offset, "e": c.leader_epoch, "m": c.metadata,
                                          "ts": c.commit_ms})
                 for (topic, partition), c in changes.items()]
        result = self.log.append(internal_log.batch_of(pairs))
        self._pending.append((result.write_mark, group, changes))
        if self.log.config.sync_on_ack:
            await self.log.wait_durable(result.write_mark)
        if self.replicated is not None:
            await self.replicated(result.last_offset + 1)
        self._make_visible(result.write_mark)

    def _make_visible(self, up_to: int) -> None:
        """Apply the pending commits written up to ``up_to``, oldest first."""
        while self._pending and self._pending[0][0] <= up_to:
            _mark, group, changes = self._pending.popleft()
            offsets = self.groups.setdefault(group, {})
            for where, committed in changes.items():
                if committed is None:
                    offsets.pop(where, None)
                else:
                    offsets[where] = committed
            if not offsets:
                del self.groups[group]

    def get(self, group: str) -> dict[TopicPartition, Committed]:
        # A commit whose writer gave up (cancelled) before its sync is visible once durable.
        if self._pending and self.log.config.sync_on_ack:
            self._make_visible(self.log.synced_mark)
        return self.groups.get(group, {})

    def close(self) -> None:
        if self._owns_log:
            self.log.close()
