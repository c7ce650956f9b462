"""The raw baselines: the same bytes through two trio hops, into a file or out of one.

Produce (``measure``): sender --TCP--> relay --TCP--> sink (writes to a file): what kelp's
client -> gateway -> broker -> segment file path costs with no protocol, no validation and no
framing work at all. Consume (``measure_read``): a reader of a file already in the page cache
--TCP--> relay --TCP--> a receiver that drops the bytes: the segment file -> broker ->
gateway -> client path, the other way round (not at the mercy of disk writeback, which made
the write baseline swing 300-1,500 MB/s between consume runs).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

import trio

CHUNK = 1024 * 1024


async def _sink(stream: trio.SocketStream, path: str, total: int, done: trio.Event) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    received = 0
    try:
        while received < total:
            data = await stream.receive_some(CHUNK)
            if not data:
                break
            os.write(fd, data)
            received += len(data)
    finally:
        os.close(fd)
        done.set()


async def _relay(inbound: trio.SocketStream, outbound_port: int) -> None:
    outbound = await trio.open_tcp_stream("127.0.0.1", outbound_port)
    async with outbound:
        while data := await inbound.receive_some(CHUNK):
            await outbound.send_all(data)


async def measure(total_bytes: int) -> float:
    """Seconds to push ``total_bytes`` through sender -> relay -> sink -> file."""
    done = trio.Event()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sink.bin")
        async with trio.open_nursery() as nursery:
            sink_listeners = await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"),
                lambda s: _sink(s, path, total_bytes, done), 0)
            sink_port = sink_listeners[0].socket.getsockname()[1]
            relay_listeners = await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"),
                lambda s: _relay(s, sink_port), 0)
            relay_port = relay_listeners[0].socket.getsockname()[1]
            payload = os.urandom(CHUNK)
            started = time.perf_counter()
            sender = await trio.open_tcp_stream("127.0.0.1", relay_port)
            async with sender:
                sent = 0
                while sent < total_bytes:
                    piece = payload[: min(CHUNK, total_bytes - sent)]
                    await sender.send_all(piece)
                    sent += len(piece)
                await done.wait()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return elapsed


async def _drain(stream: trio.SocketStream, total: int, done: trio.Event) -> None:
    received = 0
    while received < total:
        data = await stream.receive_some(CHUNK)
        if not data:
            break
        received += len(data)
    done.set()


async def measure_read(total_bytes: int) -> float:
    """Seconds to move ``total_bytes`` of a cached file through reader -> relay -> receiver."""
    done = trio.Event()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "source.bin")
        with open(path, "wb") as source:
            for _ in range(0, total_bytes, CHUNK):
                source.write(os.urandom(CHUNK))
        async with trio.open_nursery() as nursery:
            drain_listeners = await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"),
                lambda s: _drain(s, total_bytes, done), 0)
            drain_port = drain_listeners[0].socket.getsockname()[1]
            relay_listeners = await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"),
                lambda s: _relay(s, drain_port), 0)
            relay_port = relay_listeners[0].socket.getsockname()[1]
            fd = os.open(path, os.O_RDONLY)
            try:
                started = time.perf_counter()
                sender = await trio.open_tcp_stream("127.0.0.1", relay_port)
                async with sender:
                    sent = 0
                    while sent < total_bytes:
                        piece = os.pread(fd, min(CHUNK, total_bytes - sent), sent)
                        await sender.send_all(piece)
                        sent += len(piece)
                    await done.wait()
                elapsed = time.perf_counter() - started
            finally:
                os.close(fd)
            nursery.cancel_scope.cancel()
    return elapsed
