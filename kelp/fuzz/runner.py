"""Send mutated frames to a live Kafka port over many connections, bounded in count and time.

Each connection pipelines a few frames, then gives the server a moment to answer before the
next few. A reader task per connection drains responses all the time, so the server is never
blocked on a full socket of answers we did not read. A connection the server closes (the usual
fate of a malformed frame) is reopened; one the server stops reading (a long-poll it parked,
a size prefix that promised more bytes) is abandoned and reopened too: after ``STALL_S`` when
it stops taking our bytes, after ``ANSWER_WAIT_S`` when it takes them but does not answer.

The run stops by itself at ``frames`` or ``seconds``, or as soon as ``alive()`` says a target
process died; then the last frames sent are kept for triage (``recent``), since one of them
is likely what killed it.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from kelp.fuzz.mutate import Mutant, Mutator

STALL_S = 1.0        # a send that cannot progress this long: the server stopped reading us
ANSWER_WAIT_S = 0.1  # after each pipelined group, the longest we wait for its answers
RECENT = 8192        # frames kept for crash triage
RECENT_S = 2.0       # of which those sent this long before trouble are saved


@dataclass
class Stats:
    frames: int = 0           # written whole to a socket
    bytes: int = 0
    responses: int = 0
    connections: int = 0      # opened
    closed_by_server: int = 0
    stalled: int = 0          # closed by us: the server stopped reading
    abandoned: int = 0        # closed by us: frames left unanswered
    refused: int = 0          # connect attempts that failed
    by_how: collections.Counter[str] = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    died: str | None = None   # why the run stopped early

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RunConfig:
    host: str
    port: int
    frames: int
    seconds: float
    connections: int = 32
    pipeline: int = 4
    progress_s: float = 5.0


class Runner:
    def __init__(self, config: RunConfig, mutator: Mutator,
                 alive: Callable[[], str | None] = lambda: None,
                 log: Callable[[str], None] = print) -> None:
        self.config = config
        self.mutator = mutator
        self.alive = alive  # None while the targets live, else what died
        self.log = log
        self.stats = Stats()
        self.recent: collections.deque[tuple[float, Mutant]] = collections.deque(maxlen=RECENT)
        self._budget = config.frames

    def run(self) -> Stats:
        try:
            trio.run(self._main)
        except BaseExceptionGroup as group:
            # Ctrl-C or SIGTERM inside a nursery arrives wrapped; the caller wants it plain.
            if group.subgroup(KeyboardInterrupt) is not None:
                raise KeyboardInterrupt from None
            raise
        return self.stats

    async def _main(self) -> None:
        self.stats = Stats()
        with trio.move_on_after(self.config.seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, nursery.cancel_scope)
                nursery.start_soon(_interrupt_on_sigterm)
                async with trio.open_nursery() as senders:
                    for _ in range(self.config.connections):
                        senders.start_soon(self._connection_loop)
                nursery.cancel_scope.cancel()  # every frame sent: stop watching
        self.stats.ended = time.monotonic()

    def recent_frames(self) -> list[Mutant]:
        """The frames sent in the last ``RECENT_S`` seconds, oldest first."""
        since = time.monotonic() - RECENT_S
        return [mutant for sent, mutant in self.recent if sent >= since]

    def _take(self) -> Mutant | None:
        if self._budget <= 0:
            return None
        self._budget -= 1
        return self.mutator.next()

    async def _watch(self, scope: trio.CancelScope) -> None:
        last_report = time.monotonic()
        last_frames = 0
        while True:
            await trio.sleep(0.25)
            reason = self.alive()
            if reason is not None:
                self.stats.died = reason
                self.log(f"fuzz: stopping early: {reason}")
                scope.cancel()
                return
            now = time.monotonic()
            if now - last_report >= self.config.progress_s:
                s = self.stats
                rate = (s.frames - last_frames) / (now - last_report)
                self.log(f"fuzz: {s.elapsed:6.1f}s frames={s.frames} ({rate:,.0f}/s) "
                         f"responses={s.responses} closed={s.closed_by_server} "
                         f"abandoned={s.abandoned + s.stalled} conns={s.connections}")
                last_report, last_frames = now, s.frames

    async def _connection_loop(self) -> None:
        while self._budget > 0:
            try:
                stream = await trio.open_tcp_stream(self.config.host, self.config.port)
            except OSError:
                self.stats.refused += 1
                await trio.sleep(0.05)  # the watcher decides whether the target is gone
                continue
            self.stats.connections += 1
            async with stream, trio.open_nursery() as nursery:
                answered = _Answers()
                nursery.start_soon(self._drain, stream, answered, nursery.cancel_scope)
                await self._send_some(stream, answered)
                nursery.cancel_scope.cancel()

    async def _send_some(self, stream: trio.SocketStream, answered: _Answers) -> None:
        """Pipelined groups of frames until the server closes or stalls, or the budget ends."""
        while True:
            group = []
            for _ in range(self.config.pipeline):
                mutant = self._take()
                if mutant is None:
                    break
                group.append(mutant)
            if not group:
                return
            for index, mutant in enumerate(group):
                data = mutant.frame()
                sent = False
                with trio.move_on_after(STALL_S) as scope:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_all(data)
                        sent = True
                if not sent:
                    # Closed under us, or stalled: this frame and the rest go back to the budget.
                    self.stats.stalled += scope.cancelled_caught
                    self._budget += len(group) - index
                    return
                self.stats.frames += 1
                answered.sent += 1
                self.stats.bytes += len(data)
                self.stats.by_how[mutant.how.split("+")[0]] += 1
                self.recent.append((time.monotonic(), mutant))
            with trio.move_on_after(ANSWER_WAIT_S) as waited:
                await answered.wait_caught_up()
            if answered.closed:
                return
            if waited.cancelled_caught:
                # Unanswered and open: a parked request (long-poll, rebalance) or a size prefix
                # that promised more bytes. Waiting again would only idle: start afresh.
                self.stats.abandoned += 1
                return

    async def _drain(self, stream: trio.SocketStream, answered: _Answers,
                     scope: trio.CancelScope) -> None:
        """Count and discard responses; notice when the server closes the connection."""
        buffered = bytearray()
        try:
            while data := await stream.receive_some(256 * 1024):
                buffered += data
                while len(buffered) >= 4:
                    (size,) = struct.unpack_from(">i", buffered)
                    if len(buffered) < 4 + size:
                        break
                    del buffered[: 4 + size]
                    self.stats.responses += 1
                    answered.note_response()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        self.stats.closed_by_server += 1
        answered.close()


async def _interrupt_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C does (the caller's cleanup runs either way)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise KeyboardInterrupt


class _Answers:
    """What the server did with one connection's frames: answered how many, or closed it."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.closed = False
        self._changed = trio.Event()

    def note_response(self) -> None:
        self.received += 1
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def wait_caught_up(self) -> None:
        """Until every frame sent was answered (some never are: acks=0) or the server closed."""
        while not self.closed and self.received < self.sent:
            self._changed = trio.Event()
            await self._changed.wait()
