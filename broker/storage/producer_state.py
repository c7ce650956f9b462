"""A partition's idempotent-producer state on disk (Kafka's ``ProducerStateManager``).

The table itself (sequences, epochs, expiry, bounds, transactions) is sans-IO in
``broker.producers``; this module keeps it across restarts in two files, both hints that are
never fsynced: a missing, stale or unreadable one only means more of the log is read on open,
since the table is rebuilt from the snapshot and then from the header of every later batch
(and the marker of every later control batch).

- ``producer-state.json``: the producers and the open transactions as of an offset, written
  with every recovery-point checkpoint.
- ``aborted-txns``: the aborted transactions, one line each, appended as they happen (Kafka's
  ``.txnindex``), so a sync never rewrites a list that only grows; rewritten whole only after
  retention dropped its oldest entries. The snapshot says how many lines it relies on; a file
  holding fewer below the snapshot's offset (a lost append) makes the snapshot unusable and the
  table is rebuilt from the log start.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from broker.producers import AbortedTxn, ProducerStateTable, is_control
from kelp.files import replace_file
from kelp.recordbatch import BatchHeader, CorruptBatch

log = logging.getLogger("kelp.broker.log")

SNAPSHOT = "producer-state.json"
ABORTED = "aborted-txns"


@dataclass(frozen=True)
class Snapshot:
    """What one sync writes: the snapshot text and the aborted-index change."""

    text: str
    append: list[AbortedTxn]            # lines to add to the aborted index
    rewrite: list[AbortedTxn] | None    # or the whole index, replacing the file


def _lines(entries: Iterable[AbortedTxn]) -> str:
    return "".join(f"{txn.producer_id} {txn.first_offset} {txn.last_offset}\n"
                   for txn in entries)


class ProducerStateManager:
    def __init__(self, directory: Path) -> None:
        self.path = directory / SNAPSHOT
        self.aborted_path = directory / ABORTED
        self.table = ProducerStateTable()
        self._aborted_on_disk = 0  # entries of table.aborted already in the file
        self._rewrite = True       # the file must be rewritten whole at the next sync

    def load(self, log_start: int, high_watermark: int,
             headers_from: Callable[[int], Iterable[tuple[BatchHeader, int | None]]]) -> None:
        """The table from the snapshot, then from the headers of every later batch.

        ``headers_from(offset)`` yields (header, marker kind) of each batch from the one
        holding ``offset`` to the end of the log; the kind (COMMIT or ABORT) only for a
        control batch.
        """
        start = log_start
        try:
            snapshot = json.loads(self.path.read_text())
            offset = snapshot["offset"]
            if log_start <= offset <= high_watermark:
                self.table = ProducerStateTable.from_json(snapshot["producers"],
                                                          snapshot.get("open", {}),
                                                          self._aborted_for(snapshot))
                start = offset
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            self.table = ProducerStateTable()
        if start < high_watermark:
            try:
                for header, kind in headers_from(start):
                    if header.base_offset < start:
                        continue
                    if is_control(header):
                        if kind is not None:
                            self.table.end_txn(header.producer_id, header.producer_epoch, kind,
                                               header.base_offset, header.max_timestamp)
                    else:
                        self.table.record(header)
            except CorruptBatch as exc:  # recovery checked these; say so rather than not start
                log.warning("producer state rebuilt only up to an unreadable batch", extra={
                    "dir": str(self.path.parent), "reason": str(exc)})
        self.table.forget_below(log_start)
        self._rewrite = True  # the file may hold lines past the snapshot: write what we know

    def _aborted_for(self, snapshot: dict) -> list[AbortedTxn]:
        """The aborted transactions the snapshot relies on (ValueError if the index has not
        got them: the snapshot is then not used)."""
        wanted = snapshot.get("aborted")
        if wanted is None:
            return []  # a snapshot from before transactions existed: none could be written
        try:
            text = self.aborted_path.read_text()
        except FileNotFoundError:
            text = ""
        entries = [AbortedTxn(*map(int, line.split())) for line in text.splitlines()
                   if line.strip()]
        below = [txn for txn in entries if txn.last_offset < snapshot["offset"]]
        if len(below) != wanted:
            raise ValueError(f"aborted index holds {len(below)} of {wanted} entries")
        return below

    def snapshot(self, offset: int) -> Snapshot:
        """The table as of ``offset`` (the high-water mark when taken), for ``write``."""
        table = self.table
        if table.aborted_pruned:
            table.aborted_pruned = False
            self._rewrite = True
        if self._rewrite:
            append, rewrite = [], list(table.aborted)
            self._rewrite = False
        else:
            append, rewrite = table.aborted[self._aborted_on_disk:], None
        self._aborted_on_disk = len(table.aborted)
        return Snapshot(json.dumps({"offset": offset, "producers": table.to_json(),
                                    "open": table.open_to_json(),
                                    "aborted": len(table.aborted)}), append, rewrite)

    def write_failed(self) -> None:
        """A ``write`` did not happen: the next one rewrites the aborted index whole."""
        self._rewrite = True

    def write(self, snapshot: Snapshot) -> None:
        """The aborted index first, then the snapshot that relies on it; safe in a worker
        thread."""
        if snapshot.rewrite is not None:
            replace_file(self.aborted_path, _lines(snapshot.rewrite), durable=False)
        elif snapshot.append:
            fd = os.open(self.aborted_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, _lines(snapshot.append).encode())
            finally:
                os.close(fd)
        replace_file(self.path, snapshot.text, durable=False)
