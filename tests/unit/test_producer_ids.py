"""Producer-id blocks: never handed out twice, and a damaged block file stops the start."""

from __future__ import annotations

import pytest

from broker.producer_ids import BLOCK, FILE_NAME, CorruptProducerIds, ProducerIds


async def test_a_restart_continues_after_the_reserved_block(tmp_path):
    first = ProducerIds(tmp_path)
    assert [await first.allocate() for _ in range(3)] == [0, 1, 2]
    assert (tmp_path / FILE_NAME).read_text() == f"{BLOCK}\n"
    second = ProducerIds(tmp_path)
    assert await second.allocate() == BLOCK
    assert (tmp_path / FILE_NAME).read_text() == f"{2 * BLOCK}\n"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("contents", [b"", b"12", b"20\n00\n", b"-5\n", b"abc\n", b"\xff\xfe\n",
                                      b"1000\x00"])
def test_a_torn_or_corrupt_file_is_a_startup_error_not_id_zero(tmp_path, contents):
    (tmp_path / FILE_NAME).write_bytes(contents)
    with pytest.raises(CorruptProducerIds, match=FILE_NAME):
        ProducerIds(tmp_path)
    assert (tmp_path / FILE_NAME).read_bytes() == contents  # left for the operator to see


async def test_epochs_bump_and_a_new_id_past_the_last_epoch(tmp_path):
    ids = ProducerIds(tmp_path)
    assert await ids.init(-1, -1) == (0, 0)
    assert await ids.init(0, 4) == (0, 5)
    assert await ids.init(0, 32766) == (1, 0)
