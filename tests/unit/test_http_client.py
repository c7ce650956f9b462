"""kelp.http.Client against real sockets on 127.0.0.1: a kelp.httpd server for the
well-behaved peer, raw listeners for the silent and the oversized ones."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import h11
import pytest
import trio

from kelp import http, httpd
from kelp.httpd import Limits, Request, Response, Route

pytestmark = pytest.mark.timeout(30)


async def echo(request: Request) -> Response:
    return Response.json({"method": request.method, "path": request.path,
                          "query": request.query, "body": request.body.decode(),
                          "agent": request.headers.get("user-agent", ""),
                          "forwarded": request.headers.get("x-test", "")})


async def big(request: Request) -> Response:
    return Response(200, b"x" * 4096, "application/octet-stream")


ROUTES: dict[str, httpd.Handler | Route] = {
    "/echo/*": Route(echo, frozenset({"GET", "POST", "DELETE"})),
    "/big": big,
}


@asynccontextmanager
async def server(limits: Limits | None = None) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(httpd.serve_http, ROUTES, "127.0.0.1", 0,
                                           limits=limits or Limits()))
        yield port
        nursery.cancel_scope.cancel()


async def test_requests_reuse_one_connection() -> None:
    """A peer that numbers its connections: every answer must come from the first one."""
    accepted = 0

    async def numbered(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        number = accepted
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.EndOfMessage):
                body = str(number).encode()
                await stream.send_all(conn.send(h11.Response(
                    status_code=200, headers=[("content-length", str(len(body)))]))
                    + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, numbered, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with http.Client() as client:
            for i in range(5):
                reply = await client.request("127.0.0.1", port, "POST", f"/x?i={i}",
                                             body=b"hello")
                assert (reply.status, reply.body) == (200, b"1")
        nursery.cancel_scope.cancel()
    assert accepted == 1


async def test_request_reaches_the_server_whole() -> None:
    async with server() as port, http.Client() as client:
        reply = await client.request("127.0.0.1", port, "POST", "/echo/x?i=1",
                                     body=b"hello", headers={"x-test": "1"})
        assert reply.status == 200
        assert json.loads(reply.body) == {
            "method": "POST", "path": "/echo/x", "query": {"i": "1"},
            "body": "hello", "agent": "kelp", "forwarded": "1"}
        assert reply.content_type == "application/json"


async def test_path_is_sent_as_given() -> None:
    # The registry forwards a request's path unchanged: percent-escapes must survive.
    async with server() as port, http.Client() as client:
        reply = await client.get("127.0.0.1", port, "/echo/a%2Fb%20c")
        assert json.loads(reply.body)["path"] == "/echo/a%2Fb%20c"
        reply = await client.request("127.0.0.1", port, "DELETE", "/echo/x")
        assert json.loads(reply.body)["method"] == "DELETE"


async def test_error_status_is_a_reply() -> None:
    async with server() as port, http.Client() as client:
        reply = await client.get("127.0.0.1", port, "/nope")
        assert reply.status == 404
        assert json.loads(reply.body)["error"] == "no such path: /nope"


async def test_refused_connection_names_the_reason() -> None:
    async with server() as port:
        pass  # the port is now closed
    async with http.Client() as client:
        with pytest.raises(http.HttpClientError, match=r"cannot connect: .*refused"):
            await client.get("127.0.0.1", port, "/echo/x")


async def test_silent_peer_times_out_and_the_pool_stays_usable() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    silent_port = listeners[0].socket.getsockname()[1]
    async with listeners[0], server() as port, http.Client() as client:
        with pytest.raises(http.HttpClientError, match=r"no response within 0.2s"):
            await client.get("127.0.0.1", silent_port, "/x", timeout=0.2)
        assert (await client.get("127.0.0.1", port, "/echo/x")).status == 200


async def test_body_over_the_limit_is_refused() -> None:
    async with server() as port, http.Client() as client:
        with pytest.raises(http.HttpClientError, match=r"body of 4096 bytes exceeds 100"):
            await client.get("127.0.0.1", port, "/big", max_body_bytes=100)
        # The refused body's connection is not reused half-read: the next request is whole.
        reply = await client.get("127.0.0.1", port, "/big")
        assert reply.body == b"x" * 4096


async def test_undeclared_body_over_the_limit_is_refused() -> None:
    """A peer that streams without a content-length is stopped once it passes the bound."""

    async def endless(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        with trio.move_on_after(5):
            while True:
                await stream.send_all(b"400\r\n" + b"y" * 1024 + b"\r\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, endless, 0)
        port = listeners[0].socket.getsockname()[1]
        async with http.Client() as client:
            with pytest.raises(http.HttpClientError, match=r"body exceeds 10000 bytes"):
                await client.get("127.0.0.1", port, "/", max_body_bytes=10_000)
        nursery.cancel_scope.cancel()


async def test_cancelled_request_and_close_under_cancellation() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    silent_port = listeners[0].socket.getsockname()[1]
    async with listeners[0], server() as port:
        client = http.Client()
        with trio.move_on_after(0.2) as scope:
            await client.get("127.0.0.1", silent_port, "/x", timeout=10)
        assert scope.cancelled_caught
        assert (await client.get("127.0.0.1", port, "/echo/x")).status == 200
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            await client.aclose()  # shielded: closes even though its caller is cancelled
        with pytest.raises(RuntimeError):
            await client.get("127.0.0.1", port, "/echo/x")  # closed for good
