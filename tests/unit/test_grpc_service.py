"""kelp.grpc's adapter serves generated service bases with trio methods, and refuses gaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio

from kelp import grpc
from kelp.address import format_host_port, parse_host_port
from kelp.routes import BROKER, SIDECAR
from kelp.rpc.sidecar import v1 as pb


class Complete(pb.SidecarBase):
    """Every Sidecar method, as trio functions (a toy: echoes and counters)."""

    def __init__(self) -> None:
        self.connections: list[Any] = []

    async def health(self, request: pb.HealthRequest) -> pb.HealthReply:
        await trio.sleep(0)  # really in trio
        return pb.HealthReply(status="ok")

    async def stats(self, request: pb.StatsRequest) -> pb.StatsReply:
        return pb.StatsReply(uptime_ms=1)

    async def capabilities(self, request: pb.CapabilitiesRequest) -> pb.CapabilitiesReply:
        return pb.CapabilitiesReply(buffers=2)

    @grpc.per_connection
    async def read(self, request: pb.ReadRequest, *, connection: Any) -> pb.ReadReply:
        self.connections.append(connection)
        return pb.ReadReply(status=200, data=request.file_id.encode())

    @grpc.per_connection
    async def read_stream(self, recv: Any, send: grpc.StreamSender, *, connection: Any
                          ) -> None:
        while (request := await recv()) is not None:
            send(pb.ReadReply(request_id=request.request_id, status=200))

    async def release(self, request: pb.ReleaseRequest) -> pb.ReleaseReply:
        return pb.ReleaseReply(released=True)

    async def stat(self, request: pb.StatRequest) -> pb.StatReply:
        return pb.StatReply(status=200, size=len(request.file_id))


def test_a_method_left_to_the_generated_base_stops_the_start() -> None:
    class Forgetful(Complete):
        stat = pb.SidecarBase.stat  # as if never written

    with pytest.raises(TypeError, match=r"does not implement SidecarBase\.stat"):
        grpc.service_mapping(Forgetful())


def test_a_misspelt_method_stops_the_start() -> None:
    class Misspelt(pb.SidecarBase):
        async def helth(self, request: pb.HealthRequest) -> pb.HealthReply:
            return pb.HealthReply()

    with pytest.raises(TypeError, match="health") as caught:
        grpc.service_mapping(Misspelt())
    assert "read_stream" in str(caught.value)  # every missing method is named at once


def test_on_unsent_on_a_stream_method_stops_the_start() -> None:
    class Confused(Complete):
        @grpc.on_unsent("give_back")
        @grpc.per_connection
        async def read_stream(self, recv: Any, send: grpc.StreamSender, *, connection: Any
                              ) -> None:
            return None

        def give_back(self, reply: Any, connection: Any) -> None:
            pass

    with pytest.raises(TypeError, match="on_unsent applies to unary methods only"):
        grpc.service_mapping(Confused())


def test_routes_come_from_the_generated_code() -> None:
    assert {route.path for route in SIDECAR} == set(pb.SidecarBase().__mapping__())
    assert BROKER.open_read.path.endswith("/OpenRead")
    assert SIDECAR.read_stream.request_type is pb.ReadRequest
    with pytest.raises(AttributeError, match="did you mean 'read_stream'"):
        SIDECAR.read_steam  # noqa: B018


async def test_unary_and_stream_methods_are_served_from_trio(tmp_path: Path) -> None:
    service = Complete()
    address = grpc.Address(path=str(tmp_path / "s.sock"))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(grpc.serve, grpc.service_mapping(service), address)
        first, second = grpc.Channel(address), grpc.Channel(address)
        try:
            assert (await first.call(SIDECAR.health, pb.HealthRequest())).status == "ok"
            assert (await first.call(SIDECAR.stat, pb.StatRequest(file_id="abc"))).size == 3
            for channel in (first, first, second):
                reply = await channel.call(SIDECAR.read, pb.ReadRequest(file_id="7,1"))
                assert reply.data == b"7,1"
            # One connection per channel, the same for every call on it.
            a, b, c = service.connections
            assert a is b and a is not c
            async with first.open_stream(SIDECAR.read_stream) as stream:
                for request_id in (1, 2, 3):
                    stream.send(pb.ReadRequest(request_id=request_id))
                assert [(await stream.recv()).request_id for _ in range(3)] == [1, 2, 3]
        finally:
            first.close()
            second.close()
            nursery.cancel_scope.cancel()


class Slow(Complete):
    """A Stats that never answers, and notes when it is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.started = trio.Event()
        self.cancelled = trio.Event()

    async def stats(self, request: pb.StatsRequest) -> pb.StatsReply:
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")


async def test_a_call_past_its_timeout_fails_and_cancels_the_handler(tmp_path: Path) -> None:
    service = Slow()
    address = grpc.Address(path=str(tmp_path / "s.sock"))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(grpc.serve, grpc.service_mapping(service), address)
        channel = grpc.Channel(address)
        try:
            with pytest.raises(TimeoutError, match=r"no answer within 0\.3 s"):
                await channel.call(SIDECAR.stats, pb.StatsRequest(), timeout=0.3)
            assert service.started.is_set()
            with trio.fail_after(5):  # the stream was reset: the handler does not linger
                await service.cancelled.wait()
            # The channel still serves the next call.
            assert (await channel.call(SIDECAR.health, pb.HealthRequest())).status == "ok"
        finally:
            channel.close()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9092", ("127.0.0.1", 9092)),
    ("localhost:0", ("localhost", 0)),
    (":8082", ("127.0.0.1", 8082)),
    ("[::1]:17777", ("::1", 17777)),
    ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
])
def test_host_port_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected
    assert parse_host_port(format_host_port(*expected)) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("9092", "expected HOST:PORT"),
    ("host:", "expected HOST:PORT"),
    ("host:port", "expected HOST:PORT"),
    ("host:-1", "expected HOST:PORT"),
    ("host:65536", "out of range"),
    ("::1:9092", "needs brackets"),
    ("[::1:9092", "unbalanced"),
    ("[]:9092", "unbalanced"),
])
def test_host_port_refuses_with_the_text(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        parse_host_port(text)
    assert repr(text) in str(caught.value)


def test_grpc_addresses_take_unix_paths_and_host_ports() -> None:
    assert grpc.Address.parse("unix:/run/s.sock").path == "/run/s.sock"
    assert str(grpc.Address.parse("[::1]:80")) == "[::1]:80"
    with pytest.raises(ValueError, match="unix:/path"):
        grpc.Address.parse("nonsense")


async def test_a_follower_falls_back_to_unary_fetches_where_no_stream_is_served(
        tmp_path: Path) -> None:
    """A leader without ReplicaFetchStream (here: a server with only the Sidecar service, as
    an older kelp would be) ends the stream at once, every time; the link then leaves the
    stream for a while and its fetches say None (the caller's cue for the unary call)
    instead of failing."""
    from broker.replica_links import LeaderLink
    from kelp.rpc.broker import v1 as broker_pb

    address = grpc.Address(path=str(tmp_path / "s.sock"))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(grpc.serve, grpc.service_mapping(Complete()), address)
        channel = grpc.Channel(address)
        try:
            link = LeaderLink(channel, "old-leader")
            nursery.start_soon(link.run)
            with trio.fail_after(5):
                while not link.unsupported:
                    await trio.sleep(0.01)
            assert await link.fetch(broker_pb.ReplicaFetchRequest(), timeout=1) is None
        finally:
            channel.close()
            nursery.cancel_scope.cancel()
