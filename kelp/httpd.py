"""A small HTTP/1.1 server on trio and h11 (the client is ``kelp.http``, on httpx).

Every kelp process answers a little HTTP for people and scripts: health, stats, metrics, the
sidecar's read API, the Schema Registry. This is deliberately not a framework: routes are exact
paths or ``/prefix/*`` mounts (``Router`` routes patterns below a mount), handlers are
``async def handler(request) -> Response``, and everything a client
controls is bounded (header bytes, body bytes, time to send a request, time to take a response,
concurrent connections). h11 does the protocol (a sans-IO state machine); this module only moves
bytes between it and a trio stream.

Every connection task lives in the nursery of :func:`serve_http` (via ``trio.serve_listeners``),
so cancelling the server ends every connection with it.
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import h11
import trio

from kelp.logs import RateLimited

log = logging.getLogger("kelp.httpd")
tls_log = RateLimited(log, interval_s=1.0)

RECEIVE_SIZE = 64 * 1024
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Request:
    """One parsed request. ``path`` is the target's path exactly as sent (not percent-decoded:
    routes match it byte for byte); ``query`` maps each parameter to its *last* value and
    ``query_items`` keeps every pair in order, for handlers that must reject repeats."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    query_items: tuple[tuple[str, str], ...] = ()
    client_host: str = ""  # the peer's address (ACLs name client hosts)


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200, *,
             headers: Mapping[str, str] | None = None) -> Response:
        body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        return cls(status, body, JSON_TYPE, dict(headers or {}))

    @classmethod
    def text(cls, text: str, status: int = 200, *,
             content_type: str = "text/plain; charset=utf-8",
             headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, text.encode(), content_type, dict(headers or {}))

    @classmethod
    def error(cls, status: int, message: str, **details: Any) -> Response:
        """The one error shape every kelp endpoint uses: ``{"error": message, ...details}``."""
        return cls.json({"error": message, **details}, status)

    def json_body(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Request], Awaitable[Response]]
Target = TypeVar("Target")


@dataclass(frozen=True)
class Route:
    """A handler and the methods it accepts. A bare handler in a routes mapping means GET/HEAD."""

    handler: Handler
    methods: frozenset[str] = frozenset({"GET", "HEAD"})


class NoRoute(Exception):
    """No pattern matches the path (``allowed`` empty), or none for this method (``allowed``
    names the methods that would be)."""

    def __init__(self, allowed: frozenset[str] = frozenset()) -> None:
        super().__init__(", ".join(sorted(allowed)) or "not found")
        self.allowed = allowed


class Router(Generic[Target]):
    """Routes a method and a path to a target by pattern: each ``/``-separated segment of a
    pattern matches itself, or any one segment where it is ``*`` (those are returned, decoded,
    as arguments). HEAD is answered by a GET route. An API with many paths under one prefix
    (the Schema Registry) mounts one handler at that prefix and routes with this below it."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, tuple[str, ...], Target]] = []

    def add(self, method: str, pattern: str, target: Target) -> None:
        self._routes.append((method, _segments(pattern), target))

    def match(self, method: str, path: str) -> tuple[Target, list[str]]:
        """The target and the ``*`` segments; raises ``NoRoute``."""
        parts = [urllib.parse.unquote(p) for p in _segments(path)]
        allowed: set[str] = set()
        for want, pattern, target in self._routes:
            if len(pattern) != len(parts) or any(
                    p != "*" and p != part for p, part in zip(pattern, parts, strict=True)):
                continue
            if want == method or (method == "HEAD" and want == "GET"):
                return target, [part for p, part in zip(pattern, parts, strict=True)
                                if p == "*"]
            allowed.add(want)
        raise NoRoute(frozenset(allowed))


def _segments(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.strip("/").split("/") if p)


@dataclass(frozen=True)
class Limits:
    """What one client may cost the server. The defaults suit health and stats endpoints."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    # A whole request must arrive within this long of the connection being ready for it. This
    # is also how long an idle keep-alive connection lives, and it stops slow-loris senders.
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    # A handler that takes longer gets cancelled and the client gets a 503.
    handler_timeout: float = 60.0
    max_connections: int = 256
    # A refused request's body is read and thrown away, up to this many bytes and for up to
    # ``discard_timeout`` seconds, before the connection closes: closing with unread bytes
    # resets the connection, and a client still sending (most do not read before they have
    # sent everything) would then never see the answer. A body declared larger is refused
    # without waiting for it.
    max_discard_bytes: int = 1024 * 1024
    discard_timeout: float = 1.0
    # Builds the answer to a body over ``max_body_bytes`` from a sentence saying so; by default
    # the usual error shape with status 413. An API with its own error shape sets this.
    too_large: Callable[[str], Response] | None = None


class _RequestTooLarge(Exception):
    def __init__(self, message: str, remaining: int | None = None) -> None:
        super().__init__(message)
        self.remaining = remaining  # bytes of the body not yet received, when declared


async def serve_http(
    routes: Mapping[str, Handler | Route],
    host: str,
    port: int,
    *,
    limits: Limits = Limits(),
    ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``host:port`` until cancelled; ``task_status.started(bound_port)``.

    A route path ending in ``/*`` serves every path below it (the handler reads
    ``request.path``); exact paths win over prefixes. With ``ssl_context`` (or a function
    giving the current one, for certificates reloaded while serving) every connection is HTTPS.

    With ``port=0`` the kernel picks the port. When ``host`` resolves to several addresses
    (``localhost`` as ::1 and 127.0.0.1) each listener would get a *different* ephemeral port,
    so then only the first is kept: the reported port must be the one that answers.
    """
    table = {path: r if isinstance(r, Route) else Route(r) for path, r in routes.items()}
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:  # name the address: "address already in use" alone helps nobody
        raise OSError(exc.errno, f"cannot listen for HTTP on {host}:{port}: "
                      f"{exc.strerror or exc}") from exc
    if port == 0:
        for extra in listeners[1:]:
            await extra.aclose()
        del listeners[1:]
    bound = listeners[0].socket.getsockname()[1]
    server = _Server(table, limits, ssl_context)
    # The listeners already queue connections, so reporting the port before accepting is safe.
    task_status.started(bound)
    await trio.serve_listeners(server.handle, listeners)


Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


class _Server:
    def __init__(self, routes: dict[str, Route], limits: Limits,
                 ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None
                 ) -> None:
        self.routes = routes
        self.limits = limits
        self.ssl_context = ssl_context
        # "/a/b/*" routes match any path under /a/b/, longest prefix first.
        self.prefixes = sorted(((p[:-1], r) for p, r in routes.items() if p.endswith("/*")),
                               key=lambda item: -len(item[0]))
        self.connections = 0

    def route_for(self, path: str) -> Route | None:
        route = self.routes.get(path)
        if route is None:
            route = next((r for prefix, r in self.prefixes if path.startswith(prefix)), None)
        return route

    async def handle(self, stream: trio.SocketStream) -> None:
        # trio.serve_listeners lets a handler's exception crash the whole server, so nothing but
        # cancellation may leave this function.
        if self.connections >= self.limits.max_connections:
            await _refuse(stream, self.limits.write_timeout)
            return
        self.connections += 1
        try:
            secured = await self._handshake(stream) if self.ssl_context is not None else stream
            if secured is not None:
                await _Connection(secured, self).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; nothing left to tell it
        except Exception:
            log.exception("http connection failed")
        finally:
            self.connections -= 1


    async def _handshake(self, stream: trio.SocketStream
                         ) -> trio.SSLStream[trio.SocketStream] | None:
        """TLS first, within the read timeout; None (closed) for a client that does not
        finish it: a plaintext client, a stalled one, one that refuses the certificate."""
        context = self.ssl_context
        if callable(context):
            context = context()
        assert context is not None
        secured = trio.SSLStream(stream, context, server_side=True)
        with trio.move_on_after(self.limits.read_timeout):
            try:
                await secured.do_handshake()
                return secured
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                tls_log.warning("https handshake failed", error=str(exc.__cause__ or exc)[:200])
        await trio.aclose_forcefully(stream)
        return None


async def _refuse(stream: trio.SocketStream, timeout: float) -> None:
    """Turn a connection away without reading its request (h11 would need the request first)."""
    body = b'{"error":"too many connections"}\n'
    head = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body))
    with trio.move_on_after(timeout):
        await stream.send_all(head + body)
    await _linger(stream)


async def _linger(stream: Stream, max_bytes: int = 1024 * 1024,
                  timeout: float = 1.0) -> None:
    """Half-close, then drain what the client is still sending, bounded in time and bytes.

    Closing a socket with unread bytes in the kernel makes it send RST, which can destroy a
    response the client has not read yet (a 413 sent mid-upload, a 400 for garbage). This is the
    "lingering close" every HTTP server does.
    """
    if isinstance(stream, trio.SSLStream):  # TLS has no half-close: close_notify, then go
        with trio.move_on_after(timeout), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
        return
    with trio.move_on_after(timeout), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_eof()
        drained = 0
        while drained < max_bytes and (chunk := await stream.receive_some(RECEIVE_SIZE)):
            drained += len(chunk)


class _Connection:
    """One client connection: requests are read and answered one at a time (keep-alive)."""

    def __init__(self, stream: Stream, server: _Server) -> None:
        self.stream = stream
        transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            self.client_host = str(transport.socket.getpeername()[0])
        except OSError:
            self.client_host = ""
        self.server = server
        self.limits = server.limits
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)

    async def run(self) -> None:
        while True:
            request: Request | None = None
            error: Response | None = None
            discard: int | None = None  # bytes of a refused body still to come, if known
            with trio.move_on_after(self.limits.read_timeout) as reading:
                try:
                    request = await self._read_request()
                except h11.RemoteProtocolError as exc:
                    error = Response.error(exc.error_status_hint, f"bad request: {exc}")
                except _RequestTooLarge as exc:
                    error = (self.limits.too_large(str(exc)) if self.limits.too_large
                             else Response.error(413, str(exc)))
                    discard = (exc.remaining if exc.remaining is not None
                               else self.limits.max_discard_bytes)
                except ValueError as exc:  # an undecodable target or query
                    error = Response.error(400, f"bad request: {exc}")
            if reading.cancelled_caught:
                if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
                    return  # an idle keep-alive connection: close quietly
                error = Response.error(
                    408, f"request not received within {self.limits.read_timeout}s")
            if error is not None:
                await self._fail(error, discard)
                return
            if request is None:
                return  # the client closed between requests
            response = await self._dispatch(request)
            await self._send_response(response, head_only=request.method == "HEAD")
            if self.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return  # the exchange cannot continue (e.g. the client is still sending)

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            # b"" at end of stream tells h11 the peer closed.
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    async def _read_request(self) -> Request | None:
        head = await self._next_event()
        if isinstance(head, h11.ConnectionClosed):
            return None
        if not isinstance(head, h11.Request):
            raise h11.RemoteProtocolError(f"unexpected {type(head).__name__}")
        # h11 bounds only a header block that arrives in pieces; one that arrives whole in a
        # single read is parsed whatever its size, so measure it here too.
        size = len(head.method) + len(head.target) + sum(
            len(name) + len(value) + 4 for name, value in head.headers)
        if size > self.limits.max_header_bytes:
            raise h11.RemoteProtocolError(
                f"request head exceeds {self.limits.max_header_bytes} bytes",
                error_status_hint=431)
        declared = _header(head.headers, b"content-length")
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            # Refuse before reading (and before a 100-continue invites the body); what h11
            # has already buffered of it need not come again.
            raise _RequestTooLarge(
                f"body of {int(declared)} bytes exceeds {self.limits.max_body_bytes}",
                remaining=int(declared) - len(self.conn.trailing_data[0]))
        body = bytearray()
        while not isinstance(event := await self._next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    raise _RequestTooLarge(f"body exceeds {self.limits.max_body_bytes} bytes")
        return _parse_request(head, bytes(body), self.client_host)

    async def _dispatch(self, request: Request) -> Response:
        route = self.server.route_for(request.path)
        if route is None:
            return Response.error(404, f"no such path: {request.path}",
                                  paths=sorted(self.server.routes))
        if request.method not in route.methods:
            allowed = ", ".join(sorted(route.methods))
            return Response.json({"error": f"method {request.method} not allowed",
                                  "allowed": sorted(route.methods)}, 405,
                                 headers={"allow": allowed})
        try:
            with trio.move_on_after(self.limits.handler_timeout) as scope:
                response = await route.handler(request)
        except Exception as exc:
            log.exception("http handler failed", extra={"path": request.path})
            return Response.error(500, "internal error", detail=f"{type(exc).__name__}: {exc}")
        if scope.cancelled_caught:
            return Response.error(
                503, f"handler did not answer within {self.limits.handler_timeout}s")
        if not isinstance(response, Response):
            log.error("http handler returned %r", type(response), extra={"path": request.path})
            return Response.error(500, "internal error",
                                  detail=f"handler returned {type(response).__name__}")
        return response

    async def _send_response(self, response: Response, *, head_only: bool = False,
                             close: bool = False) -> None:
        try:
            event = _response_event(response, close=close)
        except h11.LocalProtocolError as exc:  # a handler put something illegal in a header
            log.error("http handler built a bad response: %s", exc)
            event = _response_event(Response.error(500, "internal error"), close=close)
            response = Response()
        with trio.move_on_after(self.limits.write_timeout) as writing:
            await self._send(event)
            if response.body and not head_only:
                await self._send(h11.Data(data=response.body))
            await self._send(h11.EndOfMessage())
        if writing.cancelled_caught:
            raise trio.BrokenResourceError("client did not take the response in time")

    async def _fail(self, response: Response, discard: int | None = None) -> None:
        """Answer a request we could not read, then close without resetting the connection.

        ``discard``: for a refused body, how much of it is still on its way (as declared, else
        ``max_discard_bytes``). A body within ``max_discard_bytes`` is drained whole, so the
        client can read the answer; a larger one, or any other bad request, gets the ordinary
        brief lingering close."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("http request rejected", extra={"status": response.status})
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send_response(response, close=True)
        limits = self.limits
        if discard is not None and discard <= limits.max_discard_bytes:
            await _linger(self.stream, limits.max_discard_bytes, limits.discard_timeout)
        else:
            await _linger(self.stream)

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)


def _header(headers: Any, name: bytes) -> bytes | None:
    """First value of a header in h11's list (names arrive lower-cased)."""
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


def _parse_request(head: h11.Request, body: bytes, client_host: str = "") -> Request:
    """Raises ``ValueError`` (a 400) for a target or query that is not valid text."""
    target = head.target.decode("ascii")
    # Absolute-form targets ("http://host/path") are legal HTTP/1.1; routes see only the path.
    parts = urllib.parse.urlsplit(target)
    query_items = tuple(urllib.parse.parse_qsl(
        parts.query, keep_blank_values=True, errors="strict", max_num_fields=100))
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(method=head.method.decode("ascii"), path=parts.path or "/",
                   query=dict(query_items), headers=headers, body=body,
                   query_items=query_items, client_host=client_host)


def _response_event(response: Response, *, close: bool) -> h11.Response:
    headers = [("content-type", response.content_type),
               ("content-length", str(len(response.body)))]
    headers += [(k, v) for k, v in response.headers.items()
                if k.lower() not in ("content-type", "content-length", "connection")]
    if close:
        headers.append(("connection", "close"))
    try:
        reason = http.HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=response.status, headers=headers, reason=reason)
