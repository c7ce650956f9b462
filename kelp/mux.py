"""Many requests on one long-lived gRPC stream, their replies matched back by request id.

The gateway's Append and Fetch streams to the broker and the mount's ReadStream to the
sidecar all work this way: a request carries a ``request_id``, its reply echoes it, replies
may come back in any order. ``Multiplexed`` owns that bookkeeping for one stream:

* ``submit`` queues a request now (synchronously: requests submitted in order go out in
  order) and returns its ``Waiter``; the request counts as *outstanding* until its reply
  arrives, even if nobody waits for it any more (the peer still holds it).
* ``call`` submits and waits; cancelled, it forgets the request at once (synchronously, so a
  cancelled caller leaks no entry) and can tell the peer to drop it (``cancel=``). A reply
  that comes for a forgotten request goes to ``unclaimed`` (the mount gives back a buffer
  lent to a read nobody waits for).
* ``wait_for_room`` bounds the outstanding requests: past ``max_outstanding``, callers wait.
* ``deliver_replies`` reads the stream and wakes the waiters; ``fail`` — when the stream is
  gone — fails every waiter with the owner's error (each owner says "unavailable" its way).

Connecting, reconnecting and what "unavailable" means stay with the owner.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import trio


class _Tagged(Protocol):
    request_id: int


Req = TypeVar("Req", bound=_Tagged)
Rep = TypeVar("Rep", bound=_Tagged)
Req_contra = TypeVar("Req_contra", contravariant=True)
Rep_co = TypeVar("Rep_co", covariant=True)


class Stream(Protocol[Req_contra, Rep_co]):
    """What ``Multiplexed`` needs of a stream: a gRPC ``ClientStream``, or the sidecar's read
    socket (rdma.read_socket)."""

    def send(self, message: Req_contra, size: int = 0) -> None: ...

    async def recv(self) -> Rep_co | None: ...


class Waiter(Generic[Rep]):
    """One outstanding request: set once, by its reply or by the stream's failure."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Rep | None = None
        self.error: Exception | None = None

    async def wait(self) -> Rep:
        # A reply already here is returned without a trip round the scheduler (the mount's
        # read that waited for it in place: the trip would cost it a tenth of its time).
        if not self.done.is_set():
            await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


class Multiplexed(Generic[Req, Rep]):
    """The request ids and waiters of one stream (``stream``, set by its owner while
    connected); see the module's docstring."""

    def __init__(self, *, max_outstanding: int,
                 unclaimed: Callable[[Rep], None] | None = None) -> None:
        self.max_outstanding = max_outstanding
        self.stream: Stream[Req, Rep] | None = None  # None while not connected
        self._unclaimed = unclaimed
        self._ids = itertools.count(1)
        self._waiting: dict[int, Waiter[Rep]] = {}
        # Tasks waiting for room; woken only as many as there is room for (thousands of them
        # must not all wake on every reply).
        self.room = trio.lowlevel.ParkingLot()

    @property
    def outstanding(self) -> int:
        """Requests sent whose reply has not come yet (waited for or not)."""
        return len(self._waiting)

    def has_room(self) -> bool:
        """Whether a request may be submitted now (fewer than ``max_outstanding`` out)."""
        return len(self._waiting) < self.max_outstanding

    async def wait_for_room(self) -> None:
        """Until fewer than ``max_outstanding`` requests are outstanding."""
        while not self.has_room():
            await self.room.park()

    def submit(self, request: Req, size: int = 0) -> Waiter[Rep]:
        """Give ``request`` an id and queue it on the stream (``size``: its bytes, for the
        stream's outgoing bound). Raises ``trio.ClosedResourceError`` when not connected and
        ``trio.BrokenResourceError`` when the stream has failed."""
        stream = self.stream
        if stream is None:
            raise trio.ClosedResourceError("stream not connected")
        request.request_id = next(self._ids)
        stream.send(request, size)
        waiter: Waiter[Rep] = Waiter()
        self._waiting[request.request_id] = waiter
        return waiter

    async def call(self, request: Req, *, size: int = 0,
                   cancel: Callable[[int], Req] | None = None,
                   sent: Callable[[], None] | None = None) -> Rep:
        """Submit ``request`` and wait for its reply. Cancelled, the request is forgotten
        here and ``cancel(request_id)`` (if given) is sent to tell the peer. ``sent`` runs
        right after the request is queued (the mount waits in place there)."""
        await self.wait_for_room()
        stream = self.stream
        waiter = self.submit(request, size)
        try:
            if sent is not None:
                sent()
            return await waiter.wait()
        except BaseException:
            if not waiter.done.is_set():  # cancelled: nobody will take this reply
                self._forget(request.request_id)
                if cancel is not None and self.stream is stream and stream is not None:
                    # A stream that failed meanwhile drops the request anyway.
                    with contextlib.suppress(trio.BrokenResourceError,
                                             trio.ClosedResourceError):
                        stream.send(cancel(request.request_id))
            elif waiter.reply is not None and self._unclaimed is not None:
                # Cancelled just as its reply came: it goes where late replies go.
                self._unclaimed(waiter.reply)
            raise

    def send_untracked(self, request: Req) -> None:
        """Queue a request no reply is expected for (the mount's bare releases)."""
        if self.stream is not None:
            self.stream.send(request)

    async def deliver_replies(self, stream: Stream[Req, Rep]) -> None:
        """Hand each reply of ``stream`` to its waiter until the stream ends."""
        while (reply := await stream.recv()) is not None:
            self.deliver(reply)

    def deliver(self, reply: Rep) -> None:
        """One reply to its waiter (or to ``unclaimed`` when nobody waits for it)."""
        waiter = self._waiting.pop(reply.request_id, None)
        if waiter is None:
            if self._unclaimed is not None:
                self._unclaimed(reply)
            return
        self._wake_one()
        waiter.reply = reply
        waiter.done.set()

    def fail(self, error: Exception) -> None:
        """The stream is gone: every waiter gets ``error``; nothing is outstanding any more."""
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.error = error
            waiter.done.set()
        self.room.unpark_all()

    def _forget(self, request_id: int) -> None:
        if self._waiting.pop(request_id, None) is not None:
            self._wake_one()

    def _wake_one(self) -> None:
        if not self.room:  # nobody waits for room: the common case, and unpark is not free
            return
        room = self.max_outstanding - len(self._waiting)
        if room > 0:
            self.room.unpark(count=room)


class _Cancellable(Protocol):
    request_id: int
    cancel: bool


Cancellable = TypeVar("Cancellable", bound=_Cancellable)


async def serve_each(recv: Callable[[], Awaitable[Cancellable | None]],
                     run: Callable[[Cancellable], Awaitable[None]], *,
                     limit: int | None = None,
                     refuse: Callable[[Cancellable], None] | None = None) -> None:
    """The server's side of such a stream: each request of ``recv`` in a task of its own
    (``run(request)``, which sends its reply), until the stream ends; a request with
    ``cancel`` cancels the task of its ``request_id``, if it still runs. With ``limit``, a
    request past that many running, or reusing the id of one still running, goes to
    ``refuse`` instead."""
    scopes: dict[int, trio.CancelScope] = {}

    async def one(request: Cancellable, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await run(request)
        finally:
            if scopes.get(request.request_id) is scope:
                del scopes[request.request_id]

    async with trio.open_nursery() as nursery:
        while (request := await recv()) is not None:
            if request.cancel:
                scope = scopes.get(request.request_id)
                if scope is not None:
                    scope.cancel()
                continue
            if limit is not None and refuse is not None and (
                    len(scopes) >= limit or request.request_id in scopes):
                refuse(request)
                continue
            scope = scopes[request.request_id] = trio.CancelScope()
            nursery.start_soon(one, request, scope)
        nursery.cancel_scope.cancel()  # the peer closed the stream
