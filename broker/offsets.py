"""Committed offsets, durable in a compacted internal log (like Kafka's __consumer_offsets).

Each commit is a record keyed by (group, topic, partition) whose value holds the offset,
leader epoch, metadata string and commit time; deleting offsets writes tombstones. A commit is
acknowledged only once durable under the same policy as records. On start the whole log is
replayed; compaction keeps it to one record per key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from broker.log import LogConfig, PartitionLog, now_ms
from kelp import records


@dataclass(frozen=True, slots=True)
class Committed:
    offset: int
    leader_epoch: int
    metadata: str | None
    commit_ms: int


TopicPartition = tuple[str, int]


def _key(group: str, topic: str, partition: int) -> bytes:
    return json.dumps([group, topic, partition], separators=(",", ":")).encode()


class OffsetStore:
    def __init__(self, directory: Path, config: LogConfig) -> None:
        self.log = PartitionLog.open(directory, config)
        self.groups: dict[str, dict[TopicPartition, Committed]] = {}
        self._replay()

    def _replay(self) -> None:
        for segment in self.log.segments:
            for _position, batch in segment.batches():
                for record in records.iter_records(batch):
                    if record.key is None or record.offset < self.log.log_start_offset:
                        continue
                    group, topic, partition = json.loads(record.key)
                    offsets = self.groups.setdefault(group, {})
                    if record.value is None:
                        offsets.pop((topic, partition), None)
                    else:
                        value = json.loads(record.value)
                        offsets[(topic, partition)] = Committed(value["o"], value["e"],
                                                                value["m"], value["ts"])
        for group in [g for g, offsets in self.groups.items() if not offsets]:
            del self.groups[group]

    async def write(self, group: str, changes: dict[TopicPartition, Committed | None]) -> None:
        """Store commits (or tombstones for None) durably, then make them visible."""
        if not changes:
            return
        pairs = [(_key(group, topic, partition),
                  None if c is None else json.dumps({"o": c.offset, "e": c.leader_epoch,
                                                      "m": c.metadata, "ts": c.commit_ms}
                                                     ).encode())
                 for (topic, partition), c in changes.items()]
        result = self.log.append(records.build_batch(pairs, now_ms()))
        if self.log.config.sync_on_ack:
            await self.log.wait_durable(result.write_mark)
        offsets = self.groups.setdefault(group, {})
        for where, committed in changes.items():
            if committed is None:
                offsets.pop(where, None)
            else:
                offsets[where] = committed
        if not offsets:
            del self.groups[group]

    def get(self, group: str) -> dict[TopicPartition, Committed]:
        return self.groups.get(group, {})

    def close(self) -> None:
        self.log.close()
