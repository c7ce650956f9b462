"""Kafka connections over trio: read, dispatch concurrently, answer in request order.

Each connection owns a nursery with a writer task and one task per in-flight request. The read
loop decodes a request, *calls* its handler (which may queue work synchronously, so order is
kept where it matters) and puts a response slot in a bounded channel; the writer sends slots in
the order they were queued as each completes. The channel's bound is the connection's in-flight
limit: a client that pipelines faster than kelp answers stops being read (backpressure).

A client that disconnects, or breaks the protocol, gets its connection closed and everything it
started cancelled at once.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import inspect
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from kio.schema.errors import ErrorCode

from gateway import access, metrics, quotas
from gateway.broker_client import BrokerUnavailable
from gateway.context import (
    DropConnection,
    GatewayContext,
    current_holds,
    current_output,
    current_peer,
    current_produce_order,
)
from gateway.handlers import HANDLERS, PREPARE
from gateway.handlers import security as security_handlers
from gateway.kafka import apis, messages
from gateway.kafka.connection import KafkaConnection, ProtocolError, Request
from gateway.kafka.fetch_response import frame_size
from gateway.kafka.framing import frame
from gateway.listeners import (
    ANONYMOUS,
    Listener,
    ListenerError,
    PrincipalRules,
    TlsContexts,
    subject_name,
)
from gateway.memory import LARGE_FRAME_BYTES, BytePool, Output
from gateway.produce_order import ProduceOrder
from gateway.sasl import SaslFailed
from gateway.scatter import Buffer, close_files, send_buffers
from gateway.security import Session, current_session
from gateway.security import session as security_session
from kelp.logs import RateLimited

log = logging.getLogger("kelp.gateway.server")
Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]
# A hostile client can send malformed requests as fast as it likes: one line a second at most.
protocol_log = RateLimited(log, interval_s=1.0)
failure_log = RateLimited(log, interval_s=1.0)
timeout_log = RateLimited(log, interval_s=1.0)
accept_log = RateLimited(log, interval_s=1.0)
unavailable_log = RateLimited(log, interval_s=1.0)
tls_log = RateLimited(log, interval_s=1.0)
auth_log = RateLimited(log, interval_s=1.0)

# accept() errors that mean "out of descriptors or memory for now": wait and accept again.
_ACCEPT_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

RECEIVE_SIZE = 256 * 1024
# Requests of one connection are served concurrently (answers still go out in order), except
# these: each starts only once the connection's previous one of them is answered, as Kafka
# serves a connection's requests one at a time. Pipelined commits are then applied in the
# order sent, and an OffsetFetch sees the commits sent before it.
ORDERED = frozenset({apis.ApiKey.OFFSET_COMMIT, apis.ApiKey.OFFSET_FETCH,
                     apis.ApiKey.OFFSET_DELETE, apis.ApiKey.DELETE_GROUPS,
                     apis.ApiKey.SASL_AUTHENTICATE})
# All a connection on a SASL listener may send before it authenticates (or once its session
# has expired, KIP-368); anything else closes it, as Kafka closes it.
BEFORE_AUTHENTICATION = frozenset({apis.ApiKey.API_VERSIONS, apis.ApiKey.SASL_HANDSHAKE,
                                   apis.ApiKey.SASL_AUTHENTICATE})
# Kafka's sasl.server.max.receive.size: the largest frame an unauthenticated client may send,
# so a stranger cannot make the gateway buffer a 100 MiB request.
UNAUTHENTICATED_MAX_FRAME = 512 * 1024
# Byte-rate quotas apply to these (see gateway.quotas).
QUOTA_KEYS = frozenset({apis.ApiKey.PRODUCE, apis.ApiKey.FETCH})
PEER_CHECK_S = 1.0  # how often a connection not being read is checked for its client leaving
MAX_VERSION_KEYS = 10_000  # bounds the versions-seen table however many client ids appear


class _Slot:
    """A response in the making; the writer waits on ``done`` in request order.

    ``holds`` are pool bytes its request took (a large frame's reservation, a fetch's grant):
    given back once the response is written, or when the connection ends.
    """

    __slots__ = ("close_after", "done", "holds", "payload")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.payload: list[Buffer] | None = None  # the framed answer, written in order
        self.holds: list[tuple[BytePool, int]] = []
        self.close_after = False  # close the connection once this answer is written

    def release(self) -> None:
        payload, self.payload = self.payload, None
        if payload is not None:
            close_files(payload)  # a response never written: its segment files
        holds, self.holds = self.holds, []
        for pool, size in holds:
            pool.release(size)


class _Closing(Exception):
    """End this connection quietly (idle, or a request that never finished arriving)."""


class KafkaServer:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.connections = 0
        self.inflight = 0
        self.protocol_errors = 0
        self.throttled = 0
        self.timeouts = 0
        self.tls_failures = 0
        self.authentication_failures = 0
        self.principal_rules = PrincipalRules(ctx.config.ssl_principal_mapping_rules)
        # Kafka's max.connections: past it, new connections wait in the kernel's backlog until
        # one closes, so a flood of connections cannot take every file descriptor.
        self._connection_slots = trio.Semaphore(ctx.config.max_connections)
        # (client id, API) -> the highest version that client used: proves each client runs at
        # its preferred versions (GET /debug/versions on the gateway's HTTP port).
        self.versions_seen: dict[tuple[str, str], int] = {}

    async def serve(self, listener: Listener, tls: TlsContexts | None = None, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections on one Kafka listener until cancelled; reports the bound port."""
        if listener.tls and tls is None:
            raise ValueError(f"listener {listener.name} is {listener.protocol}: it needs TLS "
                             "files")
        sockets = await trio.open_tcp_listeners(listener.port, host=listener.host or None)
        bound = sockets[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            for socket_listener in sockets:
                nursery.start_soon(self._accept, socket_listener, nursery, listener,
                                   tls if listener.tls else None)
            task_status.started(bound)

    async def _accept(self, socket_listener: trio.SocketListener, connections: trio.Nursery,
                      listener: Listener, tls: TlsContexts | None) -> None:
        async with socket_listener:
            while True:
                await self._connection_slots.acquire()
                try:
                    stream = await socket_listener.accept()
                except OSError as exc:
                    self._connection_slots.release()
                    if exc.errno not in _ACCEPT_OUT_OF_RESOURCES:
                        raise
                    accept_log.warning("accept failed, retrying in 0.1 s",
                                       error=errno.errorcode.get(exc.errno or 0, "?"),
                                       connections=self.connections)
                    await trio.sleep(0.1)
                    continue
                except BaseException:
                    self._connection_slots.release()
                    raise
                connections.start_soon(self._own_connection, stream, listener, tls)

    async def _own_connection(self, stream: trio.SocketStream, listener: Listener,
                              tls: TlsContexts | None) -> None:
        try:
            if tls is None:
                await self.handle_connection(stream, listener)
                return
            secured = await self._handshake(stream, tls)
            if secured is not None:
                await self.handle_connection(secured, listener)
        except Exception:
            # A bug must cost this connection only, never the listener and every client.
            log.exception("connection failed", extra={"peer": _peer(stream)})
        finally:
            self._connection_slots.release()

    async def _handshake(self, stream: trio.SocketStream,
                         tls: TlsContexts) -> trio.SSLStream[trio.SocketStream] | None:
        """The TLS handshake, within the request timeout; None (connection closed) if it
        fails: a wrong, expired or unknown client certificate, or a client that is not
        speaking TLS."""
        secured = trio.SSLStream(stream, tls.current(), server_side=True)
        with trio.move_on_after(self.ctx.config.request_timeout_ms / 1000):
            try:
                await secured.do_handshake()
                return secured
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.tls_failures += 1
                tls_log.warning("TLS handshake failed", peer=_peer(stream),
                                error=str(exc.__cause__ or exc)[:200])
        await trio.aclose_forcefully(stream)
        return None

    async def handle_connection(self, stream: Stream,
                                listener: Listener | None = None) -> None:
        peer = _peer(stream)
        host = peer.rsplit(":", 1)[0]
        current_peer.set(host)  # inherited by every task of this connection
        session = Session(listener, host, authenticated=not (listener and listener.sasl))
        if isinstance(stream, trio.SSLStream) and not session.sasl:
            session.principal = self._certificate_principal(stream)
        current_session.set(session)  # one object: the SASL handlers change it in place
        output = Output()
        current_output.set(output)
        current_produce_order.set(ProduceOrder())
        self.connections += 1
        kafka = KafkaConnection(self.ctx.config.max_request_bytes)
        live: set[_Slot] = set()  # slots whose holds are not given back yet
        try:
            async with stream, trio.open_nursery() as nursery:
                slots_in, slots_out = trio.open_memory_channel[_Slot](
                    self.ctx.config.max_inflight_requests)
                nursery.start_soon(self._write_responses, stream, slots_out, output, live)
                try:
                    await self._read_requests(stream, kafka, slots_in, nursery, peer, live)
                finally:
                    # Disconnect or protocol error: nothing this connection started outlives it.
                    nursery.cancel_scope.cancel()
        except* _Closing:
            pass
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away (the nursery hands these over in an ExceptionGroup)
        except* Exception:
            # A bug must cost this connection only, never the listener and every client.
            log.exception("connection failed", extra={"peer": peer})
        finally:
            for slot in live:
                slot.release()
            self.connections -= 1

    async def _receive(self, stream: Stream, kafka: KafkaConnection,
                       budget: _Budget, reserved: list[int], peer: str) -> bytes:
        """The next bytes from the client, once this connection may be read.

        Not read while throttled, over its in-flight budget, or while a large request waits
        for room in the gateway-wide request pool. A request must arrive whole within the
        request timeout; a connection with nothing arriving is closed after the idle timeout.
        """
        config = self.ctx.config
        partial = kafka.buffered > 0
        timeout_s = (config.request_timeout_ms if partial
                     else config.connections_max_idle_ms) / 1000
        pending = kafka.pending_frame_size()
        needs_room = pending is not None and pending > LARGE_FRAME_BYTES and not reserved

        async def wait_for_turn() -> None:
            await budget.wait_until_muted_ends()
            await budget.wait_for_room()
            if needs_room:
                assert pending is not None
                reserved.append(await self.ctx.request_pool.reserve(pending))

        with trio.move_on_after(timeout_s) as waiting:
            if needs_room or budget.must_wait():
                await self._while_connected(stream, wait_for_turn)
            data = await stream.receive_some(RECEIVE_SIZE)
        if waiting.cancelled_caught:
            self.timeouts += 1
            timeout_log.warning(
                "closing connection: " + ("request not received whole within the request "
                                          "timeout" if partial else "idle"),
                peer=peer, timeout_ms=int(timeout_s * 1000), buffered=kafka.buffered)
            raise _Closing
        return data

    async def _read_requests(self, stream: Stream, kafka: KafkaConnection,
                             slots: trio.MemorySendChannel[_Slot], nursery: trio.Nursery,
                             peer: str, live: set[_Slot]) -> None:
        budget = _Budget(self.ctx.config.max_inflight_bytes)
        reserved: list[int] = []  # request-pool bytes taken for the large frame arriving
        try:
            await self._serve_requests(stream, kafka, slots, nursery, peer, live, budget,
                                       reserved)
        finally:
            self.ctx.request_pool.release(sum(reserved))

    async def _serve_requests(self, stream: Stream, kafka: KafkaConnection,
                              slots: trio.MemorySendChannel[_Slot], nursery: trio.Nursery,
                              peer: str, live: set[_Slot], budget: _Budget,
                              reserved: list[int]) -> None:
        last_ordered: trio.Event | None = None  # done when the last ORDERED request is
        session = security_session()
        while True:
            data = await self._receive(stream, kafka, budget, reserved, peer)
            if not data:
                return
            kafka.receive_data(data)
            while True:
                kafka.max_frame_size = (self.ctx.config.max_request_bytes
                                        if session.authenticated else UNAUTHENTICATED_MAX_FRAME)
                if session.raw_tokens:  # after SaslHandshake v0: a bare SASL token
                    token = kafka.next_frame()
                    if token is None:
                        break
                    slot = _Slot()
                    live.add(slot)
                    await self._raw_token(token, slot)  # inline: it decides the next frame
                    await slots.send(slot)
                    continue
                try:
                    request = kafka.next_request()
                except ProtocolError as exc:
                    self.protocol_errors += 1
                    protocol_log.warning(
                        "closing connection: protocol error", peer=peer,
                        api=apis.api_name(exc.api_key) if exc.api_key is not None else "?",
                        version=exc.version if exc.version is not None else "?",
                        error=str(exc)[:300])
                    return
                if request is None:
                    break
                if not self._may_send(session, request, peer):
                    return
                slot = _Slot()
                live.add(slot)
                if reserved and request.size > LARGE_FRAME_BYTES:
                    # The large frame that arrived holds its reservation until answered.
                    slot.holds.append((self.ctx.request_pool, reserved.pop()))
                refused = (access.refusal(self.ctx.security, request.api_key, request.body)
                           if self.ctx.security.settings.enabled else None)
                handler = HANDLERS[request.api_key] if refused is None else _refusing(refused)
                self._note_version(request)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("request", extra={"peer": peer, "api": apis.api_name(request.api_key),
                                                "version": request.version})
                prepare = PREPARE.get(request.api_key) if refused is None else None
                if prepare is not None and not prepare.ready(self.ctx, request):
                    # Waiting for room (a produce while the broker's backlog is full) means
                    # not reading this connection, so not even noticing it close: bounded.
                    with trio.move_on_after(self.ctx.config.request_timeout_ms / 1000) as wait:
                        await self._while_connected(
                            stream, lambda: prepare.wait(self.ctx, request))  # noqa: B023
                    if wait.cancelled_caught:
                        self.timeouts += 1
                        timeout_log.warning(
                            "closing connection: no room for its request within the request "
                            "timeout", peer=peer, api=apis.api_name(request.api_key),
                            timeout_ms=self.ctx.config.request_timeout_ms)
                        raise _Closing
                current_holds.set(slot.holds)  # the handler's task inherits it (fetch grants)
                pending = handler(self.ctx, request)  # may do its synchronous part right here
                try:
                    await slots.send(slot)
                except BaseException:  # the connection is going: its answer never will
                    if inspect.iscoroutine(pending):
                        pending.close()
                    raise
                budget.take(request.size)
                after = None
                if request.api_key in ORDERED:
                    after, last_ordered = last_ordered, slot.done
                nursery.start_soon(self._complete, kafka, request, pending, slot, peer,
                                   nursery.cancel_scope, budget, after)

    @staticmethod
    async def _while_connected(stream: Stream,
                               wait: Callable[[], Awaitable[None]]) -> None:
        """``await wait()`` while watching the client. A connection that is not being read
        (throttled, over its budget, waiting for pool room or for the broker's backlog) would
        not notice its client leave, and abandoned connections would pile up until their
        timeouts (a flood of them held thousands of sockets). Raises ``_Closing`` if the
        client closes meanwhile."""
        gone = False

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal gone
            try:
                while await _socket(stream).recv(1, socket.MSG_PEEK):
                    await trio.sleep(PEER_CHECK_S)  # bytes wait for us: only an end matters
            except OSError:
                pass  # reset: gone as well
            gone = True
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            await wait()
            nursery.cancel_scope.cancel()
        if gone:
            raise _Closing

    def _may_send(self, session: Session, request: Request, peer: str) -> bool:
        """Whether this request may be served now: on a SASL listener only ApiVersions and
        the SASL APIs until the client authenticates, and again once its session expired."""
        if request.api_key in BEFORE_AUTHENTICATION:
            return True
        if not session.authenticated:
            reason = "request before SASL authentication"
        elif session.expires_at is not None and trio.current_time() > session.expires_at:
            reason = "SASL session expired without re-authentication"
        else:
            return True
        self.authentication_failures += 1
        auth_log.warning("closing connection: " + reason, peer=peer,
                         api=apis.api_name(request.api_key), principal=session.principal)
        return False

    async def _raw_token(self, token: bytes, slot: _Slot) -> None:
        """A SASL token after SaslHandshake v0, answered as a bare length-prefixed token; a
        failure closes the connection (v0 has no way to carry an error)."""
        try:
            reply = await security_handlers.authenticate_step(self.ctx, token)
            slot.payload = [frame(reply)]
        except SaslFailed as exc:
            self.authentication_failures += 1
            auth_log.warning("SASL authentication failed", error=str(exc)[:200])
            slot.close_after = True
        finally:
            slot.done.set()

    def _certificate_principal(self, stream: trio.SSLStream[trio.SocketStream]) -> str:
        """The principal of an SSL listener's client: its certificate's subject mapped by
        ssl.principal.mapping.rules, or ANONYMOUS without a certificate."""
        der = stream.getpeercert(binary_form=True)
        if not der:
            return ANONYMOUS
        try:
            return self.principal_rules.principal(subject_name(der))
        except (ListenerError, ValueError) as exc:
            auth_log.warning("client certificate has no principal", error=str(exc)[:200])
            return ANONYMOUS

    def _note_version(self, request: Request) -> None:
        key = (request.header.client_id or "", apis.api_name(request.api_key))
        if key in self.versions_seen or len(self.versions_seen) < MAX_VERSION_KEYS:
            self.versions_seen[key] = max(self.versions_seen.get(key, -1), request.version)

    async def _complete(self, kafka: KafkaConnection, request: Request, pending: Any,
                        slot: _Slot, peer: str, connection_scope: trio.CancelScope,
                        budget: _Budget, after: trio.Event | None = None) -> None:
        self.inflight += 1
        started = time.perf_counter()
        api = apis.api_name(request.api_key)
        try:
            if after is not None:
                await after.wait()  # the connection's previous ORDERED request is answered
            body = await pending
            metrics.REQUESTS.labels(api).inc()
            metrics.REQUEST_SECONDS.labels(api).observe(time.perf_counter() - started)
            error = getattr(body, "error_code", None)
            if error:
                metrics.REQUEST_ERRORS.labels(api, getattr(error, "name", str(error))).inc()
            encoded = None
            if request.api_key in QUOTA_KEYS and self.ctx.quotas.entries:
                body, delay, encoded = self._apply_quota(kafka, request, body)
                if body is None:  # acks=0: no answer to carry the throttle, mute here
                    budget.mute_for(delay)
            if body is not None:
                slot.payload = encoded or kafka.encode_response_buffers(request, body)
                output = current_output.get()
                if output is not None:
                    output.queued(frame_size(slot.payload))
                throttle = getattr(body, "throttle_time", None)
                if throttle:
                    self.throttled += 1
                    metrics.THROTTLED.labels(api).inc()
                    budget.mute_for(throttle.total_seconds())
        except DropConnection:
            connection_scope.cancel()
        except BrokerUnavailable as exc:
            # Retriable, and the outage is already logged once by the broker client: a short
            # line here, and an error the client retries on.
            unavailable_log.warning("request failed: broker unavailable", peer=peer,
                                    api=apis.api_name(request.api_key), error=str(exc)[:200])
            slot.payload = self._error_payload(kafka, request, exc,
                                               ErrorCode.request_timed_out)
            if slot.payload is None:
                connection_scope.cancel()
        except Exception as exc:
            # A bug here or in the broker, not the client's fault: log it with its traceback
            # (rate-limited) and answer UNKNOWN_SERVER_ERROR, as Kafka does; the connection,
            # the gateway and its other clients carry on.
            failure_log.log(logging.ERROR, "request failed", exc_info=True, peer=peer,
                            api=apis.api_name(request.api_key), version=request.version)
            slot.payload = self._error_payload(kafka, request, exc)
            if slot.payload is None:
                connection_scope.cancel()
        finally:
            self.inflight -= 1
            budget.give_back(request.size)
            if security_session().close_after_answer:
                slot.close_after = True
            slot.done.set()

    def _apply_quota(self, kafka: KafkaConnection, request: Request,
                     body: Any) -> tuple[Any, float, list[Buffer] | None]:
        """Count a produce's request bytes or a fetch's response bytes against the client's
        byte-rate quota; past it, the answer carries the throttle time (a fetch is answered
        empty, as Kafka does, and its bytes are not counted). Returns the answer, the delay,
        and the answer encoded when it already is."""
        client_id = request.header.client_id or ""
        user = security_session().principal.partition(":")[2]
        now = trio.current_time()
        encoded = None
        if request.api_key == apis.ApiKey.PRODUCE:
            delay = self.ctx.quotas.record(quotas.PRODUCE, client_id, request.size, now, user)
        else:
            encoded = kafka.encode_response_buffers(request, body)
            size = frame_size(encoded)
            delay = self.ctx.quotas.record(quotas.FETCH, client_id, size, now, user)
            if delay:
                self.ctx.quotas.record(quotas.FETCH, client_id, -size, now, user)
                body = dataclasses.replace(body, responses=())
        if delay and body is not None:
            encoded = None
            if delay > body.throttle_time.total_seconds():
                body = dataclasses.replace(body, throttle_time=datetime.timedelta(seconds=delay))
        return body, delay, encoded

    @staticmethod
    def _error_payload(kafka: KafkaConnection, request: Request, exc: Exception,
                       code: ErrorCode = ErrorCode.unknown_server_error) -> list[Buffer] | None:
        """``code`` in the request's response type; None if it gets no answer."""
        body = request.body
        if request.api_key == apis.ApiKey.PRODUCE and getattr(body, "acks", None) == 0:
            return None
        try:
            response_type = messages.response_type(request.api_key, request.version)
            return [kafka.encode_response(request, messages.error_response(
                response_type, code, f"kelp: {type(exc).__name__}"))]
        except Exception:
            log.exception("could not build an error response")
            return None

    async def _write_responses(self, stream: Stream,
                               slots: trio.MemoryReceiveChannel[_Slot], output: Output,
                               live: set[_Slot]) -> None:
        async for slot in slots:
            await slot.done.wait()
            if slot.payload is not None:
                await send_buffers(stream, slot.payload)
                output.written(frame_size(slot.payload))
                close_files(slot.payload)
                slot.payload = None
            slot.release()
            live.discard(slot)
            if slot.close_after:
                raise _Closing


def _refusing(code: ErrorCode) -> Callable[[GatewayContext, Request], Awaitable[Any]]:
    """A handler that answers Kafka's authorization error and does nothing else."""
    async def refuse(ctx: GatewayContext, request: Request) -> Any:
        response_type = messages.response_type(request.api_key, request.version)
        return messages.error_response(response_type, code, access.message(code))
    return refuse


class _Budget:
    """A connection's in-flight request bytes, and when it may be read again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.muted_until = 0.0
        self._freed = trio.Event()

    def take(self, size: int) -> None:
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size
        self._freed.set()
        self._freed = trio.Event()

    def must_wait(self) -> bool:
        """Whether the connection may not be read now (throttled or over its budget)."""
        return self.used >= self.limit or self.muted_until > trio.current_time()

    def mute_for(self, seconds: float) -> None:
        self.muted_until = max(self.muted_until, trio.current_time() + seconds)

    async def wait_until_muted_ends(self) -> None:
        if self.muted_until > trio.current_time():
            await trio.sleep_until(self.muted_until)

    async def wait_for_room(self) -> None:
        while self.used >= self.limit:
            await self._freed.wait()


def _socket(stream: Stream) -> trio.socket.SocketType:
    """The TCP socket under a connection (under its TLS layer, if it has one)."""
    if isinstance(stream, trio.SSLStream):
        return stream.transport_stream.socket
    return stream.socket


def _peer(stream: Stream) -> str:
    try:
        host, port = _socket(stream).getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


