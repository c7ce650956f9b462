"""kelp's HTTP client: a shared pool of keep-alive connections (httpx, on trio via anyio).

A process makes one :class:`Client` and passes it to whatever talks HTTP to other kelp
processes (today: the registry forwarding writes to its leader), so consecutive requests to the
same peer reuse one TCP connection instead of connecting every time. Everything a peer
controls is bounded: the time a whole request may take (one deadline, connecting included),
the size of the body it sends back, and the number of connections the pool keeps.

The server side stays :mod:`kelp.httpd`: hypercorn's trio worker (with Starlette as router) was
measured against it on the registry benchmark and costs ~0.3 ms more per request (lookup p50
~0.55 ms -> ~0.80 ms), see the README's design notes.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import httpx
import trio

# A peer closes a keep-alive connection after it idles for a while (kelp.httpd: 30 s); the pool
# drops its own idle connections sooner, so a request is not sent on one the peer is closing.
KEEPALIVE_EXPIRY_S = 20.0
MAX_CONNECTIONS = 16


@dataclass(frozen=True)
class Reply:
    """A response, read whole. ``headers`` keeps the last value of each (lower-case) name."""

    status: int
    body: bytes
    content_type: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


class HttpClientError(Exception):
    """A request that produced no whole HTTP response; the message says which step failed and
    why."""


class Client:
    """A keep-alive connection pool for requests to any ``host:port``.

    Use as ``async with Client() as client``: leaving the block closes every pooled
    connection, also when the block is cancelled."""

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS,
                 keepalive_expiry: float = KEEPALIVE_EXPIRY_S,
                 tls: ssl.SSLContext | None = None) -> None:
        # With ``tls`` every request is HTTPS, verified with that context (the peers are
        # other kelp gateways serving --http-tls).
        self._scheme = "https" if tls is not None else "http"
        self._http = httpx.AsyncClient(
            verify=tls if tls is not None else True,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections,
                                keepalive_expiry=keepalive_expiry),
            headers={"user-agent": "kelp"},
            # Only loopback peers named by kelp itself: no proxies from the environment, no
            # redirects to somewhere else.
            trust_env=False, follow_redirects=False)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        # Closing sockets does not block; the shield lets it finish when the caller is being
        # cancelled (the usual way out of a server's nursery), the deadline keeps it bounded.
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self._http.aclose()

    async def request(self, host: str, port: int, method: str, target: str = "/", *,
                      body: bytes = b"", headers: Mapping[str, str] | None = None,
                      timeout: float = 5.0, max_body_bytes: int = 1024 * 1024) -> Reply:
        """``method http://host:port/target`` (arguments in :func:`kelp.httpd.http_request`'s
        order), all within ``timeout`` seconds.

        Any status comes back as a :class:`Reply`; a refused connection, a timeout, a body over
        ``max_body_bytes`` or a malformed reply raises :class:`HttpClientError`."""
        url = f"{self._scheme}://{_authority(host, port)}{target}"
        try:
            with trio.fail_after(timeout):
                return await self._exchange(method, url, body, headers or {}, timeout,
                                            max_body_bytes)
        except (trio.TooSlowError, httpx.TimeoutException):
            raise HttpClientError(f"{method} {url}: no response within {timeout}s") from None
        except httpx.ConnectError as exc:
            raise HttpClientError(f"{method} {url}: cannot connect: {_reason(exc)}") from exc
        except httpx.TransportError as exc:
            raise HttpClientError(f"{method} {url}: bad response: {_reason(exc)}") from exc

    async def get(self, host: str, port: int, target: str = "/", *, timeout: float = 5.0,
                  max_body_bytes: int = 1024 * 1024) -> Reply:
        return await self.request(host, port, "GET", target, timeout=timeout,
                                  max_body_bytes=max_body_bytes)

    async def _exchange(self, method: str, url: str, body: bytes,
                        headers: Mapping[str, str], timeout: float,
                        max_body_bytes: int) -> Reply:
        request = self._http.build_request(method, url, content=body, headers=dict(headers),
                                           timeout=timeout)
        response = await self._http.send(request, stream=True)
        try:
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
                raise HttpClientError(f"{method} {url}: bad response: body of {declared} "
                                      f"bytes exceeds {max_body_bytes}")
            received = bytearray()
            # Raw bytes: kelp sends no content-encoding, and decoding one would let a small
            # body grow past the bound after it was checked.
            async for chunk in response.aiter_raw():
                received += chunk
                if len(received) > max_body_bytes:
                    raise HttpClientError(f"{method} {url}: bad response: body exceeds "
                                          f"{max_body_bytes} bytes")
        finally:
            # A body left unread (refused, or the caller cancelled) closes its connection
            # rather than going back to the pool half-read.
            await response.aclose()
        return Reply(response.status_code, bytes(received),
                     response.headers.get("content-type", ""),
                     {name: value for name, value in response.headers.items()})


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    """The innermost reasons ("Connection refused") rather than the wrappers' summaries (httpx
    wraps httpcore's error, which wraps trio's "all attempts to connect failed", which keeps
    each attempt's OSError in a group)."""
    reasons: set[str] = set()
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
        elif isinstance(current, OSError) and current.strerror:
            reasons.add(current.strerror)
        for inner in (current.__cause__, current.__context__):
            if inner is not None:
                pending.append(inner)
    return "; ".join(sorted(reasons)) if reasons else str(exc) or type(exc).__name__
