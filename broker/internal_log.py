"""The broker's internal logs: compacted partition logs of JSON records keyed by JSON.

Committed offsets (``broker.offsets``) and transaction states (``broker.txn_log``) are kept
the same way, like Kafka's ``__consumer_offsets`` and ``__transaction_state``: each change is a
record whose key names what changed and whose value is its new state (null: deleted); on start
the whole log is replayed in order, and compaction keeps it to one record per key. This module
is the one recovery path they share: a record that cannot be read is skipped with a log line
naming its offset, so one damaged record cannot keep the broker from starting, and a torn tail
is truncated by the partition log's own recovery before anything is replayed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from broker.log import PartitionLog, now_ms, topic_partition
from kelp import records

log = logging.getLogger("kelp.broker.internal")


def encode(key: Any) -> bytes:
    return json.dumps(key, separators=(",", ":")).encode()


def batch_of(changes: list[tuple[Any, Any | None]]) -> bytes:
    """One record batch holding each (key, value) change; a None value is a tombstone."""
    return records.build_batch([(encode(key), None if value is None else encode(value))
                                for key, value in changes], now_ms())


def replay(plog: PartitionLog, apply: Callable[[Any, Any | None], None], what: str,
           accepts: Callable[[Any], bool] | None = None) -> int:
    """Call ``apply(key, value)`` for every record from the log start, in log order (value
    None for a tombstone); returns how many were skipped as unreadable.

    ``apply`` raises ValueError, KeyError or TypeError for a record it cannot take. With
    ``accepts``, records whose key it refuses belong to another reader of a shared log (a
    cluster keeps offsets, groups and transactions in one) and are passed over silently.
    """
    name, partition = topic_partition(plog.directory)
    skipped = 0
    for segment in plog.segments:
        for _position, batch in segment.batches():
            for record in records.records_or_skip(batch, log, topic=name,
                                                  partition=partition) or ():
                if record.offset < plog.log_start_offset:
                    continue
                try:
                    if record.key is None:
                        raise TypeError("no key")
                    key = json.loads(record.key)
                    if accepts is not None and not accepts(key):
                        continue
                    apply(key, None if record.value is None else json.loads(record.value))
                except (ValueError, KeyError, TypeError) as exc:
                    skipped += 1
                    log.warning("skipping unreadable record", extra={
                        "topic": name, "partition": partition, "offset": record.offset,
                        "reason": f"not a {what} record ({type(exc).__name__}: {exc})"})
    return skipped


# Waits until the records below an offset are on every in-sync replica (a cluster's shared
# coordination log; None for a lone broker's own logs).
Replicated = Callable[[int], Awaitable[None]] | None


def is_offset_key(key: Any) -> bool:
    """A committed offset's key: [group, topic, partition]."""
    return isinstance(key, list) and len(key) == 3


def is_txn_key(key: Any) -> bool:
    """A transaction state's key: the transactional id."""
    return isinstance(key, str)


def group_key(kind: str, group_id: str) -> list[str]:
    """A group state's key in the shared log: [kind, group id], kind "classic" or "consumer"."""
    return [kind, group_id]


def is_group_key(kind: str) -> Callable[[Any], bool]:
    return lambda key: isinstance(key, list) and len(key) == 2 and key[0] == kind
