"""kelp.httpd against real sockets on 127.0.0.1: urllib for well-behaved clients, raw trio
streams for the misbehaving ones (garbage, huge headers, slow senders, idle keep-alives)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from kelp import httpd
from kelp.httpd import Limits, Request, Response, Route

pytestmark = pytest.mark.timeout(30)


async def echo(request: Request) -> Response:
    return Response.json({"method": request.method, "path": request.path,
                          "query": request.query, "body": len(request.body),
                          "agent": request.headers.get("user-agent", "")})


async def boom(request: Request) -> Response:
    raise RuntimeError("the handler broke")


async def stuck(request: Request) -> Response:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


ROUTES: dict[str, httpd.Handler | Route] = {
    "/echo": echo,
    "/upload": Route(echo, frozenset({"POST"})),
    "/boom": boom,
    "/stuck": stuck,
    "/text": lambda request: _text(),
}


async def _text() -> Response:
    return Response.text("hello\n", headers={"x-kelp": "yes"})


@asynccontextmanager
async def server(limits: Limits | None = None) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(httpd.serve_http, ROUTES, "127.0.0.1", 0,
                                           limits=limits or Limits()))
        yield port
        nursery.cancel_scope.cancel()


def _urlopen(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as reply:
            return reply.status, _lower(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, _lower(err.headers), err.read()


def _lower(headers: object) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}  # type: ignore[attr-defined]


async def get(port: int, target: str, data: bytes | None = None) -> tuple[int, dict, bytes]:
    return await trio.to_thread.run_sync(_urlopen, f"http://127.0.0.1:{port}{target}", data)


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[int, dict, bytes]:
    """One response off a raw stream (``buffer`` carries bytes over between responses)."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed mid-response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    buffer[:] = rest
    while len(buffer) < length:
        buffer += await stream.receive_some(65536)
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(status_line.split()[1]), headers, body


async def raw(port: int, payload: bytes) -> tuple[int, dict, bytes, bytes]:
    """Send ``payload``, read one response, then whatever follows until the server closes."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(payload)
            buffer = bytearray()
            status, headers, body = await read_response(stream, buffer)
            while chunk := await stream.receive_some(65536):
                buffer += chunk
            return status, headers, body, bytes(buffer)


async def test_routes_query_and_json() -> None:
    async with server() as port:
        status, headers, body = await get(port, "/echo?x=1&y=a%20b&empty=")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"method": "GET", "path": "/echo", "body": 0,
                                    "query": {"x": "1", "y": "a b", "empty": ""},
                                    "agent": json.loads(body)["agent"]}
        assert json.loads(body)["agent"].startswith("Python-urllib")
        status, headers, body = await get(port, "/text")
        assert (status, body, headers["x-kelp"]) == (200, b"hello\n", "yes")
        assert headers["content-type"].startswith("text/plain")


async def test_post_body_reaches_the_handler() -> None:
    async with server() as port:
        status, _, body = await get(port, "/upload", data=b"x" * 5000)
        assert status == 200
        assert json.loads(body)["body"] == 5000


async def test_unknown_path_is_404_json() -> None:
    async with server() as port:
        status, _, body = await get(port, "/nope")
        assert status == 404
        assert json.loads(body)["error"] == "no such path: /nope"
        assert "/echo" in json.loads(body)["paths"]


async def test_wrong_method_is_405_with_allow() -> None:
    async with server() as port:
        status, headers, _ = await get(port, "/echo", data=b"{}")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        status, headers, _ = await get(port, "/upload")
        assert status == 405
        assert headers["allow"] == "POST"


async def test_head_sends_length_but_no_body() -> None:
    async with server() as port:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"HEAD /text HTTP/1.1\r\nhost: x\r\n\r\n"
                                      b"GET /text HTTP/1.1\r\nhost: x\r\n\r\n")
                buffer = bytearray()
                while buffer.count(b"\r\n\r\n") < 2 or not buffer.endswith(b"hello\n"):
                    buffer += await stream.receive_some(65536)
                head = buffer[:buffer.index(b"\r\n\r\n") + 4]
                assert b"content-length: 6" in head.lower()
                # The HEAD response has no body: the next bytes are the GET's status line.
                assert buffer[len(head):].startswith(b"HTTP/1.1 200")


async def test_handler_exception_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with server() as port:
        with caplog.at_level(logging.ERROR, logger="kelp.httpd"):
            status, _, body = await get(port, "/boom")
        assert status == 500
        assert json.loads(body) == {"error": "internal error",
                                    "detail": "RuntimeError: the handler broke"}
        assert any("handler failed" in r.message and r.exc_info for r in caplog.records)
        status, _, _ = await get(port, "/echo")  # the server survived
        assert status == 200


async def test_slow_handler_is_cancelled_with_503() -> None:
    async with server(Limits(handler_timeout=0.2)) as port:
        status, _, body = await get(port, "/stuck")
        assert status == 503
        assert "0.2s" in json.loads(body)["error"]


async def test_malformed_request_is_400_and_closes() -> None:
    async with server() as port:
        status, headers, body, rest = await raw(port, b"NONSENSE\r\n\r\n")
        assert status == 400
        assert headers["connection"] == "close"
        assert json.loads(body)["error"].startswith("bad request")
        assert rest == b""


async def test_undecodable_query_is_400() -> None:
    async with server() as port:
        status, _, body, _ = await raw(port, b"GET /echo?x=%ff HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 400
        assert "bad request" in json.loads(body)["error"]


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with server() as port:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                buffer = bytearray()
                for i in range(3):
                    await stream.send_all(f"GET /echo?i={i} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
                    status, headers, body = await read_response(stream, buffer)
                    assert status == 200
                    assert json.loads(body)["query"] == {"i": str(i)}
                    assert headers.get("connection") != "close"
                # Pipelined: two requests in one write, two answers in order.
                await stream.send_all(b"GET /echo?i=a HTTP/1.1\r\nhost: x\r\n\r\n"
                                      b"GET /echo?i=b HTTP/1.1\r\nhost: x\r\n\r\n")
                assert json.loads((await read_response(stream, buffer))[2])["query"]["i"] == "a"
                assert json.loads((await read_response(stream, buffer))[2])["query"]["i"] == "b"


async def test_oversized_headers_are_431() -> None:
    async with server(Limits(max_header_bytes=1024)) as port:
        payload = b"GET /echo HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 4096 + b"\r\n\r\n"
        status, _, body, _ = await raw(port, payload)
        assert status == 431
        assert "1024" in json.loads(body)["error"]
        # The same, trickled in pieces (h11's own incomplete-event bound).
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                try:
                    for start in range(0, len(payload), 512):
                        await stream.send_all(payload[start:start + 512])
                        await trio.sleep(0.001)
                except trio.BrokenResourceError:
                    pass  # the server answered and closed while we were still sending
                status, _, _ = await read_response(stream, bytearray())
                assert status == 431


async def test_oversized_body_is_413() -> None:
    async with server(Limits(max_body_bytes=100)) as port:
        status, _, body = await get(port, "/upload", data=b"x" * 101)
        assert status == 413
        assert "100" in json.loads(body)["error"]
        # Chunked (no declared length): caught while reading.
        payload = (b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"c8\r\n" + b"x" * 200 + b"\r\n0\r\n\r\n")
        status, _, _, _ = await raw(port, payload)
        assert status == 413


async def test_idle_connection_is_closed_quietly() -> None:
    async with server(Limits(read_timeout=0.2)) as port:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                assert await stream.receive_some(100) == b""  # closed, no response


async def test_slow_sender_gets_408() -> None:
    async with server(Limits(read_timeout=0.2)) as port:
        status, _, body, _ = await raw(port, b"GET /echo HTTP/1.1\r\nhost: x\r\n")
        assert status == 408
        assert "0.2s" in json.loads(body)["error"]


async def test_connections_beyond_the_limit_are_refused_with_503() -> None:
    async with server(Limits(max_connections=1)) as port:
        with trio.fail_after(5):
            first = await trio.open_tcp_stream("127.0.0.1", port)
            async with first:
                await first.send_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
                status, _, _ = await read_response(first, bytearray())
                assert status == 200  # the first connection is now established and idle
                status, _, body, _ = await raw(port, b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
                assert status == 503
                assert json.loads(body) == {"error": "too many connections"}


async def test_cancelling_the_server_closes_its_connections() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(httpd.serve_http, ROUTES, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
            await read_response(stream, bytearray())
            nursery.cancel_scope.cancel()
        async with stream:
            assert await stream.receive_some(100) == b""


def test_router_matches_patterns_methods_and_says_what_is_allowed() -> None:
    router: httpd.Router[str] = httpd.Router()
    router.add("GET", "/subjects/*/versions/*", "get-version")
    router.add("DELETE", "/subjects/*/versions/*", "delete-version")
    router.add("GET", "/subjects", "list")
    assert router.match("GET", "/subjects/a%2Fb/versions/3") == ("get-version", ["a/b", "3"])
    assert router.match("HEAD", "/subjects/") == ("list", [])  # HEAD is served by GET
    with pytest.raises(httpd.NoRoute) as not_allowed:
        router.match("POST", "/subjects/s/versions/1")
    assert not_allowed.value.allowed == {"GET", "DELETE"}
    with pytest.raises(httpd.NoRoute) as missing:
        router.match("GET", "/subjects/s/versions")
    assert not missing.value.allowed
