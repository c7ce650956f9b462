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
