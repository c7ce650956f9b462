"""The sidecar's data path: read one chunk's bytes into a lent shared-memory buffer.

A read names a chunk by its SeaweedFS file id (from the broker's segment listing) and a range
of it. The UCX path asks the broker for a *session* on the chunk (``OpenRead``: the segment's
registered mapping, its packed rkey and the chunk's place in it, under a lease), then GETs the
range one-sidedly into a slot of the buffer pool. Sessions are cached until shortly before
their lease ends; endpoints (one per broker UCX address) are pooled and closed when idle.

If UCX is disabled or unavailable, or a UCX read fails, the broker copies the same range
(``ReadChunk``, gRPC: the *fallback*, reported as transport "http", the name clients know it
by). A read that fails both ways reports both causes. Either way the bytes
land in a pool slot: the HTTP API copies them out, the gRPC API can lend the slot itself
(zero copy: a file under /dev/shm the consumer maps) until the consumer releases it.

Every check that can refuse a read happens before UCX is asked to move a byte: UCX itself
checks no bounds, so a GET past a region reads whatever is mapped there.

Who may hold which slot, for how long, and what comes back when a read is cancelled is
:mod:`rdma.pool`'s business: nothing here gives a resource back with an ``await``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from kelp import fileid, grpc
from kelp.address import parse_host_port
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as broker_pb
from rdma.pool import Account, BufferPool, Loan, Slot

if TYPE_CHECKING:
    from rdma.brokers import Brokers

log = logging.getLogger("kelp.sidecar")


class ReadFailed(Exception):
    """A read that could not be served; ``status`` is HTTP's (the gRPC reply carries it too)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ReaderConfig:
    broker: str = "127.0.0.1:17777"
    broker_http_host: str = "127.0.0.1"
    broker_http_port: int = 8082
    broker_token: str | None = None  # the cluster token, when the broker requires one
    ucx: bool = True
    ucx_transports: str | None = None  # UCX_TLS, e.g. "sm,cma,tcp"; None: UCX's choice
    fallback: bool = True
    buffers: int = 8
    buffer_bytes: int = 16 * 1024 * 1024
    max_concurrent: int = 32
    session_ms: int = 30_000  # below the broker's lease (60 s by default)
    endpoint_idle_ms: int = 60_000
    lend_ms: int = 30_000  # a zero-copy buffer not released by then is taken back
    timeout_ms: int = 10_000
    client_buffers: int | None = None  # one client's share of the pool; None: half of it
    http_reserve: int | None = None  # buffers only HTTP /read may take; None: 1 (0 if 1 buffer)


@dataclass
class Session:
    """A chunk the broker has leased to us: where it is and how to reach it."""

    lease_id: int
    broker: grpc.Channel  # the broker that granted the lease (where it is closed)
    endpoint: Any
    key: Any  # rdma.ucx.RemoteKey of the segment's mapping
    chunk_position: int
    chunk_length: int
    expires: float
    in_use: int = 0  # GETs UCX has not finished: the key must outlive them
    abandoned_at: float | None = None  # a GET's reader stopped waiting before UCX finished
    inline: bool = True  # GETs finish during the call (cma, shared memory): see fetch_now


class _GetInto:
    """One GET into a pool slot: it keeps the session's key alive (``in_use``) and the slot
    out of the pool (``ucx_pending``) until UCX settles it, even after its reader has
    stopped waiting."""

    __slots__ = ("pending", "pool", "session", "slot")

    def __init__(self, pool: BufferPool, session: Session, slot: Slot) -> None:
        self.pool, self.session, self.slot = pool, session, slot
        self.pending = True
        session.in_use += 1
        pool.ucx_begin(slot)

    def settled(self) -> None:
        """UCX is done with the slot and the key (called once, maybe after the read ended)."""
        if self.pending:
            self.pending = False
            self.session.in_use -= 1
            if not self.session.in_use:
                self.session.abandoned_at = None
            self.pool.ucx_settled(self.slot)

    def abandon(self) -> None:
        """Its reader stops waiting with UCX still at work: when, for the stuck-GET check."""
        if self.pending and self.session.abandoned_at is None:
            self.session.abandoned_at = trio.current_time()


@dataclass
class _Peer:
    endpoint: Any
    last_used: float
    sessions: dict[str, Session] = field(default_factory=dict)


@dataclass
class Fetched:
    """A served read: the bytes (copied out of the slot) or the loan of the slot itself."""

    transport: str  # "ucx" or "http"
    data: bytes = b""
    loan: Loan | None = None


@functools.lru_cache(maxsize=4096)  # a reader asks for the same few chunks again and again
def _file_id_problem(file_id: str) -> str | None:
    """Why ``file_id`` is not a file id, or None."""
    try:
        fileid.parse(file_id)
    except fileid.FileIdError as exc:
        return str(exc)
    return None


MAX_LEASES_TO_CLOSE = 1024
# Reads up to this size try fetch_now: a small read's time is mostly its trips round the
# scheduler; a big one's is its copy, and one that does not finish inline would be read twice.
INLINE_READ_MAX = 256 * 1024
LOAN_CHECK_S = 0.2  # how often loans are checked for their deadline and their owner's end
IDLE_LOAN_CHECK_S = 1.0  # how often clients with nothing lent are checked for their end


class Reader:
    def __init__(self, config: ReaderConfig, brokers: Brokers | None = None) -> None:
        self.config = config
        # In a cluster, the broker each file id names (rdma.brokers); else ``broker`` only.
        self.brokers = brokers
        self.pool = BufferPool(config.buffers, config.buffer_bytes,
                               share=config.client_buffers, reserve=config.http_reserve)
        self.broker = grpc.Channel(grpc.Address.parse(config.broker),
                                   token=config.broker_token)
        self.worker: Any = None
        self.ucx_unavailable: str | None = None if config.ucx else "UCX disabled (--no-ucx)"
        self.ucx_version = ""
        self.transports: set[str] = set()
        self._peers: dict[str, _Peer] = {}
        self._peer_opened = trio.Event()  # wakes the expiry loop of a reader with no peers
        self._limit = trio.CapacityLimiter(config.max_concurrent)
        self._connecting = trio.Lock()
        # Leases handed back by cancelled reads, closed by ``run``'s task.
        self._leases_to_close, self._leases_to_close_out = trio.open_memory_channel[
            tuple[int, grpc.Channel]](MAX_LEASES_TO_CLOSE)
        self.counters = {"rdma_reads": 0, "rdma_bytes": 0, "inline_reads": 0,
                         "inline_misses": 0, "fallback_reads": 0,
                         "fallback_bytes": 0, "rdma_failures": 0, "sessions_opened": 0,
                         "endpoints_opened": 0, "endpoints_dropped_stuck": 0}

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(self.broker.close)
                if self.config.ucx:
                    await self._start_ucx(stack)
                stack.push_async_callback(self._close_peers)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reap_loans)
                    nursery.start_soon(self._close_handed_back)
                    task_status.started()
                    while True:
                        if not self._peers:  # nothing to expire: sleep until a peer opens
                            await self._peer_opened.wait()
                            self._peer_opened = trio.Event()
                        await trio.sleep(1)
                        await self._expire()
        finally:
            self.pool.close()

    async def _reap_loans(self) -> None:
        while True:
            # Often while buffers are lent, seldom while only clients are, never with neither:
            # an idle sidecar stays asleep (a wake-up costs an idle process more than its work).
            await self.pool.wait_watching()
            await trio.sleep(LOAN_CHECK_S if self.pool.lent else IDLE_LOAN_CHECK_S)
            self.pool.reap()

    async def _start_ucx(self, stack: contextlib.AsyncExitStack) -> None:
        try:
            from rdma import ucx

            settings = {"TLS": self.config.ucx_transports} if self.config.ucx_transports else {}
            worker = await stack.enter_async_context(ucx.open_worker(settings))
        except Exception as exc:  # UcxUnavailable, or UCX failing to start here
            self.ucx_unavailable = f"UCX unavailable: {exc}"
            log.warning("ucx disabled", extra={"reason": self.ucx_unavailable})
            return
        self.worker = worker
        self.ucx_version = ".".join(map(str, worker.binding.version))
        self.pool.region = worker.register(self.pool.memory, remote_write=False)
        stack.callback(self._forget_worker)

    def _forget_worker(self) -> None:
        if self.pool.region is not None:
            self.pool.region.close()
            self.pool.region = None
        self.worker = None

    async def _close_peers(self) -> None:
        with trio.CancelScope(shield=True):
            for address in list(self._peers):
                await self._drop_peer(address)

    async def _expire(self) -> None:
        now = trio.current_time()
        stuck_after = self.config.timeout_ms / 1000
        for address, peer in list(self._peers.items()):
            if any(s.in_use and s.abandoned_at is not None and now - s.abandoned_at > stuck_after
                   for s in peer.sessions.values()):
                # GETs nobody waits for any more, unfinished for a whole read timeout: their
                # slots stay out of the pool until UCX lets go, so make it (a forced close
                # cancels every request of the endpoint).
                log.warning("UCX GETs stuck: closing the endpoint", extra={"peer": address})
                self.counters["endpoints_dropped_stuck"] += 1
                await self._drop_peer(address, force=True)
                continue
            for file_id, session in list(peer.sessions.items()):
                if session.expires < now and not session.in_use:
                    await self._end_session(peer, file_id)
            if not peer.sessions and now - peer.last_used > self.config.endpoint_idle_ms / 1000:
                await self._drop_peer(address)

    # -- reading --------------------------------------------------------------------------------

    def check(self, file_id: str, offset: int, size: int) -> None:
        """Refuse (400) what no path could serve, before a buffer is taken."""
        if size < 1:
            raise ReadFailed(400, "size must be at least 1")
        if size > self.pool.size:
            raise ReadFailed(400, f"size {size} exceeds the sidecar's largest read "
                             f"({self.pool.size} bytes, --buffer-bytes)")
        if offset < 0:
            raise ReadFailed(400, "offset must not be negative")
        problem = _file_id_problem(file_id)
        if problem is not None:
            raise ReadFailed(400, f"bad file_id: {problem}")

    async def fetch(self, account: Account, file_id: str, offset: int, size: int, *,
                    lend_to: object | None = None) -> Fetched:
        """Serve one read for ``account``: take a buffer (waiting for the account's share, all
        within the read's deadline), read into it, and copy the bytes out — or, with
        ``lend_to`` (the scope whose end gives the buffer back: a stream, or the account),
        lend the buffer itself. Whatever happens, cancellation included, a buffer not lent is
        given back before this returns."""
        self.check(file_id, offset, size)
        timeout_ms = self.config.timeout_ms
        slot: Slot | None = None
        # One deadline for the whole read: waiting for a buffer, then reading into it.
        with trio.move_on_after(timeout_ms / 1000) as deadline:
            slot = await self.pool.acquire(account)
            try:
                # The limiter without a schedule point when it has room (see pool.acquire).
                try:
                    self._limit.acquire_nowait()
                except trio.WouldBlock:
                    await self._limit.acquire()
                try:
                    transport = await self._read_into(file_id, offset, size, slot)
                finally:
                    self._limit.release()
                return self._hand_over(slot, size, transport, lend_to)
            finally:
                if slot.loan is None:
                    self.pool.give_back(slot)
        assert deadline.cancelled_caught
        if slot is None:
            raise ReadFailed(503, f"no read buffer came free within {timeout_ms} ms: "
                             f"{self.pool.describe(account)}")
        raise ReadFailed(504, f"read did not finish within {timeout_ms} ms")

    def fetch_now(self, account: Account, file_id: str, offset: int, size: int, *,
                  lend_to: object | None = None) -> Fetched | None:
        """:meth:`fetch` for a read that needs no wait, served without a schedule point: its
        chunk's UCX session cached, a buffer free for ``account``, and a GET the worker
        finishes inline (shared memory and cma copy during the call). None when one of them
        is missing, with nothing kept: await :meth:`fetch` then. A local reader's small read
        costs a trip round trio's scheduler less this way, in the task that received it.
        Raises :class:`ReadFailed` for a request no path could serve, as :meth:`fetch` does."""
        from rdma import ucx

        self.check(file_id, offset, size)
        if size > INLINE_READ_MAX or self.worker is None or not self._limit.available_tokens:
            return None
        session = self._cached_session(file_id, offset + size)
        if session is None or not session.inline or offset + size > session.chunk_length:
            return None
        slot = self.pool.take_now(account)
        if slot is None:
            return None
        into: _GetInto | None = None
        try:
            try:
                into, get = self._start_get(file_id, session, offset, size, slot)
                done: bool | None = get.done
            except (ucx.UcxError, ValueError):
                done = None  # failed: fetch reads it again, and reports or falls back as it does
            if not done:
                if into is not None:
                    into.abandon()  # the slot comes back once UCX settles the GET
                if done is False:
                    # Not a transport that copies inline (tcp, a remote broker): this session
                    # stops trying, and fetch reads this one the waiting way.
                    session.inline = False
                    self.counters["inline_misses"] += 1
                return None
            self._count_ucx(size)
            self.counters["inline_reads"] += 1
            return self._hand_over(slot, size, "ucx", lend_to)
        finally:
            if slot.loan is None:
                self.pool.give_back(slot)

    def _hand_over(self, slot: Slot, size: int, transport: str, lend_to: object | None
                   ) -> Fetched:
        """The read's bytes: the slot lent to ``lend_to``, or (None) copied out of it."""
        if lend_to is not None:
            return Fetched(transport, loan=self.pool.lend(slot, lend_to,
                                                          self.config.lend_ms / 1000))
        return Fetched(transport, data=bytes(slot.view[:size]))

    async def _read_into(self, file_id: str, offset: int, size: int, slot: Slot) -> str:
        """Read ``size`` bytes at ``offset`` of chunk ``file_id`` into ``slot`` (held by the
        caller); returns the transport that carried them ("ucx" or "http")."""
        ucx_problem = self.ucx_unavailable
        if self.worker is not None:
            try:
                await self._ucx_read(file_id, offset, size, slot)
                return "ucx"
            except ReadFailed as exc:
                if exc.status < 500:  # the request itself is wrong: HTTP would say the same
                    raise
                ucx_problem = exc.message
            self.counters["rdma_failures"] += 1
        if not self.config.fallback:
            raise ReadFailed(503, f"UCX read failed ({ucx_problem}) and the fallback is "
                             "disabled")
        try:
            await self._fallback_read(file_id, offset, size, slot)
        except ReadFailed as exc:
            if exc.status < 500:
                raise
            raise ReadFailed(502, f"UCX: {ucx_problem}; fallback: {exc.message}") from None
        return "http"

    async def _ucx_read(self, file_id: str, offset: int, size: int, slot: Slot) -> None:
        from rdma import ucx

        session = await self._session(file_id, offset + size)
        into: _GetInto | None = None
        try:
            into, get = self._start_get(file_id, session, offset, size, slot)
            await get.wait(schedule=False)
        except (ucx.UcxError, ValueError) as exc:
            if into is not None:
                into.abandon()
            await self._forget_session(file_id)
            raise ReadFailed(503, f"UCX GET failed: {exc}") from None
        except BaseException:
            if into is not None:
                into.abandon()
            raise
        self._count_ucx(size)

    def _start_get(self, file_id: str, session: Session, offset: int, size: int, slot: Slot
                   ) -> tuple[_GetInto, Any]:
        """Post the GET of ``size`` bytes at ``offset`` of the session's chunk into ``slot``
        (no schedule point): its bookkeeping and the posted ``rdma.ucx.Get``."""
        if offset + size > session.chunk_length:
            raise ReadFailed(416, f"range {offset}+{size} runs past the end of chunk "
                             f"{file_id} ({session.chunk_length} bytes)")
        into = _GetInto(self.pool, session, slot)
        get = session.endpoint.start_get(session.key, session.chunk_position + offset,
                                         slot.view[:size], local=self.pool.region,
                                         settled=into.settled)
        return into, get

    def _count_ucx(self, size: int) -> None:
        self.counters["rdma_reads"] += 1
        self.counters["rdma_bytes"] += size

    def _cached_session(self, file_id: str, needed: int) -> Session | None:
        for peer in self._peers.values():
            session = peer.sessions.get(file_id)
            # Not one about to expire: a read started now must end well before its lease does.
            if (session is not None and session.chunk_length >= needed
                    and session.expires - trio.current_time() > self.config.timeout_ms / 1000):
                peer.last_used = trio.current_time()
                return session
        return None

    async def _session(self, file_id: str, needed: int) -> Session:
        session = self._cached_session(file_id, needed)
        if session is not None:
            return session
        # New, or the active segment's last chunk has grown since: ask the broker again.
        await self._forget_session(file_id)
        broker, address = self._broker_for(file_id)
        try:
            reply = await broker.call(BROKER.open_read,
                                      broker_pb.OpenReadRequest(file_id=file_id), timeout=5)
        except Exception as exc:  # refused, reset, timed out: the broker is not reachable
            raise ReadFailed(503, f"broker {address} OpenRead failed: "
                             f"{grpc.describe_failure(exc)}") from None
        if reply.status != 200:
            raise ReadFailed(reply.status, reply.error)
        # Until the session is cached, a lease nobody will use is handed back on any failure,
        # cancellation included: else the broker keeps the segment mapped and registered until
        # the lease runs out.
        try:
            peer = await self._peer(reply.ucx_address)
            try:
                key = peer.endpoint.import_key(reply.descriptor)
            except Exception as exc:
                await self._drop_peer(reply.ucx_address)
                raise ReadFailed(503, f"cannot use the broker's rkey: {exc}") from None
        except BaseException:
            # Synchronous: a cancelled read returns at once.
            self._hand_back(reply.lease_id, broker)
            raise
        lifetime = min(self.config.session_ms, reply.lease_ms * 0.8) / 1000
        session = Session(reply.lease_id, broker, peer.endpoint, key, reply.chunk_position,
                          reply.chunk_length, trio.current_time() + lifetime)
        peer.sessions[file_id] = session
        self.counters["sessions_opened"] += 1
        return session

    async def _peer(self, address: str) -> _Peer:
        async with self._connecting:  # concurrent first reads share one endpoint
            return await self._peer_locked(address)

    async def _peer_locked(self, address: str) -> _Peer:
        peer = self._peers.get(address)
        if peer is not None and peer.endpoint.error is None and not peer.endpoint.closed:
            peer.last_used = trio.current_time()
            return peer
        if peer is not None:
            await self._drop_peer(address)
        try:
            host, port = parse_host_port(address)
            endpoint = await self.worker.connect(host, port)
        except Exception as exc:
            raise ReadFailed(503, f"cannot reach the broker's UCX listener {address}: "
                             f"{exc}") from None
        peer = self._peers[address] = _Peer(endpoint, trio.current_time())
        self._peer_opened.set()
        self.counters["endpoints_opened"] += 1
        with contextlib.suppress(Exception):
            self.transports.update(endpoint.rma_transports())
        return peer

    async def _forget_session(self, file_id: str) -> None:
        for peer in list(self._peers.values()):
            if file_id in peer.sessions:
                await self._end_session(peer, file_id)

    async def _end_session(self, peer: _Peer, file_id: str) -> None:
        session = peer.sessions.pop(file_id)
        if session.in_use:  # a GET still reads with this key; expiry will take it later
            peer.sessions[f"{file_id}#retired{session.lease_id}"] = session
            return
        session.key.close()
        await self._close_lease(session.lease_id, session.broker)

    def _broker_for(self, file_id: str) -> tuple[grpc.Channel, str]:
        """The broker holding ``file_id``'s bytes (in a cluster, the one its volume names)."""
        found = self.brokers.for_file(file_id) if self.brokers is not None else None
        return found or (self.broker, self.config.broker)

    def _hand_back(self, lease_id: int, broker: grpc.Channel) -> None:
        """Close a lease from a task that cannot wait (it is being cancelled): the Reader's own
        task sends the CloseRead. Bounded; a lease that does not fit expires by itself."""
        with contextlib.suppress(trio.WouldBlock):
            self._leases_to_close.send_nowait((lease_id, broker))

    async def _close_handed_back(self) -> None:
        async for lease_id, broker in self._leases_to_close_out:
            await self._close_lease(lease_id, broker)

    @staticmethod
    async def _close_lease(lease_id: int, broker: grpc.Channel) -> None:
        with contextlib.suppress(Exception):  # best effort: the lease expires anyway
            await broker.call(BROKER.close_read,
                              broker_pb.CloseReadRequest(lease_id=lease_id), timeout=2)

    async def _drop_peer(self, address: str, *, force: bool = False) -> None:
        peer = self._peers.pop(address, None)
        if peer is None:
            return
        # The endpoint first: closing it finishes (or, forced, cancels) its GETs, so no key
        # or lease goes while UCX still reads with it.
        with contextlib.suppress(Exception):
            await peer.endpoint.close(force=force or peer.endpoint.error is not None,
                                      timeout=2)
        for session in peer.sessions.values():
            if not session.in_use:
                session.key.close()
            # else: the endpoint's close destroys its keys once UCX releases it
            await self._close_lease(session.lease_id, session.broker)

    async def _fallback_read(self, file_id: str, offset: int, size: int, slot: Slot) -> None:
        """The fallback: the broker copies the range (``ReadChunk``) into ``slot``."""
        request = broker_pb.ReadChunkRequest(file_id=file_id, offset=offset, size=size)
        broker, address = self._broker_for(file_id)
        try:
            reply = await broker.call(BROKER.read_chunk, request,
                                      timeout=self.config.timeout_ms / 1000)
        except Exception as exc:  # refused, reset, timed out: the broker is not reachable
            raise ReadFailed(503, f"broker {address} ReadChunk failed: "
                             f"{grpc.describe_failure(exc)}") from None
        if reply.status != 200:
            raise ReadFailed(reply.status if reply.status < 500 else 503,
                             f"broker ReadChunk {reply.status}: {reply.error}")
        if len(reply.data) != size:
            raise ReadFailed(503, f"broker answered {len(reply.data)} bytes, not {size}")
        slot.view[:size] = reply.data
        self.counters["fallback_reads"] += 1
        self.counters["fallback_bytes"] += size

    async def stat(self, file_id: str) -> int:
        """The bytes chunk ``file_id`` holds now (asked of the broker: ``StatChunk``)."""
        broker, address = self._broker_for(file_id)
        try:
            reply = await broker.call(BROKER.stat_chunk,
                                      broker_pb.StatChunkRequest(file_id=file_id), timeout=5)
        except Exception as exc:
            raise ReadFailed(503, f"broker {address} StatChunk failed: "
                             f"{grpc.describe_failure(exc)}") from None
        if reply.status != 200:
            raise ReadFailed(reply.status, reply.error)
        return int(reply.size)

    def capabilities(self) -> dict[str, Any]:
        transports = sorted(self.transports)
        return {"ucx": self.worker is not None, "ucx_version": self.ucx_version,
                "transports": transports,
                "verbs": any(t.split("/")[0] in ("rc", "rc_mlx5", "dc", "dc_mlx5", "ud",
                                                 "ud_mlx5", "rc_verbs", "ud_verbs")
                             for t in transports),
                "http_fallback": self.config.fallback, "max_read_bytes": self.pool.size,
                "reason": self.ucx_unavailable or "",
                "buffers": self.pool.count, "client_buffers": self.pool.share,
                "http_reserve": self.pool.reserve, "lend_ms": self.config.lend_ms}
