"""Torn tails: generated damage to the last segment always recovers without losing the rest."""

from __future__ import annotations

import random

import pytest

from broker.log import LogConfig, PartitionLog
from tests.batches import log_offsets, make_batch

CONFIG = LogConfig(segment_bytes=3000, index_interval_bytes=500)
CASES = 200


def build(directory) -> list[tuple[int, int, int]]:
    """A log of several segments; returns (segment number, base offset, end byte) per batch."""
    plog = PartitionLog.open(directory, CONFIG)
    layout = []
    for number in range(30):
        records = [(f"k{number}-{i}".encode(), b"x" * (20 + number)) for i in range(1 + number % 4)]
        result = plog.append(make_batch(records))
        segment = plog.active
        layout.append((len(plog.segments) - 1, result.base_offset, segment.size))
    for segment in plog.segments:  # a crash: no clean close, no recovery point
        segment.close()
    return layout


@pytest.mark.parametrize("case", range(CASES))
async def test_damaged_tail_recovers(tmp_path, case):
    rng = random.Random(case)
    directory = tmp_path / "p"
    layout = build(directory)
    last_segment = max(number for number, _, _ in layout)
    segment_path = sorted(directory.glob("*.log"))[last_segment]
    data = bytearray(segment_path.read_bytes())
    in_last = [(base, end) for number, base, end in layout if number == last_segment]
    kind = ("truncate", "flip", "drop-index")[case % 3]
    if kind == "truncate":
        cut = rng.randrange(0, len(data))
        segment_path.write_bytes(data[:cut])
        survivors = [base for base, end in in_last if end <= cut]
    elif kind == "flip":
        last_start = in_last[-2][1] if len(in_last) > 1 else 0
        # Any byte but the leader epoch (12-15): outside the CRC by design and not used yet.
        positions = [p for p in range(last_start, len(data)) if not 12 <= p - last_start < 16]
        for _ in range(rng.randint(1, 4)):
            data[rng.choice(positions)] ^= 1 << rng.randrange(8)
        segment_path.write_bytes(data)
        survivors = [base for base, end in in_last[:-1]]
    else:
        segment_path.with_suffix(".index").unlink()
        (directory / sorted(p.name for p in directory.glob("*.timeindex"))[0]).unlink()
        survivors = [base for base, _ in in_last]
    plog = PartitionLog.open(directory, CONFIG)
    before_last = [base for number, base, _ in layout if number < last_segment]
    expected_batches = before_last + survivors
    # Every batch before the damage is still there, in order, and nothing after it.
    offsets = await log_offsets(plog)
    starts = sorted({base for base in expected_batches})
    assert [o for o in offsets if o in set(starts)] == starts
    expected_end = layout[len(expected_batches)][1] if len(expected_batches) < len(layout) \
        else plog.high_watermark
    assert plog.high_watermark == expected_end
    assert offsets == list(range(expected_end))
    # And the log takes appends again right after the last good batch.
    assert plog.append(make_batch([(b"new", b"v")])).base_offset == expected_end
    plog.close()
