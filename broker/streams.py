"""Broker.Append and Broker.Fetch: the long-lived streams of the data path.

Each stream owns a nursery: a reply that must wait (an fsync, a long-poll fetch) runs as a task
in it, so when the gateway goes away every task that stream started is cancelled with it. A
mixin of ``broker.service.BrokerService``; the methods take the generated service's names.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from kio.schema.errors import ErrorCode

from broker import metrics
from broker.log import MessageTooLarge, OffsetOutOfRange, PartitionLog
from broker.producers import ProducerError
from broker.topics import TopicError, TopicRegistry
from broker.txn_coordinator import TransactionCoordinator
from kelp import grpc, recordbatch
from kelp.batchcheck import BatchRejected
from kelp.fetch_wire import FetchReplyWire
from kelp.mux import serve_each
from kelp.recordbatch import CorruptBatch, UnsupportedMagic
from kelp.records import DEFAULT_FETCH_MAX_BYTES
from kelp.rpc.broker import v1 as pb

if TYPE_CHECKING:
    from broker.replication import Replication

log = logging.getLogger("kelp.broker.service")

READ_COMMITTED = 1  # Fetch's isolation_level

# A fetch never parks longer than this, whatever the client asks.
MAX_FETCH_WAIT_S = 30.0


class DataStreams:
    """Append and Fetch over ``registry``; counts what is open and parked for /health."""

    registry: TopicRegistry
    transactions: TransactionCoordinator | None
    # In a cluster: which partitions this broker leads, their high-water marks, acks=all.
    replication: Replication | None
    append_delay_s: float  # a test knob: every append as slow as a slow disk would make it
    open_streams: int
    pending_appends: int
    pending_fetches: int

    # -- append stream ----------------------------------------------------------------------

    async def append(self, recv: Callable[[], Awaitable[pb.AppendRequest | None]],
                     send: Callable[[pb.AppendReply], None]) -> None:
        """Appends in arrival order; each reply goes out once its records are as durable as
        the request's acks ask."""
        self.open_streams += 1
        try:
            async with trio.open_nursery() as nursery:
                while (request := await recv()) is not None:
                    if self.append_delay_s:
                        await trio.sleep(self.append_delay_s)
                    # Written here, in arrival order; only the wait for fsync is a task.
                    reply, durable = self._append(request)
                    if reply.error_code:
                        metrics.APPEND_ERRORS.labels(ErrorCode(reply.error_code).name).inc()
                    if durable is None:
                        # acks=0 gets a reply too (its Kafka client gets none): the gateway
                        # counts appends outstanding to bound its backlog.
                        send(reply)
                    else:
                        nursery.start_soon(self._reply_when_durable, reply, durable, send)
        finally:
            self.open_streams -= 1

    def _append(self, request: pb.AppendRequest) -> tuple[pb.AppendReply, _Pending | None]:
        reply = pb.AppendReply(request_id=request.request_id, base_offset=-1, log_append_time=-1)
        try:
            plog = self.registry.partition(request.topic, request.partition)
            min_insync = 1
            if self.replication is not None:
                self.replication.check_leader(request.topic, request.partition)
                if request.acks == -1:
                    min_insync = self._min_insync(request.topic)
                    self.replication.check_in_sync(request.topic, request.partition,
                                                   min_insync)
            refused = self._txn_refusal(request)
            if refused is not None:
                reply.error_code, reply.error_message = refused
                return reply, None
            result = plog.append(request.records)
        except TopicError as exc:
            reply.error_code, reply.error_message = exc.code, str(exc)
            return reply, None
        except ProducerError as exc:
            reply.error_code, reply.error_message = exc.code, str(exc)
            return reply, None
        except MessageTooLarge as exc:
            reply.error_code, reply.error_message = ErrorCode.message_too_large, str(exc)
            return reply, None
        except UnsupportedMagic as exc:
            reply.error_code = ErrorCode.unsupported_for_message_format
            reply.error_message = str(exc)
            return reply, None
        except CorruptBatch as exc:
            reply.error_code, reply.error_message = ErrorCode.corrupt_message, str(exc)
            return reply, None
        except BatchRejected as exc:
            reply.error_code, reply.error_message = exc.error, exc.message
            reply.record_errors = [pb.RecordError(batch_index=index, message=message)
                                   for index, message in exc.record_errors]
            return reply, None
        except OffsetOutOfRange as exc:  # the topic was deleted under this append
            reply.error_code = ErrorCode.unknown_topic_or_partition
            reply.error_message = str(exc)
            return reply, None
        except OSError as exc:
            log.error("append failed", extra={"topic": request.topic, "error": str(exc)})
            reply.error_code, reply.error_message = ErrorCode.kafka_storage_error, str(exc)
            return reply, None
        metrics.PRODUCED_BYTES.labels(request.topic).inc(len(request.records))
        metrics.PRODUCED_RECORDS.labels(request.topic).inc(result.last_offset -
                                                           result.base_offset + 1)
        reply.base_offset = result.base_offset
        reply.log_append_time = result.log_append_time
        reply.log_start_offset = plog.log_start_offset
        replicated_end = -1
        if self.replication is not None:
            self.replication.on_local_append(request.topic, request.partition, plog)
            if request.acks == -1 and plog.replicated_hwm is not None:
                replicated_end = result.last_offset + 1
        mark = result.write_mark if request.acks == -1 and plog.config.sync_on_ack else 0
        if mark or replicated_end >= 0:
            return reply, _Pending(plog, request.topic, request.partition, mark,
                                   replicated_end, min_insync)
        return reply, None

    def _min_insync(self, topic: str) -> int:
        known = self.registry.get(topic)
        value = self.registry.defaults.effective({} if known is None else known.configs).get(
            "min.insync.replicas", "1")
        try:
            return int(value)
        except ValueError:
            return 1

    def _txn_refusal(self, request: pb.AppendRequest) -> tuple[ErrorCode, str] | None:
        """Why a transactional batch may not be written (its producer is fenced, or the
        partition is not in its open transaction); checked with no await before the append."""
        records = request.records
        if len(records) < recordbatch.HEADER_SIZE or records[recordbatch.MAGIC] != 2 or not (
                records[recordbatch.ATTRIBUTES + 1] & recordbatch.TRANSACTIONAL_BIT):
            return None
        header = recordbatch.parse_header(records)
        if self.transactions is None:
            if self.replication is not None:
                # In a cluster the coordinator is usually another broker: as Kafka's leaders
                # before KIP-890, this one takes the batch; the partition's producer state
                # still fences older epochs, and the coordinator's markers end it.
                return None
            return ErrorCode.invalid_txn_state, "this broker has no transaction coordinator"
        return self.transactions.append_error(header.producer_id, header.producer_epoch,
                                              request.topic, request.partition)

    async def _reply_when_durable(self, reply: pb.AppendReply, pending: _Pending,
                                  send: Callable[[pb.AppendReply], None]) -> None:
        plog = pending.plog
        self.pending_appends += 1
        try:
            if pending.write_mark:
                await plog.wait_durable(pending.write_mark)
            if pending.replicated_end >= 0 and self.replication is not None:
                await self.replication.wait_replicated(
                    pending.topic, pending.partition, plog, pending.replicated_end,
                    pending.min_insync)
        except TopicError as exc:  # leadership moved, or too few replicas hold it
            reply.error_code, reply.error_message = exc.code, str(exc)
        except OffsetOutOfRange as exc:  # the topic was deleted before its sync
            reply.error_code = ErrorCode.unknown_topic_or_partition
            reply.error_message = str(exc)
        except OSError as exc:
            reply.error_code, reply.error_message = ErrorCode.kafka_storage_error, str(exc)
        except Exception as exc:
            # A bug must cost this append, never the stream every producer's appends ride on.
            log.exception("append failed", extra={"dir": str(plog.directory)})
            reply.error_code = ErrorCode.unknown_server_error
            reply.error_message = f"kelp: {type(exc).__name__}"
        finally:
            self.pending_appends -= 1
        send(reply)

    # -- fetch stream -----------------------------------------------------------------------

    async def fetch(self, recv: Callable[[], Awaitable[pb.FetchRequest | None]],
                    send: Callable[[pb.FetchReply], None]) -> None:
        """Each fetch parks in its own task until it has data or its wait ends; a request
        with ``cancel`` drops the parked fetch of that id."""
        self.open_streams += 1
        try:
            await serve_each(recv, functools.partial(self._fetch_task, send=send))
        finally:
            self.open_streams -= 1

    async def _fetch_task(self, request: pb.FetchRequest, send: grpc.StreamSender) -> None:
        self.pending_fetches += 1
        try:
            available = await self._wait_for_data(request)
            # Bound the fetched bytes this stream holds: read only once the replies
            # already queued for the gateway leave room (backpressure per gateway stream).
            # Reserve what the read can return (what the log holds past the offsets,
            # within the request's budget), not the budget: one big max_bytes must not
            # serialise every other fetch on the stream. The read then stays within what
            # was reserved, though more may have arrived meanwhile; only KIP-74's one
            # batch larger than the whole budget can pass it.
            reserved = await send.reserve(min(_fetch_budget(request), available))
            try:
                reply = await self._read(request, reserved)
            except BaseException:
                send.release(reserved)
                raise
            send(reply, size=sum(len(p.records) for p in reply.partitions),
                 reserved=reserved)
        finally:
            self.pending_fetches -= 1

    async def _wait_for_data(self, request: pb.FetchRequest) -> int:
        """Park until ``min_bytes`` are available, or an error, or ``max_wait_ms``; returns
        the bytes available then."""
        deadline = trio.current_time() + min(max(request.max_wait_ms, 0) / 1000, MAX_FETCH_WAIT_S)
        min_bytes = max(request.min_bytes, 1)
        while True:
            available, errors = self._available(request)
            if errors or available >= min_bytes or trio.current_time() >= deadline:
                return available
            woken = trio.Event()
            logs = [self.registry.partition(p.topic, p.partition) for p in request.partitions
                    if self.registry.get(p.topic) is not None]
            for plog in logs:
                plog.add_append_listener(woken.set)
            try:
                with trio.move_on_at(deadline):
                    await woken.wait()
            finally:
                for plog in logs:
                    plog.remove_append_listener(woken.set)

    def _available(self, request: pb.FetchRequest) -> tuple[int, bool]:
        total, errors = 0, False
        committed_only = request.isolation_level == READ_COMMITTED
        for part in request.partitions:
            try:
                plog = self._served(part.topic, part.partition)
                total += plog.bytes_after(part.offset, plog.visible_end(committed_only))
            except (TopicError, OffsetOutOfRange):
                errors = True
        return total, errors

    async def _read(self, request: pb.FetchRequest, budget: int) -> pb.FetchReply:
        """Read the partitions within ``budget`` bytes (at most the request's max_bytes)."""
        budget = min(budget, _fetch_budget(request))
        may_exceed = budget > 0  # nothing was available (or reserved): answer without data
        committed_only = request.isolation_level == READ_COMMITTED
        results = []
        for part in request.partitions:
            out = pb.FetchedPartition(topic=part.topic, partition=part.partition,
                                      high_watermark=-1, log_start_offset=-1,
                                      last_stable_offset=-1)
            try:
                plog = self._served(part.topic, part.partition)
                out.high_watermark = plog.high_watermark
                out.log_start_offset = plog.log_start_offset
                # Taken before the read: a marker written meanwhile only moves it later.
                out.last_stable_offset = stable = plog.last_stable_offset
                # Kafka returns at least one batch even past the budget, but only for the first
                # partition that has data; later ones respect what remains (KIP-74).
                limit = min(part.max_bytes, budget) if part.max_bytes > 0 else budget
                first_with_data = not any(r.records or r.file for r in results)
                if budget > 0 or (first_with_data and may_exceed):
                    read = await plog.read(part.offset, limit, at_least_one=first_with_data,
                                           end=plog.visible_end(committed_only))
                    if request.file_ranges and read.location is not None:
                        # The gateway shares this host: it sends the bytes from the file.
                        where = read.location
                        out.file = pb.FileRange(path=where.path, device=where.device,
                                                inode=where.inode, position=where.position,
                                                size=len(read.records))
                    else:
                        out.records = read.records
                    out.high_watermark = read.high_watermark
                    if read.records:
                        metrics.FETCHED_BYTES.labels(part.topic).inc(len(read.records))
                        metrics.FETCHED_RECORDS.labels(part.topic).inc(
                            metrics.records_in(read.records))
                    budget -= len(read.records)
                    if committed_only and read.records:
                        out.aborted = [pb.AbortedTransaction(producer_id=txn.producer_id,
                                                             first_offset=txn.first_offset)
                                       for txn in plog.aborted_between(part.offset, stable)]
            except TopicError as exc:
                out.error_code = exc.code
            except OffsetOutOfRange:
                out.error_code = ErrorCode.offset_out_of_range
            results.append(out)
        # Written with its records copied once, not by betterproto (see kelp.fetch_wire).
        return FetchReplyWire(request_id=request.request_id, partitions=results)

    def _served(self, topic: str, partition: int) -> PartitionLog:
        """The partition's log, if this broker serves its clients (in a cluster: leads it)."""
        plog = self.registry.partition(topic, partition)
        if self.replication is not None:
            self.replication.check_leader(topic, partition)
        return plog

    # The names the cancellation tests drive the streams by.
    serve_append = append
    serve_fetch = fetch


@dataclass(frozen=True)
class _Pending:
    """What an acks=all reply waits for: its bytes on disk (``write_mark``, 0: not asked) and
    in a cluster every in-sync replica holding offsets below ``replicated_end`` (-1: none)."""

    plog: PartitionLog
    topic: str
    partition: int
    write_mark: int
    replicated_end: int
    min_insync: int


def _fetch_budget(request: pb.FetchRequest) -> int:
    return request.max_bytes if request.max_bytes > 0 else DEFAULT_FETCH_MAX_BYTES
