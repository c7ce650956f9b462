"""Storage engine alone: append and fetch MB/s against plain file IO measured in the same run.

Append is measured twice: without fsync (acks=1: the bytes reach the file before the ack) and
with an fdatasync after every 1 MiB append (acks=all with no other appender to share the sync);
the raw baselines do the same writes (and syncs) with ``os.write``. Fetch reads the whole log
back in 1 MiB fetches against sequential ``os.pread`` of the same bytes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import trio

from broker.log import LogConfig, PartitionLog
from tests.batches import make_batch

CHUNK_RECORDS = 1000
RECORD_BYTES = 1024


def _batch() -> bytes:
    return make_batch([(b"key-%d" % i, b"v" * RECORD_BYTES) for i in range(CHUNK_RECORDS)])


async def _engine(directory: Path, batch: bytes, count: int, sync: bool) -> tuple[float, float]:
    plog = PartitionLog.open(directory, LogConfig(segment_bytes=256 * 1024 * 1024))
    started = time.perf_counter()
    for _ in range(count):
        result = plog.append(batch)
        if sync:
            await plog.wait_durable(result.write_mark)
    append_s = time.perf_counter() - started
    started = time.perf_counter()
    offset = 0
    while offset < plog.high_watermark:
        data = (await plog.read(offset, 1024 * 1024)).records
        offset += CHUNK_RECORDS * (len(data) // len(batch))
    fetch_s = time.perf_counter() - started
    plog.close()
    return append_s, fetch_s


def _raw(path: Path, batch: bytes, count: int, sync: bool) -> tuple[float, float]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    started = time.perf_counter()
    for _ in range(count):
        os.write(fd, batch)
        if sync:
            os.fdatasync(fd)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    position, size = 0, count * len(batch)
    while position < size:
        position += len(os.pread(fd, 1024 * 1024 + 4096, position))
    read_s = time.perf_counter() - started
    os.close(fd)
    return write_s, read_s


def run(total_mb: int = 256) -> list[tuple[str, str, str, float]]:
    batch = _batch()
    count = max(1, total_mb * 1024 * 1024 // len(batch))
    megabytes = count * len(batch) / 1e6
    rows = []
    for sync in (False, True):
        runs = count if not sync else max(1, count // 4)  # fsync per MiB is slow: fewer
        mb = megabytes * runs / count
        with tempfile.TemporaryDirectory() as tmp:
            append_s, fetch_s = trio.run(_engine, Path(tmp) / "p", batch, runs, sync)
        with tempfile.TemporaryDirectory() as tmp:
            write_s, read_s = _raw(Path(tmp) / "raw", batch, runs, sync)
        label = "fdatasync per 1 MiB" if sync else "no fsync"
        rows.append((f"storage append ({label})", f"{mb / append_s:,.0f} MB/s",
                     f"{mb / write_s:,.0f} MB/s", write_s / append_s))
        if not sync:
            rows.append(("storage fetch (1 MiB fetches)", f"{mb / fetch_s:,.0f} MB/s",
                         f"{mb / read_s:,.0f} MB/s", read_s / fetch_s))
        for name, kelp_figure, raw_figure, ratio in rows[-2 if not sync else -1:]:
            print(f"{name}: kelp {kelp_figure} | raw {raw_figure} | ratio {ratio:.2f}")
    return rows
