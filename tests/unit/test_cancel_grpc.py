"""kelp.grpc's stream pumps cancelled at every checkpoint leave no task, stream or byte behind.

Two setups. The pump and the server-stream wrapper run against a stand-in for grpclib's stream
(the remote peer: it delivers what the test queues and reads only when the test lets it), so a
test owns every message and every byte count. The client side runs a real grpclib server and
channel on a Unix socket inside trio-asyncio.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from kelp import grpc
from kelp.process import count_tasks
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb
from tests.unit.cancel_points import cancel_at_every_point, settle

# The pump neither knows nor cares which method it carries: a test echo serves Broker.Fetch.
STREAM = BROKER.fetch


class FakePeer:
    """The far end of one grpclib stream, as ``_Pump`` sees it (asyncio side)."""

    def __init__(self, *, reading: bool = True) -> None:
        self.inbound: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: list[Any] = []
        self.reading = asyncio.Event()
        if reading:
            self.reading.set()
        self.vanish: BaseException | None = None

    async def recv_message(self) -> Any:
        message = await self.inbound.get()
        if isinstance(message, BaseException):
            raise message
        return message

    async def send_message(self, message: Any) -> None:
        await self.reading.wait()
        self.sent.append(message)

    def deliver(self, message: Any) -> None:
        self.inbound.put_nowait(message)


async def drained(pump: grpc._Pump) -> None:
    """Until the pump has handed every queued message to the peer (or failed)."""
    with trio.fail_after(5):
        while pump.pending_bytes and pump.error is None:
            await trio.sleep(0.001)


@pytest.fixture
async def aio_loop() -> Any:
    async with trio_asyncio.open_loop() as loop:
        yield loop


async def test_a_reserve_cancelled_at_every_point_keeps_the_count(aio_loop: Any) -> None:
    """A sender waiting for room on a full stream, cancelled anywhere, with the owner's
    pattern (reserve; build; send what was reserved, or release it): once the peer has read
    everything, no byte is still counted as pending."""
    state: dict[str, Any] = {}

    async def reserve_on_a_full_stream() -> None:
        peer = state["peer"] = FakePeer(reading=False)
        pump = state["pump"] = grpc._Pump(peer, max_outgoing_bytes=100)
        sender = grpc.StreamSender(pump)
        queued = state["queued"] = {}  # request id -> bytes, of replies handed to the pump
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_asyncio.aio_as_trio(pump.run))
            sender(pb.FetchReply(request_id=1), size=100)  # fills the stream
            queued[1] = 100

            async def peer_reads_later() -> None:
                for _ in range(3):
                    await trio.lowlevel.checkpoint()
                peer.reading.set()

            nursery.start_soon(peer_reads_later)
            reserved = await sender.reserve(60)
            try:
                await trio.lowlevel.checkpoint()  # building the reply
                sender(pb.FetchReply(request_id=2), size=60, reserved=reserved)
                queued[2] = 60
            except BaseException:
                sender.release(reserved)
                raise
            await drained(pump)
            nursery.cancel_scope.cancel()

    async def check(completed: bool, outcome: Any) -> None:
        assert outcome is None, outcome
        peer, pump = state["peer"], state["pump"]
        assert pump.pending_bytes >= 0
        # The run's nursery cancelled the pump; whatever it had not sent stays counted, and
        # only that: the cancelled reserve itself holds nothing.
        unsent = sum(size for request_id, size in state["queued"].items()
                     if request_id not in {reply.request_id for reply in peer.sent})
        assert pump.pending_bytes == unsent, (pump.pending_bytes, peer.sent)
        await settle()

    assert await cancel_at_every_point(reserve_on_a_full_stream, check, subtree=True) >= 3


async def test_a_stream_handler_cancelled_at_every_point_ends_its_tasks(aio_loop: Any) -> None:
    """``stream_handler``'s wrapper, driven as grpclib drives it, cancelled anywhere: the trio
    function's own tasks end with it, its ``finally`` runs, and the pump is gone."""
    running: dict[str, int] = {"serves": 0, "workers": 0}

    async def serve(recv: Any, send: grpc.StreamSender) -> None:
        running["serves"] += 1
        try:
            async with trio.open_nursery() as nursery:
                while (request := await recv()) is not None:
                    async def answer(request: Any = request) -> None:
                        running["workers"] += 1
                        try:
                            reserved = await send.reserve(10)
                            await trio.lowlevel.checkpoint()
                            send(pb.FetchReply(request_id=request.request_id), size=10,
                                 reserved=reserved)
                        finally:
                            running["workers"] -= 1

                    nursery.start_soon(answer)
                nursery.cancel_scope.cancel()  # the client is gone: so are its answers
        finally:
            running["serves"] -= 1

    handler = grpc.stream_handler(serve, pb.FetchRequest, pb.FetchReply)
    await settle()
    baseline = count_tasks()
    state: dict[str, Any] = {}

    async def one_stream() -> None:
        peer = state["peer"] = FakePeer()
        for number in (1, 2, 3):
            peer.deliver(pb.FetchRequest(request_id=number))
        peer.deliver(None)  # the client ends its side
        await trio_asyncio.aio_as_trio(handler.func)(peer)

    async def check(completed: bool, outcome: Any) -> None:
        # The pump ends sending when the client ends its side: an answer that was still
        # being made then fails to send (BrokenResourceError), which is not a leak.
        assert outcome is None or only_broken(outcome), outcome
        await settle()
        assert running == {"serves": 0, "workers": 0}
        assert count_tasks() == baseline
        if completed:  # the end of the stream reached recv(); answers already queued went
            assert {m.request_id for m in state["peer"].sent} <= {1, 2, 3}

    # grpclib runs the handler as an asyncio task, and the trio function in a task of the
    # trio-asyncio loop: every task's steps count.
    assert await cancel_at_every_point(one_stream, check, every_task=True) >= 5


async def test_a_vanished_peer_wakes_reservers_instead_of_parking_them(aio_loop: Any) -> None:
    """A reserver waiting for room when the peer goes away gets an error, not a wait for
    ever: the pump's end wakes whoever waits for it."""
    peer = FakePeer(reading=False)
    pump = grpc._Pump(peer, max_outgoing_bytes=100)
    sender = grpc.StreamSender(pump)
    client_side = grpc.ClientStream(pump)
    outcomes: list[str] = []

    async def reserver() -> None:
        try:
            await sender.reserve(50)
        except trio.BrokenResourceError:
            outcomes.append("reserve: broken")

    async def writer() -> None:
        await client_side.wait_writable()
        outcomes.append(f"writable: error={client_side.error!r}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio_asyncio.aio_as_trio(pump.run))
        sender(pb.FetchReply(request_id=1), size=100)
        nursery.start_soon(reserver)
        nursery.start_soon(writer)
        await settle()
        assert outcomes == []
        peer.deliver(ConnectionResetError("peer gone"))
        with trio.fail_after(5):
            while len(outcomes) < 2:
                await trio.sleep(0.001)
        assert await client_side.recv() is None
    assert sorted(outcomes)[0] == "reserve: broken"
    assert "peer gone" in sorted(outcomes)[1]


async def test_a_client_stream_cancelled_at_every_point_closes_on_both_sides(
        aio_loop: Any, tmp_path: Path) -> None:
    """A real grpclib stream opened, used and abandoned by its trio owner, cancelled at every
    point: the server's handler ends with it, no task is left on either side, and the channel
    has no stream open."""
    serving = {"now": 0, "ever": 0}

    async def echo(recv: Any, send: grpc.StreamSender) -> None:
        serving["now"] += 1
        serving["ever"] += 1
        try:
            while (request := await recv()) is not None:
                send(pb.FetchReply(request_id=request.request_id))
        finally:
            serving["now"] -= 1

    address = grpc.Address(path=str(tmp_path / "pumps.sock"))
    mapping = {STREAM.path: grpc.stream_handler(echo, pb.FetchRequest, pb.FetchReply)}
    async with trio.open_nursery() as server_nursery:
        await server_nursery.start(grpc.serve, mapping, address)
        channel = grpc.Channel(address)

        async def use_a_stream() -> None:
            async with channel.open_stream(STREAM) as stream:
                for number in (1, 2):
                    stream.send(pb.FetchRequest(request_id=number))
                    reply = await stream.recv()
                    assert reply is not None and reply.request_id == number

        await use_a_stream()  # connected: the connection's own tasks are in the baseline
        await settle()
        baseline = count_tasks()
        took: list[float] = []

        async def timed_use() -> None:
            started = trio.current_time()
            try:
                await use_a_stream()
            finally:
                took.append(trio.current_time() - started)

        async def check(completed: bool, outcome: Any) -> None:
            assert outcome is None, outcome
            # Cancelled, the owner leaves at once: it resets the stream rather than waiting
            # for the stream's teardown to time out.
            assert took[-1] < 0.5, took[-1]
            # The server hears of the reset a little later (a few ms; 1 s is generous).
            with trio.move_on_after(1):
                while serving["now"] or count_tasks() > baseline:
                    await trio.sleep(0.002)
            assert serving["now"] == 0 and count_tasks() <= baseline
            assert open_client_streams(channel) == 0

        points = await cancel_at_every_point(timed_use, check, every_task=True,
                                             min_points=3)
        assert serving["ever"] >= 1
        # Still usable after all that.
        with trio.fail_after(5):
            await use_a_stream()
        channel.close()
        server_nursery.cancel_scope.cancel()
    assert points >= 3


def only_broken(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(only_broken(inner) for inner in error.exceptions)
    return isinstance(error, trio.BrokenResourceError)


def open_client_streams(channel: grpc.Channel) -> int:
    """Streams the channel's HTTP/2 connection still has open (0 without a connection)."""
    protocol = channel._channel._protocol
    if protocol is None:
        return 0
    return protocol.connection._connection.open_outbound_streams
