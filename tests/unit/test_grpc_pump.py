"""kelp.grpc's streams are bounded both ways and their pumps die with their owners."""

from __future__ import annotations

from pathlib import Path

import trio
import trio_asyncio

from kelp import grpc
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

MIB = 1024 * 1024


async def test_a_peer_that_does_not_read_holds_back_a_reserving_sender(tmp_path: Path) -> None:
    queued = []

    async def serve(recv, send: grpc.StreamSender) -> None:
        await recv()  # one request starts the flood
        for number in range(1000):  # far more than any bound lets through unread
            reserved = await send.reserve(MIB)
            send(pb.FetchReply(request_id=number, partitions=[
                pb.FetchedPartition(records=b"x" * MIB)]), size=MIB, reserved=reserved)
            queued.append(number)

    mapping = {BROKER.fetch.path: grpc.stream_handler(serve, pb.FetchRequest, pb.FetchReply)}
    address = grpc.Address(path=str(tmp_path / "s.sock"))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(grpc.serve, mapping, address)
        channel = grpc.Channel(address)
        async with channel.open_stream(BROKER.fetch) as stream:
            stream.send(pb.FetchRequest(request_id=1))
            await trio.sleep(2)  # nobody reads: the server must stop well short of 1000
            held = len(queued)
            # The sender's bound, what the receiver may buffer, and HTTP/2 windows.
            limit = grpc.MAX_OUTGOING_BYTES // MIB + grpc.MAX_INCOMING_MESSAGES + 16
            assert 0 < held <= limit, held
            with trio.fail_after(30):
                for _ in range(200):
                    assert await stream.recv() is not None
            assert len(queued) > held  # reading made room again
        channel.close()
        nursery.cancel_scope.cancel()


async def test_a_stream_owner_cancelled_leaves_no_task(tmp_path: Path) -> None:
    started = trio.Event()

    async def serve(recv, send) -> None:
        started.set()
        while await recv() is not None:
            send(pb.FetchReply())

    mapping = {BROKER.fetch.path: grpc.stream_handler(serve, pb.FetchRequest, pb.FetchReply)}
    address = grpc.Address(path=str(tmp_path / "s.sock"))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(grpc.serve, mapping, address)
        from kelp.process import count_tasks

        baseline = count_tasks()
        channel = grpc.Channel(address)
        with trio.move_on_after(0.5):
            async with channel.open_stream(BROKER.fetch) as stream:
                stream.send(pb.FetchRequest(request_id=1))
                assert await stream.recv() is not None
                await trio.sleep_forever()  # cancelled by the deadline, mid-stream
        channel.close()
        with trio.fail_after(5):
            while count_tasks() > baseline:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
