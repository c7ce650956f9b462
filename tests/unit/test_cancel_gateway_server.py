"""gateway.server's connections cancelled at every checkpoint give back every pool byte.

A real ``KafkaServer`` serves a real loopback TCP connection with the real handlers and the
real byte pools; only the broker behind it is a stand-in (it answers appends and fetches after
a few checkpoints, as a remote broker would, and counts the fetches it is serving). The client
sends a large produce (its frame reserves request-pool bytes while it arrives and until it is
answered) and a fetch (granted fetch-pool bytes until its response is written). The
connection is cancelled after each of its steps in turn — its read loop, its writer and its
request tasks all count — and then nothing may be held: no pool bytes, no request in flight,
no fetch at the broker, no task.
"""

from __future__ import annotations

import datetime
import struct

import trio
import trio.testing
from kio.schema.fetch.v4.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.produce.v3.request import PartitionProduceData, ProduceRequest, TopicProduceData

from gateway.context import GatewayConfig, GatewayContext
from gateway.memory import LARGE_FRAME_BYTES
from gateway.server import KafkaServer
from kelp.process import count_tasks
from kelp.rpc.broker import v1 as pb
from tests.batches import make_batch
from tests.kafka_raw import encode_request
from tests.unit.cancel_points import MAX_POINTS, run_cancelled_at, settle

BIG_RECORDS = make_batch([(None, bytes(2 * LARGE_FRAME_BYTES))])
FETCHED = make_batch([(b"k", b"v")])


class _Answer:
    def __init__(self, reply: pb.AppendReply) -> None:
        self.reply = reply

    async def wait(self) -> pb.AppendReply:
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        return self.reply


class FakeBroker:
    """The broker as the handlers see it, answering after a few checkpoints."""

    def __init__(self) -> None:
        self.fetching = 0
        self.fetches_answered = 0
        self.park_fetches = False
        self.reads_files = False  # as BrokerClient: records come as bytes, not file ranges

    def append_writable(self) -> bool:
        return False  # so every produce goes through the wait (and its client watcher)

    async def wait_append_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    def submit_append(self, topic: str, partition: int, records: bytes,
                      acks: int) -> _Answer | None:
        reply = pb.AppendReply(base_offset=0, log_append_time=-1, log_start_offset=0)
        return None if acks == 0 else _Answer(reply)

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchReply:
        self.fetching += 1
        try:
            for _ in range(3):
                await trio.lowlevel.checkpoint()
            if self.park_fetches:
                await trio.sleep_forever()
            self.fetches_answered += 1
            return pb.FetchReply(request_id=request.request_id, partitions=[
                pb.FetchedPartition(topic=p.topic, partition=p.partition, high_watermark=1,
                                    records=FETCHED) for p in request.partitions])
        finally:
            self.fetching -= 1


def produce_frame(correlation_id: int) -> bytes:
    return encode_request(ProduceRequest(
        transactional_id=None, acks=1, timeout=datetime.timedelta(seconds=5),
        topic_data=(TopicProduceData(name="t", partition_data=(
            PartitionProduceData(index=0, records=BIG_RECORDS),)),)), correlation_id)


def fetch_frame(correlation_id: int) -> bytes:
    return encode_request(FetchRequest(
        replica_id=-1, max_wait=datetime.timedelta(milliseconds=100), min_bytes=1,
        max_bytes=1 << 20, isolation_level=0, topics=(FetchTopic(topic="t", partitions=(
            FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20),)),)),
        correlation_id)


async def run_client(port: int, frames: list[bytes], answers: list[int]) -> None:
    """Send ``frames`` while reading answers (their correlation ids); close after the last
    one, or when the gateway closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)

    async def send() -> None:
        for frame in frames:
            for start in range(0, len(frame), 256 * 1024):  # as a client's socket would
                await stream.send_all(frame[start:start + 256 * 1024])

    buffer = bytearray()
    async with stream:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while len(answers) < len(frames):
                    data = await stream.receive_some(65536)
                    if not data:
                        nursery.cancel_scope.cancel()
                        return
                    buffer += data
                    while len(buffer) >= 8 and len(buffer) >= 4 + struct.unpack_from(
                            ">i", buffer)[0]:
                        size = struct.unpack_from(">i", buffer)[0]
                        answers.append(struct.unpack_from(">i", buffer, 4)[0])
                        del buffer[:4 + size]
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the gateway closed the connection under us


class Gateway:
    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.broker = FakeBroker()
        self.ctx = GatewayContext(config or GatewayConfig(), self.broker)  # type: ignore[arg-type]
        self.server = KafkaServer(self.ctx)

    def assert_idle(self, baseline_tasks: int) -> None:
        ctx, server = self.ctx, self.server
        assert ctx.request_pool.used == 0, ctx.request_pool.used
        assert ctx.fetch_pool.used == 0, ctx.fetch_pool.used
        assert server.connections == 0 and server.inflight == 0
        assert self.broker.fetching == 0
        assert count_tasks() == baseline_tasks


async def serve_one_connection(gateway: Gateway, listener: trio.SocketListener, point: int,
                               frames: list[bytes], answers: list[int]) -> bool:
    """One client connection, its gateway side cancelled at ``point``; True if it was served
    to the end uncancelled."""
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_client, port, frames, answers)
        stream = await listener.accept()
        completed, outcome = await run_cancelled_at(
            point, lambda: gateway.server.handle_connection(stream), subtree=True)
        assert outcome is None
    return completed


async def test_a_connection_cancelled_at_every_point_gives_back_its_pool_bytes() -> None:
    gateway = Gateway()
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    frames = [produce_frame(1), fetch_frame(2)]
    async with listener:
        await settle()
        baseline = count_tasks()
        reserved_seen = granted_seen = 0
        pools = (gateway.ctx.request_pool, gateway.ctx.fetch_pool)
        for point in range(MAX_POINTS):
            answers: list[int] = []
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    # High-water marks: the cancellations must have hit while bytes were held.
                    async def watch() -> None:
                        nonlocal reserved_seen, granted_seen
                        while True:
                            reserved_seen = max(reserved_seen, pools[0].used)
                            granted_seen = max(granted_seen, pools[1].used)
                            await trio.sleep(0)

                    nursery.start_soon(watch)
                    completed = await serve_one_connection(gateway, listener, point, frames,
                                                           answers)
                    nursery.cancel_scope.cancel()
            await settle()
            gateway.assert_idle(baseline)
            if completed:
                assert answers == [1, 2]
                break
        else:
            raise AssertionError("the connection never completed")
    assert point > 20  # the connection really was cancelled all along its way
    assert reserved_seen >= len(BIG_RECORDS) and granted_seen > 0
    assert gateway.broker.fetches_answered >= 1


async def test_a_client_gone_mid_frame_or_mid_fetch_leaves_nothing_held() -> None:
    gateway = Gateway()
    gateway.broker.park_fetches = True
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, trio.open_nursery() as nursery:
        await settle()
        baseline = count_tasks()

        async def serve() -> None:
            stream = await listener.accept()
            await gateway.server.handle_connection(stream)

        # Half of a large frame, then the client goes.
        nursery.start_soon(serve)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(produce_frame(1)[:LARGE_FRAME_BYTES])
        with trio.fail_after(5):
            while gateway.ctx.request_pool.used == 0:
                await trio.sleep(0.01)
        assert gateway.ctx.request_pool.used > LARGE_FRAME_BYTES
        await client.aclose()
        with trio.fail_after(5):
            while gateway.server.connections:
                await trio.sleep(0.01)
        await settle()
        gateway.assert_idle(baseline)

        # A fetch parked at the broker, then the client goes.
        nursery.start_soon(serve)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(fetch_frame(2))
        with trio.fail_after(5):
            while gateway.broker.fetching == 0:
                await trio.sleep(0.01)
        assert gateway.ctx.fetch_pool.used > 0
        await client.aclose()
        with trio.fail_after(5):
            while gateway.server.connections:
                await trio.sleep(0.01)
        await settle()
        gateway.assert_idle(baseline)


async def test_after_cancelled_connections_a_new_one_is_served_whole() -> None:
    gateway = Gateway()
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        for point in (5, 15, 40):
            await serve_one_connection(gateway, listener, point,
                                       [produce_frame(1), fetch_frame(2)], [])
        answers: list[int] = []
        with trio.fail_after(10):
            assert await serve_one_connection(gateway, listener, MAX_POINTS,
                                              [produce_frame(1), fetch_frame(2)], answers)
        assert answers == [1, 2]
        assert gateway.ctx.request_pool.used == gateway.ctx.fetch_pool.used == 0


async def test_a_large_frame_waiting_for_pool_room_takes_nothing_when_it_times_out() -> None:
    """A large frame waits (unread) for room in the gateway-wide request pool; its connection
    reaches the request timeout meanwhile and is closed: the pool holds only what others
    hold, and the next large frame gets room once they give it back."""
    gateway = Gateway(GatewayConfig(queued_max_request_bytes=3 * LARGE_FRAME_BYTES,
                                    request_timeout_ms=300))
    pool = gateway.ctx.request_pool
    others = await pool.reserve(2 * LARGE_FRAME_BYTES)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, trio.open_nursery() as nursery:
        async def serve() -> None:
            stream = await listener.accept()
            await gateway.server.handle_connection(stream)

        nursery.start_soon(serve)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(produce_frame(1)[:64 * 1024])  # the frame's size is known
        with trio.fail_after(5):
            while gateway.server.connections:  # closed after the request timeout
                await trio.sleep(0.01)
        assert gateway.server.timeouts == 1
        assert pool.used == others  # the waiting frame took nothing
        await client.aclose()
    pool.release(others)
    assert pool.used == 0
    answers: list[int] = []
    async with (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] as listener:
        with trio.fail_after(10):
            assert await serve_one_connection(gateway, listener, MAX_POINTS,
                                              [produce_frame(2)], answers)
    assert answers == [2] and pool.used == 0
