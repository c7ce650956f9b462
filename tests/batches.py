"""Build real Kafka v2 record batches for tests with kio's batch writer (not our own code)."""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence

from kio.records.readers import read_batch
from kio.records.schema import NewRecordBatch, Record, RecordBatch, RecordHeader
from kio.records.writers import write_batch


def make_batch(records: Sequence[tuple[bytes | None, bytes | None]], *, base_offset: int = 0,
               timestamp: int = 1_700_000_000_000,
               headers: Sequence[tuple[bytes, bytes]] = (),
               producer: tuple[int, int, int] = (-1, -1, -1),
               transactional: bool = False) -> bytes:
    """A batch; ``producer`` is (producer id, epoch, base sequence) for idempotent ones,
    ``transactional`` sets the batch's transactional attribute (bit 4)."""
    when = datetime.datetime.fromtimestamp(timestamp / 1000, tz=datetime.UTC)
    producer_id, producer_epoch, base_sequence = producer
    batch = NewRecordBatch(
        producer_id=producer_id, producer_epoch=producer_epoch, base_sequence=base_sequence,
        attributes=0x10 if transactional else 0, records=tuple(
            Record(attributes=0, timestamp=when, offset=index, key=key, value=value,
                   headers=tuple(RecordHeader(key=k, value=v) for k, v in headers))
            for index, (key, value) in enumerate(records)))
    buffer = io.BytesIO()
    write_batch(buffer, batch)
    data = bytearray(buffer.getvalue())
    data[0:8] = base_offset.to_bytes(8, "big", signed=True)
    return bytes(data)


def make_batch_with_timestamps(timestamps: Sequence[int]) -> bytes:
    """One batch whose records carry the given CreateTime timestamps (ms), in that order."""
    batch = NewRecordBatch(
        producer_id=-1, producer_epoch=-1, base_sequence=-1, attributes=0,
        records=tuple(
            Record(attributes=0, offset=index, key=b"k", value=b"v%d" % index, headers=(),
                   timestamp=datetime.datetime.fromtimestamp(ts / 1000, tz=datetime.UTC))
            for index, ts in enumerate(timestamps)))
    buffer = io.BytesIO()
    write_batch(buffer, batch)
    return buffer.getvalue()


def read_batches(data: bytes) -> list[RecordBatch]:
    """Decode every batch in ``data`` with kio (which checks nothing for us: we compare)."""
    out, position = [], 0
    while position < len(data):
        batch, size = read_batch(data, position)
        out.append(batch)
        position += size
    return out


async def log_offsets(plog) -> list[int]:
    """Every record offset a partition log serves, read the way a consumer would."""
    offsets, position = [], plog.log_start_offset
    while position < plog.high_watermark:
        batches = read_batches((await plog.read(position, 1 << 20)).records)
        offsets += [b.base_offset + i for b in batches for i in range(len(b.records))]
        position = offsets[-1] + 1
    return offsets
