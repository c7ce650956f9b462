"""broker.service's Append and Fetch streams cancelled at every checkpoint hold nothing after.

The service, its topic registry and a partition log in a temporary directory are real, and so
is the stream's sender (kelp.grpc's pump, bounding the bytes queued for the gateway). The
gateway end is a stand-in: it hands the handler its requests, ends the stream once it has its
replies, and reads replies only when the test lets it. Cancelled anywhere, a stream leaves no
fetch or append counted as pending, no append listener on the log, no bytes reserved on the
sender beyond the replies really queued, no task — and the log still syncs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from broker.service import BrokerService
from broker.topics import TopicRegistry
from kelp import grpc
from kelp.process import count_tasks
from kelp.rpc.broker import v1 as pb
from tests.batches import make_batch
from tests.unit.cancel_points import cancel_at_every_point, settle, wait_until
from tests.unit.test_cancel_grpc import FakePeer, only_broken

# Larger than the log reads inline: a fetch of it reads in a thread, a checkpoint between
# reserving room on the stream and sending the reply.
BIG_BATCH = make_batch([(b"k", bytes(200 * 1024))])
SMALL_BATCH = make_batch([(b"k", b"v")])


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


def partition_log(service: BrokerService) -> Any:
    return service.registry.partition("t", 0)


class GatewayEnd:
    """One stream as the gateway holds it: the requests it sends, the replies it gets."""

    def __init__(self, requests: list[Any], replies_wanted: int, *, reading: bool = True,
                 max_outgoing_bytes: int = grpc.MAX_OUTGOING_BYTES) -> None:
        self.requests = list(requests)
        self.replies_wanted = replies_wanted
        self.peer = FakePeer(reading=reading)
        self.pump = grpc._Pump(self.peer, max_outgoing_bytes=max_outgoing_bytes)
        self.queued: list[tuple[Any, int]] = []  # (reply, its byte count) handed to the pump
        self.refused_reserved = 0  # reserved for replies the ended pump refused
        self._all_replied = trio.Event()
        self._more = trio.Event()
        sender = grpc.StreamSender(self.pump)
        self.send = _Counting(sender, self)

    def push(self, request: Any) -> None:
        self.requests.append(request)
        self._more.set()

    async def recv(self) -> Any:
        while not self.requests:
            if len(self.queued) >= self.replies_wanted:
                return None  # the gateway has what it came for and closes the stream
            self._more = trio.Event()
            async with trio.open_nursery() as nursery:
                async def first_of(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first_of, self._more)
                nursery.start_soon(first_of, self._all_replied)
        await trio.lowlevel.checkpoint()
        return self.requests.pop(0)

    def note_queued(self, reply: Any, size: int) -> None:
        self.queued.append((reply, size))
        if len(self.queued) >= self.replies_wanted:
            self._all_replied.set()

    def unsent_bytes(self) -> int:
        """Bytes of replies handed to the pump that the gateway has not read yet."""
        sent = {id(reply) for reply in self.peer.sent}
        return sum(size for reply, size in self.queued if id(reply) not in sent)

    async def run(self, serve: Any) -> None:
        """``serve(recv, send)`` on this stream; the pump goes when the handler returns."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_asyncio.aio_as_trio(self.pump.run))
            await serve(self.recv, self.send)
            nursery.cancel_scope.cancel()


class _Counting:
    """The handler's ``send``, noting each reply it queues (a StreamSender underneath)."""

    def __init__(self, sender: grpc.StreamSender, end: GatewayEnd) -> None:
        self._sender, self._end = sender, end

    def __call__(self, message: Any, size: int = 0, reserved: int = 0) -> None:
        try:
            self._sender(message, size, reserved)
        except trio.BrokenResourceError:
            # The pump has ended: it refuses the reply and keeps counting what was reserved
            # for it (harmless on a dead stream, and not this handler's to give back).
            self._end.refused_reserved += reserved
            raise
        self._end.note_queued(message, size)

    async def reserve(self, size: int) -> int:
        return await self._sender.reserve(size)

    def release(self, size: int) -> None:
        self._sender.release(size)


def fetch(request_id: int, offset: int, *, max_wait_ms: int = 10_000) -> pb.FetchRequest:
    return pb.FetchRequest(request_id=request_id, max_wait_ms=max_wait_ms, min_bytes=1,
                           max_bytes=1 << 20, partitions=[pb.FetchPartition(
                               topic="t", partition=0, offset=offset, max_bytes=1 << 20)])


async def test_a_fetch_stream_cancelled_at_every_point_holds_nothing(
        service: BrokerService) -> None:
    plog = partition_log(service)
    plog.append(BIG_BATCH)
    await settle()
    baseline = count_tasks()
    state: dict[str, Any] = {}

    async def fetch_stream() -> None:
        # One long poll at the end of the log (woken by an append), one read of what is there.
        end = state["end"] = GatewayEnd(
            [fetch(1, plog.high_watermark), fetch(2, plog.high_watermark - 1)], 2)
        async with trio.open_nursery() as nursery:
            async def producer() -> None:
                for _ in range(4):
                    await trio.lowlevel.checkpoint()
                plog.append(BIG_BATCH)

            nursery.start_soon(producer)
            await end.run(service.serve_fetch)

    async def check(completed: bool, outcome: Any) -> None:
        # Cancelled while a fetch reads in a thread, the stream's pump (cancelled with it)
        # has ended by the time the read is back, and that fetch's send raises
        # BrokenResourceError instead of the stream ending quietly. Nothing is held either way.
        assert outcome is None or (not completed and only_broken(outcome)), outcome
        end: GatewayEnd = state["end"]
        await settle()
        assert service.open_streams == 0 and service.pending_fetches == 0
        assert not plog._append_listeners  # a parked fetch stops listening when cancelled
        # Reserved and never sent (cancelled while reading) is given back: what is still
        # counted is exactly what was queued and not yet read by the gateway.
        assert end.pump.pending_bytes == end.unsent_bytes() + end.refused_reserved, (
            end.pump.pending_bytes, end.unsent_bytes(), end.refused_reserved)
        assert count_tasks() == baseline
        if completed:
            assert sorted(reply.request_id for reply, _ in end.queued) == [1, 2]
            assert all(len(reply.partitions[0].records) == len(BIG_BATCH)
                       for reply, _ in end.queued)

    points = await cancel_at_every_point(fetch_stream, check, subtree=True)
    assert points > 10


async def test_a_fetch_cancelled_by_the_gateway_while_waiting_for_room_gives_it_back(
        service: BrokerService) -> None:
    plog = partition_log(service)
    plog.append(BIG_BATCH)
    # The gateway does not read: the first reply fills the stream, the second waits for room.
    end = GatewayEnd([fetch(1, 0), fetch(2, 0)], 2, reading=False,
                     max_outgoing_bytes=len(BIG_BATCH))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(end.run, service.serve_fetch)
        await wait_until(lambda: len(end.queued) == 1)
        await settle()
        assert service.pending_fetches == 1  # the second, waiting for room
        assert end.pump.pending_bytes == len(BIG_BATCH)
        end.push(pb.FetchRequest(request_id=2, cancel=True))
        await wait_until(lambda: service.pending_fetches == 0)
        assert end.pump.pending_bytes == len(BIG_BATCH)  # the first reply only
        end.peer.reading.set()  # the stream still serves: the next fetch is answered
        end.push(fetch(3, plog.high_watermark, max_wait_ms=0))
        with trio.fail_after(5):
            await settle()
    assert service.open_streams == 0
    assert [reply.request_id for reply, _ in end.queued] == [1, 3]


async def test_an_append_stream_cancelled_at_every_point_leaves_the_log_syncing(
        service: BrokerService) -> None:
    plog = partition_log(service)
    await settle()
    baseline = count_tasks()
    state: dict[str, Any] = {}

    async def append_stream() -> None:
        requests = [pb.AppendRequest(request_id=n, topic="t", partition=0, records=SMALL_BATCH,
                                     acks=-1) for n in (1, 2, 3)]
        end = state["end"] = GatewayEnd(requests, 3)
        await end.run(service.serve_append)

    async def check(completed: bool, outcome: Any) -> None:
        # As for fetches: a reply made durable after the pump was cancelled fails to send.
        assert outcome is None or (not completed and only_broken(outcome)), outcome
        await settle()
        assert service.open_streams == 0 and service.pending_appends == 0
        assert count_tasks() == baseline
        # A cancelled group commit hands the sync on: what is written still becomes durable.
        written = plog.append(SMALL_BATCH)
        with trio.fail_after(5):
            await plog.wait_durable(written.write_mark)
        if completed:
            replies = [reply for reply, _ in state["end"].queued]
            # (Each waits for its fsync in its own task: answers may come in any order.)
            assert sorted(r.request_id for r in replies) == [1, 2, 3]
            assert all(r.error_code == 0 and r.base_offset >= 0 for r in replies)

    points = await cancel_at_every_point(append_stream, check, subtree=True)
    assert points > 5


