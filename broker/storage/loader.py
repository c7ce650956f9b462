"""Opening a partition directory after a clean stop or a crash (Kafka's ``LogLoader``).

Besides its segments a partition directory holds two checkpoints, one number each::

    recovery-point      offset below which everything was fsynced
    log-start-offset    first offset readers may see (DeleteRecords, retention)

Recovery is a first-class path: segments wholly below the recovery point keep their indexes
(rebuilt if damaged); the rest are re-checked batch by batch with CRCs, their indexes rebuilt,
and a torn or corrupt tail is cut — with every later segment, since nothing after a hole can
be trusted to follow on from it. Leftovers of an interrupted file replace (``*.tmp``) or
compaction (``*.cleaned``) are deleted: the files they were to replace are whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from broker.storage.config import LogConfig
from broker.storage.segment import SUFFIX, Segment, index_paths
from kelp.files import replace_file

log = logging.getLogger("kelp.broker.log")

RECOVERY_POINT = "recovery-point"
LOG_START_OFFSET = "log-start-offset"
CLEANED_SUFFIX = ".cleaned"


def read_checkpoint(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def write_checkpoint(path: Path, value: int, *, durable: bool) -> None:
    replace_file(path, f"{value}\n", durable=durable)


@dataclass
class LoadedLog:
    segments: list[Segment]  # at least one; the last is the active segment
    log_start: int
    created: bool  # a segment file was created: the directory needs an fsync


def load(directory: Path, config: LogConfig) -> LoadedLog:
    """Open (recovering as needed) the segments of ``directory``, which must exist."""
    for stale in [*directory.glob("*.tmp"), *directory.glob("*" + CLEANED_SUFFIX)]:
        stale.unlink()
    recovery_point = read_checkpoint(directory / RECOVERY_POINT) or 0
    paths = sorted(directory.glob("*" + SUFFIX))
    segments: list[Segment] = []
    for number, path in enumerate(paths):
        next_base = int(paths[number + 1].stem) if number + 1 < len(paths) else None
        trusted = next_base is not None and next_base <= recovery_point
        segment, damaged = Segment.load(path, trusted=trusted, compacted=config.compacted,
                                        index_interval=config.index_interval_bytes)
        segments.append(segment)
        if damaged:
            _delete_after_damage(paths[number + 1 :])
            break
    created = not segments
    if created:
        segments.append(Segment.create(directory, 0))
    start = read_checkpoint(directory / LOG_START_OFFSET)
    first, high_watermark = segments[0].base_offset, segments[-1].next_offset
    log_start = first if start is None else min(max(start, first), high_watermark)
    return LoadedLog(segments, log_start, created)


def _delete_after_damage(later: list[Path]) -> None:
    for path in later:
        log.warning("deleting segment after damaged one", extra={"segment": str(path)})
        path.unlink()
        for index in index_paths(path):
            index.unlink(missing_ok=True)
