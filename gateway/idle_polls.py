"""Caught-up partitions watched for the consumers that long-poll them: an idle consumer's
fetches are answered by the gateway, not the broker.

A consumer that has read everything asks again every ``fetch.max.wait`` (500 ms by default),
and each of those fetches cost a round trip to the broker and a wake-up of both processes, only
to hear "nothing new": most of an idle kelp's CPU. So once the broker has answered a partition
empty at an offset (no error, no records), the gateway keeps one long poll of its own on the
broker for that partition at that offset (up to ``WATCH_WAIT_MS``) and remembers the empty
answer. A client fetch whose partitions are all watched at its offsets waits here instead:

* a watch ends (data arrived, an error, the watch's own wait ran out, the broker went away):
  the fetch goes to the broker as it always did, with what is left of its wait;
* the fetch's wait runs out first: it is answered with the remembered empty partitions. That
  is what the broker would answer: any byte that became visible past the offset ends the watch.

Only with a single broker (no router: a cluster's leaders move), and only for fetches that wait.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from gateway.broker_client import BrokerClient, BrokerUnavailable
from kelp.rpc.broker import v1 as pb

MAX_WATCHES = 1024  # partitions watched at once; the least recently used go first
WATCH_WAIT_MS = 30_000  # the broker's longest long poll (broker.streams.MAX_FETCH_WAIT_S)

Key = tuple[str, int, int, int]  # topic, partition, offset, isolation level


@dataclass(eq=False)
class _Watch:
    key: Key
    empty: pb.FetchedPartition  # the broker's empty answer at that offset
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: bool = False
    listeners: set[trio.Event] = field(default_factory=set)

    def end(self) -> None:
        self.ended = True
        for listener in self.listeners:
            listener.set()


class IdlePolls:
    """The watched partitions of one gateway; ``run`` owns the watches' tasks."""

    def __init__(self, broker: BrokerClient) -> None:
        self.broker = broker
        self._watches: OrderedDict[Key, _Watch] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self.answered = 0  # fetches answered here, without the broker

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        # Cancelled, each watch's task ends it and forgets it on its way out (``_watch``).
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    @property
    def watching(self) -> int:
        return len(self._watches)

    def note(self, request: pb.FetchRequest,
             results: dict[tuple[str, int], pb.FetchedPartition]) -> None:
        """The broker answered ``request``: watch each partition it answered empty."""
        if self._nursery is None:
            return
        for part in request.partitions:
            found = results.get((part.topic, part.partition))
            if found is None or found.error_code or found.records or found.aborted or (
                    found.file is not None and found.file.size):
                continue
            key = (part.topic, part.partition, part.offset, request.isolation_level)
            if key in self._watches:
                self._watches.move_to_end(key)
                continue
            watch = _Watch(key, _empty(found))
            self._watches[key] = watch
            if len(self._watches) > MAX_WATCHES:
                _, oldest = self._watches.popitem(last=False)
                oldest.scope.cancel()
                oldest.end()
            self._nursery.start_soon(self._watch, watch)

    async def _watch(self, watch: _Watch) -> None:
        topic, partition, offset, isolation = watch.key
        try:
            with watch.scope:
                # One byte is enough to end it: the fetches it stood in for then go to the
                # broker and read as much as they ask for.
                await self.broker.fetch(pb.FetchRequest(
                    partitions=[pb.FetchPartition(topic=topic, partition=partition,
                                                  offset=offset, max_bytes=1)],
                    max_wait_ms=WATCH_WAIT_MS, min_bytes=1, max_bytes=1,
                    isolation_level=isolation))
        except BrokerUnavailable:
            pass
        finally:
            if self._watches.get(watch.key) is watch:
                del self._watches[watch.key]
            watch.end()

    async def answer(self, request: pb.FetchRequest
                     ) -> dict[tuple[str, int], pb.FetchedPartition] | None:
        """Wait here for ``request`` when every partition of it is watched at its offset.

        Returns the remembered empty partitions when the request's wait ran out first, or None
        when it must go to the broker after all; then ``request.max_wait_ms`` is what is left
        of its wait."""
        if request.max_wait_ms <= 0 or not request.partitions:
            return None
        watches = []
        for part in request.partitions:
            watch = self._watches.get((part.topic, part.partition, part.offset,
                                       request.isolation_level))
            if watch is None:
                return None
            watches.append(watch)
        started = trio.current_time()
        ended = trio.Event()
        for watch in watches:
            watch.listeners.add(ended)
        try:
            with trio.move_on_after(request.max_wait_ms / 1000):
                await ended.wait()
        finally:
            for watch in watches:
                watch.listeners.discard(ended)
        if any(watch.ended for watch in watches):
            waited_ms = int((trio.current_time() - started) * 1000)
            request.max_wait_ms = max(request.max_wait_ms - waited_ms, 0)
            return None
        self.answered += 1
        return {(w.key[0], w.key[1]): _empty(w.empty) for w in watches}


def _empty(found: pb.FetchedPartition) -> pb.FetchedPartition:
    """A fresh empty answer with ``found``'s offsets (each response gets its own: the fetch
    handler may fill in what it answers)."""
    return pb.FetchedPartition(topic=found.topic, partition=found.partition,
                               high_watermark=found.high_watermark,
                               last_stable_offset=found.last_stable_offset,
                               log_start_offset=found.log_start_offset)
