"""A broker fetch sends no more than it reserved on the gateway stream: data appended while
the fetch waits for room is left for the next fetch, so the stream's outgoing bound holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio

from broker.service import BrokerService
from broker.topics import TopicRegistry
from kelp.rpc.broker import v1 as pb
from tests.batches import make_batch

BATCH = make_batch([(b"k", bytes(10_000))])


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[BrokerService]:
    async with trio_asyncio.open_loop():
        registry = TopicRegistry(tmp_path / "data")
        registry.open()
        await registry.create("t", 1)
        try:
            yield BrokerService(registry)
        finally:
            registry.close()


class RecordingSender:
    """A stream sender that appends more data to the log while the fetch waits for room."""

    def __init__(self, on_reserve: Any) -> None:
        self.on_reserve = on_reserve
        self.reserved: list[int] = []
        self.sent: list[tuple[int, int]] = []  # (size, reserved)

    async def reserve(self, size: int) -> int:
        self.on_reserve()
        await trio.lowlevel.checkpoint()
        self.reserved.append(size)
        return size

    def release(self, size: int) -> None:
        pass

    def __call__(self, message: Any, size: int = 0, reserved: int = 0) -> None:
        self.sent.append((size, reserved))


async def test_data_appended_while_waiting_for_room_is_not_sent(service: BrokerService):
    plog = service.registry.partition("t", 0)
    plog.append(BATCH)
    sender = RecordingSender(lambda: [plog.append(BATCH) for _ in range(5)])
    request = pb.FetchRequest(request_id=1, max_bytes=1_000_000, min_bytes=1, max_wait_ms=0,
                              partitions=[pb.FetchPartition(topic="t", partition=0, offset=0,
                                                            max_bytes=1_000_000)])
    await service._fetch_task(request, sender)  # type: ignore[arg-type]
    ((size, reserved),) = sender.sent
    assert reserved == len(BATCH) and size == len(BATCH)  # one batch, not six


async def test_a_fetch_with_nothing_available_sends_no_data(service: BrokerService):
    plog = service.registry.partition("t", 0)
    sender = RecordingSender(lambda: plog.append(BATCH))
    request = pb.FetchRequest(request_id=1, max_bytes=1_000_000, min_bytes=1, max_wait_ms=0,
                              partitions=[pb.FetchPartition(topic="t", partition=0, offset=0,
                                                            max_bytes=1_000_000)])
    await service._fetch_task(request, sender)  # type: ignore[arg-type]
    assert sender.sent == [(0, 0)]
