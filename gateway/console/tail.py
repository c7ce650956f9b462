"""The console's live tail: a partition's new records pushed to the browser over WebSocket
(trio-websocket), ``ws://<console-ws>/tail/<topic>/<partition>[?from=end|beginning|N]``.

Each open tail is a task in the gateway's nursery with two children: a fetcher that
long-polls the broker from the tail's position and a sender that writes JSON messages to the
browser. Between them is a channel of ``QUEUE`` messages: when a browser reads slower than
records arrive, the fetcher does not wait for it (and memory does not grow): it drops what the
browser has not taken, jumps to the partition's end and sends a "you are behind" marker
instead. A browser that goes away (tab closed) ends its tail's tasks at once.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import secrets
import ssl
import urllib.parse

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from gateway.broker_client import BrokerUnavailable
from gateway.console import records
from gateway.context import GatewayContext
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

EARLIEST, LATEST = -2, -1  # ListOffsets timestamps

log = logging.getLogger("kelp.gateway.console")

QUEUE = 4                  # messages waiting for the browser, at most
FETCH_BYTES = 16 * 1024    # bytes one fetch (so one message) carries at most
WAIT_MS = 1000             # each long-poll of the broker
MESSAGE_RECORDS = 25        # records one message carries at most (values cut at 4 KiB)
MAX_TAILS = 100            # open at once; more are refused (the browser says why)
MESSAGE_LIMIT = 4096       # bytes the browser may send us in one message (it sends none)


class Tickets:
    """One-minute tickets for the live tail, issued by the console's API after its checks
    (credentials, READ on the topic): browsers cannot put credentials on a WebSocket. A ticket
    names its topic and partition and is good for one tail."""

    LIFETIME_S = 60.0
    MAX_OPEN = 1000  # tickets issued and not used yet, at most (the oldest go first)

    def __init__(self) -> None:
        self._issued: dict[str, tuple[str, int, float]] = {}

    def issue(self, topic: str, partition: int) -> str:
        now = trio.current_time()
        for ticket, (_t, _p, expires) in list(self._issued.items()):
            if expires < now or len(self._issued) >= self.MAX_OPEN:
                del self._issued[ticket]
        ticket = secrets.token_urlsafe(24)
        self._issued[ticket] = (topic, partition, now + self.LIFETIME_S)
        return ticket

    def redeem(self, ticket: str, topic: str, partition: int) -> bool:
        found = self._issued.pop(ticket, None)
        return (found is not None and found[:2] == (topic, partition)
                and found[2] >= trio.current_time())


class Tails:
    def __init__(self, ctx: GatewayContext, tickets: Tickets | None = None) -> None:
        """``tickets``: tails need one (the console asks for credentials)."""
        self.ctx = ctx
        self.tickets = tickets
        self.open = 0
        self.behind_markers = 0
        self.restarts = 0

    async def run(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve tails on ``host:port`` until cancelled; ``task_status.started(bound port)``.

        Each connection's handler is a task in this server's nursery, which lives in the
        gateway's. Handlers contain what they meet; should anything else escape (a WebSocket
        connection failing outside a handler), the tails are dropped and the server starts
        again on the same port, and the gateway and its Kafka clients carry on.
        """
        while True:
            try:
                async with trio.open_nursery() as handlers:
                    server = await handlers.start(functools.partial(
                        serve_websocket, self.handle, host, port, ssl_context=ssl_context,
                        handler_nursery=handlers, message_queue_size=1,
                        max_message_size=MESSAGE_LIMIT, connect_timeout=10,
                        disconnect_timeout=5))
                    if port == 0:
                        port = int(server.port)
                    task_status.started(port)
                    task_status = trio.TASK_STATUS_IGNORED
                    await trio.sleep_forever()
            except Exception:
                log.exception("live tail server failed; starting it again")
                self.restarts += 1
                await trio.sleep(1)

    async def handle(self, request: WebSocketRequest) -> None:
        # Nothing a tail meets may escape: its handler runs in the gateway's own nursery.
        counted = False
        try:
            target = urllib.parse.urlsplit(request.path)
            parts = [urllib.parse.unquote(p) for p in target.path.strip("/").split("/")]
            if len(parts) != 3 or parts[0] != "tail" or not parts[2].isdigit():
                await request.reject(404, body=b"ws path: /tail/<topic>/<partition>")
                return
            if self.open >= MAX_TAILS:
                await request.reject(503, body=b"too many open tails")
                return
            topic, partition = parts[1], int(parts[2])
            query = urllib.parse.parse_qs(target.query)
            start = query.get("from", ["end"])[0]
            if self.tickets is not None and not self.tickets.redeem(
                    query.get("ticket", [""])[0], topic, partition):
                await request.reject(403,
                                     body=b"a live tail needs a ticket from /api/tail-ticket")
                return
            self.open += 1
            counted = True
            ws = await request.accept()
            await self._tail(ws, topic, partition, start)
        except* ConnectionClosed:
            pass  # the tab closed
        except* Exception:
            log.exception("live tail failed", extra={"path": request.path[:200]})
        finally:
            if counted:
                self.open -= 1

    async def _tail(self, ws: WebSocketConnection, topic: str, partition: int,
                    start: str) -> None:
        offset = await self._start_offset(topic, partition, start)
        if offset is None:
            await ws.send_message(json.dumps({"error": f"no partition {topic}-{partition}"}))
            return
        await ws.send_message(json.dumps({"tailing": topic, "partition": partition,
                                          "from": offset}))
        send, receive = trio.open_memory_channel[str](QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fetch, topic, partition, offset, send)
            nursery.start_soon(self._watch_close, ws, nursery.cancel_scope)
            async with receive:
                async for message in receive:
                    await ws.send_message(message)
            nursery.cancel_scope.cancel()

    async def _watch_close(self, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        """The browser sends nothing; this returns (and ends the tail) when it goes away."""
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            scope.cancel()

    async def _start_offset(self, topic: str, partition: int, start: str) -> int | None:
        """Where the tail starts (log start, end, or an offset within them); None if there is
        no such partition. Asked with ListOffsets: no record bytes are read for it."""
        where = pb.PartitionRef(topic=topic, partition=partition)
        reply = await self.ctx.broker.call(BROKER.list_offsets, pb.ListOffsetsRequest(queries=[
            pb.ListOffsetsRequestQuery(partition=where, timestamp=EARLIEST),
            pb.ListOffsetsRequestQuery(partition=where, timestamp=LATEST)]))
        first, end = reply.answers
        if first.error_code or end.error_code:
            return None
        if start == "beginning":
            return first.offset
        if start.isdigit():
            return min(max(int(start), first.offset), end.offset)
        return end.offset

    async def _fetch(self, topic: str, partition: int, offset: int,
                     send: trio.MemorySendChannel[str]) -> None:
        behind = False
        async with send:
            while True:
                try:
                    reply = await self.ctx.broker.fetch(pb.FetchRequest(
                        partitions=[pb.FetchPartition(topic=topic, partition=partition,
                                                      offset=offset, max_bytes=FETCH_BYTES)],
                        max_wait_ms=WAIT_MS, min_bytes=1, max_bytes=FETCH_BYTES))
                except BrokerUnavailable:
                    await trio.sleep(1)
                    continue
                part = reply.partitions[0]
                if part.error_code:
                    send.send_nowait(json.dumps({"error": f"fetch error {part.error_code}"}))
                    return
                end = part.high_watermark
                shown = list(itertools.islice(
                    records.decode(part.records, self.ctx.registry_state, offset),
                    MESSAGE_RECORDS))
                del reply, part  # a big batch is not kept while the browser reads
                if not shown:
                    continue
                following = shown[-1]["offset"] + 1
                try:
                    if behind:  # first tell the browser what it missed
                        send.send_nowait(json.dumps({"behind": True, "resumed_at": offset}))
                        behind = False
                    send.send_nowait(json.dumps({"records": shown}))
                    offset = following
                except trio.WouldBlock:
                    # The browser reads slower than records come: drop, jump to the end.
                    behind = True
                    self.behind_markers += 1
                    offset = max(end, following)
