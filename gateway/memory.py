"""The gateway's memory bounds: shared byte pools, and each connection's unsent output.

Kafka bounds a broker's memory with ``queued.max.request.bytes`` (request bytes being received
or waiting) and fetch limits, and stops serving a connection that does not read its responses.
kelp does the same with two gateway-wide pools and one object per connection:

* ``requests``: a frame larger than ``LARGE_FRAME_BYTES`` must reserve its declared size here
  before its body is read; its connection is simply not read until there is room. Small frames
  need no reservation (each connection's in-flight limits bound them), so ordinary clients keep
  working while large half-sent frames wait (and time out).
* ``fetches``: the record bytes of fetch responses not yet written to their sockets. A fetch
  takes what it may from the pool before asking the broker; when the pool is dry it still gets
  ``MIN_FETCH_GRANT`` (its connection has drained its output, see below), so healthy consumers
  make progress while stuck ones hold at most one response each.
* ``Output``: a connection's responses built but not yet written. Its fetches take turns, and
  each waits until the previous responses are written before asking the broker for data: a
  client that stops reading stops being served before its next response is built.

Every give-back is synchronous, so a cancelled task returns what it holds.
"""

from __future__ import annotations

import trio

LARGE_FRAME_BYTES = 1024 * 1024
MIN_FETCH_GRANT = 1024 * 1024


class BytePool:
    """A gateway-wide budget of bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._freed = trio.Event()

    @property
    def free(self) -> int:
        return max(self.capacity - self.used, 0)

    async def reserve(self, size: int) -> int:
        """Wait until ``size`` bytes fit (one larger than the whole pool waits for an empty
        pool), take them and return how many were taken."""
        while self.used and self.used + size > self.capacity:
            await self._freed.wait()
        self.used += size
        return size

    def grant(self, wanted: int, minimum: int) -> int:
        """Take up to ``wanted`` bytes now: what is free, but at least ``minimum``."""
        granted = max(min(wanted, self.free), min(wanted, minimum))
        self.used += granted
        return granted

    def release(self, size: int) -> None:
        if size:
            self.used -= size
            if self.used < self.capacity:  # waking waiters while still full only herds them
                freed, self._freed = self._freed, trio.Event()
                freed.set()


class Output:
    """One connection's responses that are built but not yet written to its socket."""

    def __init__(self, drained_below: int = LARGE_FRAME_BYTES) -> None:
        self.unsent = 0
        self.drained_below = drained_below
        self.fetch_turn = trio.Lock()  # one fetch at a time asks the broker for data
        self._changed = trio.Event()

    def queued(self, size: int) -> None:
        self.unsent += size

    def written(self, size: int) -> None:
        self.unsent -= size
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_drained(self) -> None:
        """Until the client has taken (nearly) everything already answered."""
        while self.unsent >= self.drained_below:
            await self._changed.wait()
