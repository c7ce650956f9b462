"""Idempotent producer state in the partition log: retries, gaps, epochs, restarts."""

from __future__ import annotations

import pytest
from kio.schema.errors import ErrorCode

from broker.log import PartitionLog
from broker.producers import ProducerError
from tests.batches import make_batch


def idem(pid: int, epoch: int, seq: int, count: int = 3) -> bytes:
    return make_batch([(b"k", b"v%d" % (seq + i)) for i in range(count)],
                      producer=(pid, epoch, seq))


def test_a_retry_gets_the_original_offsets_and_is_not_written(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    first = plog.append(idem(7, 0, 0))
    second = plog.append(idem(7, 0, 3))
    size = plog.size_bytes
    again = plog.append(idem(7, 0, 0))
    assert (again.base_offset, again.last_offset) == (first.base_offset, first.last_offset)
    assert plog.size_bytes == size and plog.high_watermark == second.last_offset + 1
    plog.close()


@pytest.mark.parametrize(("batch", "code"), [
    (idem(7, 0, 9), ErrorCode.out_of_order_sequence_number),   # a gap
    (idem(8, 0, 5), ErrorCode.unknown_producer_id),            # never seen, mid-sequence
    (idem(7, 1, 4), ErrorCode.out_of_order_sequence_number),   # new epoch must start at 0
])
def test_refusals(tmp_path, batch, code):
    plog = PartitionLog.open(tmp_path / "p")
    plog.append(idem(7, 0, 0))
    with pytest.raises(ProducerError) as refused:
        plog.append(batch)
    assert refused.value.code == code
    assert plog.high_watermark == 3
    plog.close()


def test_a_bumped_epoch_fences_the_old_one(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    plog.append(idem(7, 0, 0))
    plog.append(idem(7, 1, 0))
    with pytest.raises(ProducerError) as refused:
        plog.append(idem(7, 0, 3))
    assert refused.value.code == ErrorCode.invalid_producer_epoch
    plog.close()


@pytest.mark.parametrize("clean", [True, False])
def test_state_survives_a_restart(tmp_path, clean):
    plog = PartitionLog.open(tmp_path / "p")
    first = plog.append(idem(7, 0, 0))
    plog.append(idem(7, 0, 3))
    if clean:
        plog.close()
    else:  # a crash: no snapshot of the latest state, only the log
        for segment in plog.segments:
            segment.close()
    reopened = PartitionLog.open(tmp_path / "p")
    assert reopened.append(idem(7, 0, 0)).base_offset == first.base_offset  # still a retry
    assert reopened.append(idem(7, 0, 6)).base_offset == 6  # and the sequence continues
    with pytest.raises(ProducerError):
        reopened.append(idem(7, 0, 20))
    reopened.close()


def test_idle_producers_expire_and_the_table_is_bounded(tmp_path):
    from broker.producers import ProducerStateTable
    from kelp.recordbatch import parse_header

    table = ProducerStateTable(max_producers=100)
    for pid in range(250):  # made-up producer ids at sequence 0, as an attacker would send
        table.record(parse_header(idem(pid, 0, 0, 1)), now_ms=1_000 + pid)
    assert len(table.entries) == 100
    assert min(table.entries) == 150  # the least recently active went first
    table.record(parse_header(idem(150, 0, 1, 1)), now_ms=10_000)  # 150 is active again
    # At 1399 with a 200 ms expiry, everyone who last wrote at or before 1199 goes: pids
    # 151-199 (150 wrote again at 10 000); 200-249 stay.
    assert table.expire(now_ms=1_399, expiration_ms=200) == 49
    assert 150 in table.entries and 151 not in table.entries and 249 in table.entries
    assert table.expire(now_ms=10_200, expiration_ms=200) == 51 and not table.entries


def test_expiry_survives_the_snapshot(tmp_path):
    plog = PartitionLog.open(tmp_path / "p")
    plog.append(idem(7, 0, 0))
    plog.close()
    reopened = PartitionLog.open(tmp_path / "p")
    assert reopened.producers.entries[7].last_ms > 0
    assert reopened.producers.expire(reopened.producers.entries[7].last_ms + 1, 1) == 1
    reopened.close()
