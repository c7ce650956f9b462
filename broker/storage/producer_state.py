"""A partition's idempotent-producer state on disk (Kafka's ``ProducerStateManager``).

The table itself (sequences, epochs, expiry, bounds) is sans-IO in ``broker.producers``; this
module keeps it across restarts. ``producer-state.json`` holds a snapshot of the table as of
an offset, written with every recovery-point checkpoint and never fsynced: a missing, stale or
unreadable snapshot only means more of the log is read on open, since the table is rebuilt from
the snapshot and then from the header of every later batch (and the marker of every later
control batch: transactions open and aborted are part of the table).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from broker.producers import ProducerStateTable, is_control
from kelp.files import replace_file
from kelp.recordbatch import BatchHeader, CorruptBatch

log = logging.getLogger("kelp.broker.log")

SNAPSHOT = "producer-state.json"


class ProducerStateManager:
    def __init__(self, directory: Path) -> None:
        self.path = directory / SNAPSHOT
        self.table = ProducerStateTable()

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
            if log_start <= snapshot["offset"] <= high_watermark:
                # One from before transactions existed has none (none could be written).
                self.table = ProducerStateTable.from_json(snapshot["producers"],
                                                          snapshot.get("transactions"))
                start = snapshot["offset"]
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

    def snapshot(self, offset: int) -> str:
        """The table as of ``offset`` (the high-water mark when taken), for ``write``."""
        return json.dumps({"offset": offset, "producers": self.table.to_json(),
                           "transactions": self.table.txns_to_json()})

    def write(self, snapshot: str) -> None:
        """Replace the snapshot file (a hint: not fsynced); safe in a worker thread."""
        replace_file(self.path, snapshot, durable=False)
