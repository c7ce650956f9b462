"""The broker's gRPC service: thin trio handlers over the topic registry and partition logs.

Append and Fetch are long-lived bidirectional streams (one per gateway connection slot). Each
stream owns a nursery: a reply that must wait (an fsync, a long-poll fetch) runs as a task in
it, so when the gateway goes away every task that stream started is cancelled with it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
import trio
from kio.schema.errors import ErrorCode

from broker.log import MessageTooLarge, OffsetOutOfRange
from broker.producer_ids import ProducerIds
from broker.producers import ProducerError
from broker.topics import TopicError, TopicRegistry
from kelp import __version__, grpc
from kelp.batchcheck import BatchRejected
from kelp.process import count_tasks
from kelp.recordbatch import CorruptBatch, UnsupportedMagic
from kelp.rpc.broker import v1 as pb

log = logging.getLogger("kelp.broker.service")

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
SOURCE_TOPIC = 1
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = range(4)
EARLIEST = -2
LATEST = -1
MAX_TIMESTAMP = -3
# KIP-405 (tiered storage): kelp keeps every segment local, so the earliest local offset is
# the log start, and there is no tiered or pending-upload offset to report (-1, as Kafka does
# for a topic without remote storage).
EARLIEST_LOCAL = -4
LATEST_TIERED = -5
EARLIEST_PENDING_UPLOAD = -6
# A fetch never parks longer than this, whatever the client asks.
MAX_FETCH_WAIT_S = 30.0
DEFAULT_FETCH_MAX_BYTES = 50 * 1024 * 1024


class BrokerService:
    def __init__(self, registry: TopicRegistry, *, auto_create_partitions: int = 1,
                 append_delay_s: float = 0.0) -> None:
        self.registry = registry
        self.producer_ids = ProducerIds(registry.data_dir)
        self.auto_create_partitions = auto_create_partitions
        # A test knob that makes every append slow, as a slow disk would.
        self.append_delay_s = append_delay_s
        # Introspection for /health and the tests: what is open and parked right now.
        self.open_streams = 0
        self.pending_appends = 0
        self.pending_fetches = 0

    def mapping(self) -> dict[str, grpclib.const.Handler]:
        unary: dict[str, tuple[Callable[[Any], Awaitable[Any]], type, type]] = {
            "Health": (self.health, pb.HealthRequest, pb.HealthReply),
            "CreateTopics": (self.create_topics, pb.CreateTopicsRequest, pb.CreateTopicsReply),
            "DescribeTopics": (self.describe_topics, pb.DescribeTopicsRequest,
                               pb.DescribeTopicsReply),
            "ListOffsets": (self.list_offsets, pb.ListOffsetsRequest, pb.ListOffsetsReply),
            "DeleteTopics": (self.delete_topics, pb.DeleteTopicsRequest, pb.DeleteTopicsReply),
            "CreatePartitions": (self.create_partitions, pb.CreatePartitionsRequest,
                                 pb.CreatePartitionsReply),
            "DeleteRecords": (self.delete_records, pb.DeleteRecordsRequest,
                              pb.DeleteRecordsReply),
            "DescribeConfigs": (self.describe_configs, pb.DescribeConfigsRequest,
                                pb.DescribeConfigsReply),
            "AlterConfigs": (self.alter_configs, pb.AlterConfigsRequest, pb.AlterConfigsReply),
            "InitProducerId": (self.init_producer_id, pb.InitProducerIdRequest,
                               pb.InitProducerIdReply),
            "DescribeProducers": (self.describe_producers, pb.DescribeProducersRequest,
                                  pb.DescribeProducersReply),
        }
        mapping = {
            f"/broker.v1.Broker/{name}": grpc.unary_handler(fn, req, rep)
            for name, (fn, req, rep) in unary.items()
        }
        mapping["/broker.v1.Broker/Append"] = grpc.stream_handler(
            self.serve_append, pb.AppendRequest, pb.AppendReply)
        mapping["/broker.v1.Broker/Fetch"] = grpc.stream_handler(
            self.serve_fetch, pb.FetchRequest, pb.FetchReply)
        return mapping

    def counters(self) -> dict[str, int]:
        return {
            "open_streams": self.open_streams,
            "pending_appends": self.pending_appends,
            "pending_fetches": self.pending_fetches,
            "tasks": count_tasks(),
        }

    # -- control (unary) ------------------------------------------------------------------

    async def health(self, request: pb.HealthRequest) -> pb.HealthReply:
        return pb.HealthReply(status="ok", version=__version__, topics=len(self.registry.topics),
                              partitions=self.registry.partition_count(),
                              counters=self.counters())

    async def create_topics(self, request: pb.CreateTopicsRequest) -> pb.CreateTopicsReply:
        results = []
        for spec in request.topics:
            try:
                topic = await self.registry.create(spec.name, spec.partitions, dict(spec.configs),
                                             validate_only=request.validate_only)
                results.append(pb.TopicResult(name=spec.name, partitions=topic.partition_count,
                                              topic_id=topic.topic_id.bytes))
            except TopicError as exc:
                results.append(pb.TopicResult(name=spec.name, error_code=exc.code,
                                              error_message=str(exc)))
        return pb.CreateTopicsReply(results=results)

    async def delete_topics(self, request: pb.DeleteTopicsRequest) -> pb.DeleteTopicsReply:
        results = []
        targets = [(name, None) for name in request.names] + [
            (None, uuid.UUID(bytes=raw)) for raw in request.topic_ids]
        for name, topic_id in targets:
            if topic_id is not None:
                found = self.registry.by_id(topic_id)
                if found is None:
                    results.append(pb.TopicResult(
                        topic_id=topic_id.bytes, error_code=ErrorCode.unknown_topic_id,
                        error_message=f"unknown topic id {topic_id}"))
                    continue
                name = found.name
            assert name is not None
            try:
                topic = await self.registry.delete(name)
                results.append(pb.TopicResult(name=name, topic_id=topic.topic_id.bytes))
            except TopicError as exc:
                results.append(pb.TopicResult(name=name, error_code=exc.code,
                                              error_message=str(exc)))
        return pb.DeleteTopicsReply(results=results)

    async def create_partitions(self, request: pb.CreatePartitionsRequest
                                ) -> pb.CreatePartitionsReply:
        results = []
        for target in request.targets:
            try:
                topic = await self.registry.add_partitions(
                    target.topic, target.count, validate_only=request.validate_only)
                results.append(pb.TopicResult(name=target.topic,
                                              partitions=topic.partition_count))
            except TopicError as exc:
                results.append(pb.TopicResult(name=target.topic, error_code=exc.code,
                                              error_message=str(exc)))
        return pb.CreatePartitionsReply(results=results)

    async def describe_topics(self, request: pb.DescribeTopicsRequest) -> pb.DescribeTopicsReply:
        names = list(request.names) or sorted(self.registry.topics)
        infos = []
        for name in names:
            topic = self.registry.get(name)
            error = ErrorCode.none
            if topic is None and request.auto_create:
                try:
                    topic = await self.registry.create(name, self.auto_create_partitions)
                except TopicError as exc:
                    error = exc.code
            if topic is None:
                infos.append(pb.TopicInfo(name=name, error_code=error or
                                          ErrorCode.unknown_topic_or_partition))
                continue
            info = pb.TopicInfo(name=name, topic_id=topic.topic_id.bytes,
                                partitions=topic.partition_count,
                                configs=dict(topic.configs), internal=topic.internal)
            if request.include_partitions:
                info.partition_states = [
                    pb.PartitionState(partition=index, log_start_offset=plog.log_start_offset,
                                      high_watermark=plog.high_watermark,
                                      size_bytes=plog.size_bytes)
                    for index, plog in enumerate(topic.logs)]
            infos.append(info)
        return pb.DescribeTopicsReply(topics=infos)

    async def list_offsets(self, request: pb.ListOffsetsRequest) -> pb.ListOffsetsReply:
        answers = []
        for query in request.queries:
            ref = query.partition
            answer = pb.ListOffsetsReplyAnswer(partition=ref, offset=-1, timestamp=-1)
            try:
                plog = self.registry.partition(ref.topic, ref.partition)
            except TopicError as exc:
                answer.error_code = exc.code
                answers.append(answer)
                continue
            if query.timestamp in (EARLIEST, EARLIEST_LOCAL):
                answer.offset = plog.log_start_offset
            elif query.timestamp in (LATEST_TIERED, EARLIEST_PENDING_UPLOAD):
                pass  # nothing is tiered: offset -1
            elif query.timestamp == LATEST:
                answer.offset = plog.high_watermark
            elif query.timestamp == MAX_TIMESTAMP or query.timestamp >= 0:
                if query.timestamp == MAX_TIMESTAMP:
                    found = await plog.max_timestamp_offset()
                else:
                    found = await plog.offset_for_timestamp(query.timestamp)
                if found is not None:
                    answer.offset, answer.timestamp = found
            else:
                answer.error_code = ErrorCode.invalid_request
            answers.append(answer)
        return pb.ListOffsetsReply(answers=answers)

    async def delete_records(self, request: pb.DeleteRecordsRequest) -> pb.DeleteRecordsReply:
        results = []
        for target in request.targets:
            ref = target.partition
            result = pb.DeleteRecordsReplyResult(partition=ref, low_watermark=-1)
            try:
                plog = self.registry.partition(ref.topic, ref.partition)
                result.low_watermark = await plog.delete_records(target.offset)
            except TopicError as exc:
                result.error_code, result.error_message = exc.code, str(exc)
            except OffsetOutOfRange as exc:
                result.error_code = ErrorCode.offset_out_of_range
                result.error_message = str(exc)
            results.append(result)
        return pb.DeleteRecordsReply(results=results)

    async def describe_configs(self, request: pb.DescribeConfigsRequest
                               ) -> pb.DescribeConfigsReply:
        resources = []
        for wanted in request.resources:
            out = pb.DescribeConfigsReplyResource(type=wanted.type, name=wanted.name)
            defaults = self.registry.defaults.values
            if wanted.type == TOPIC_RESOURCE:
                topic = self.registry.get(wanted.name)
                if topic is None:
                    out.error_code = ErrorCode.unknown_topic_or_partition
                    out.error_message = f"unknown topic {wanted.name!r}"
                    resources.append(out)
                    continue
                entries = {name: pb.ConfigEntry(name=name, value=value,
                                                source=SOURCE_DEFAULT)
                           for name, value in defaults.items()}
                entries.update({name: pb.ConfigEntry(name=name, value=value,
                                                     source=SOURCE_TOPIC)
                                for name, value in topic.configs.items()})
            elif wanted.type == BROKER_RESOURCE:
                entries = {name: pb.ConfigEntry(name=name, value=value, read_only=True,
                                                source=SOURCE_STATIC_BROKER)
                           for name, value in defaults.items()}
            else:
                out.error_code = ErrorCode.invalid_request
                out.error_message = f"unsupported config resource type {wanted.type}"
                resources.append(out)
                continue
            keys = list(wanted.keys) or sorted(entries)
            out.entries = [entries[k] for k in keys if k in entries]
            resources.append(out)
        return pb.DescribeConfigsReply(resources=resources)

    async def alter_configs(self, request: pb.AlterConfigsRequest) -> pb.AlterConfigsReply:
        resources = []
        for wanted in request.resources:
            out = pb.AlterConfigsReplyResource(type=wanted.type, name=wanted.name)
            resources.append(out)
            if wanted.type != TOPIC_RESOURCE:
                out.error_code = ErrorCode.invalid_request
                out.error_message = "only topic configs can be altered at run time"
                continue
            topic = self.registry.get(wanted.name)
            if topic is None:
                out.error_code = ErrorCode.unknown_topic_or_partition
                out.error_message = f"unknown topic {wanted.name!r}"
                continue
            configs = {} if wanted.replace_all else dict(topic.configs)
            try:
                for op in wanted.ops:
                    apply_config_op(configs, op, self.registry.defaults.values)
                await self.registry.alter_configs(wanted.name, configs,
                                                  validate_only=request.validate_only)
            except TopicError as exc:
                out.error_code, out.error_message = exc.code, str(exc)
        return pb.AlterConfigsReply(resources=resources)

    async def init_producer_id(self, request: pb.InitProducerIdRequest
                               ) -> pb.InitProducerIdReply:
        if request.transactional_id:
            # Transactions need a transaction coordinator, which kelp does not have yet.
            return pb.InitProducerIdReply(error_code=ErrorCode.coordinator_not_available,
                                          producer_id=-1, producer_epoch=-1)
        producer_id, epoch = await self.producer_ids.init(request.producer_id,
                                                          request.producer_epoch)
        return pb.InitProducerIdReply(producer_id=producer_id, producer_epoch=epoch)

    async def describe_producers(self, request: pb.DescribeProducersRequest
                                 ) -> pb.DescribeProducersReply:
        partitions = []
        for ref in request.partitions:
            out = pb.DescribeProducersReplyPartition(partition=ref)
            try:
                plog = self.registry.partition(ref.topic, ref.partition)
            except TopicError as exc:
                out.error_code, out.error_message = exc.code, str(exc)
            else:
                out.producers = [
                    pb.DescribeProducersReplyProducer(
                        producer_id=pid, producer_epoch=entry.epoch,
                        last_sequence=entry.batches[-1].last_sequence if entry.batches else -1)
                    for pid, entry in sorted(plog.producers.entries.items())]
            partitions.append(out)
        return pb.DescribeProducersReply(partitions=partitions)

    # -- append stream ----------------------------------------------------------------------

    async def serve_append(self, recv: Callable[[], Awaitable[pb.AppendRequest | None]],
                           send: Callable[[pb.AppendReply], None]) -> None:
        self.open_streams += 1
        try:
            async with trio.open_nursery() as nursery:
                while (request := await recv()) is not None:
                    if self.append_delay_s:
                        await trio.sleep(self.append_delay_s)
                    # Written here, in arrival order; only the wait for fsync is a task.
                    reply, durable = self._append(request)
                    if durable is None:
                        # acks=0 gets a reply too (its Kafka client gets none): the gateway
                        # counts appends outstanding to bound its backlog.
                        send(reply)
                    else:
                        nursery.start_soon(self._reply_when_durable, reply, durable, send)
        finally:
            self.open_streams -= 1

    def _append(self, request: pb.AppendRequest) -> tuple[pb.AppendReply, Any]:
        reply = pb.AppendReply(request_id=request.request_id, base_offset=-1, log_append_time=-1)
        try:
            plog = self.registry.partition(request.topic, request.partition)
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
        reply.base_offset = result.base_offset
        reply.log_append_time = result.log_append_time
        reply.log_start_offset = plog.log_start_offset
        if request.acks == -1 and plog.config.sync_on_ack:
            return reply, (plog, result.write_mark)
        return reply, None

    async def _reply_when_durable(self, reply: pb.AppendReply, durable: Any,
                                  send: Callable[[pb.AppendReply], None]) -> None:
        plog, mark = durable
        self.pending_appends += 1
        try:
            await plog.wait_durable(mark)
        except OSError as exc:
            reply.error_code, reply.error_message = ErrorCode.kafka_storage_error, str(exc)
        finally:
            self.pending_appends -= 1
        send(reply)

    # -- fetch stream -----------------------------------------------------------------------

    async def serve_fetch(self, recv: Callable[[], Awaitable[pb.FetchRequest | None]],
                          send: Callable[[pb.FetchReply], None]) -> None:
        self.open_streams += 1
        scopes: dict[int, trio.CancelScope] = {}
        try:
            async with trio.open_nursery() as nursery:
                while (request := await recv()) is not None:
                    if request.cancel:
                        scope = scopes.get(request.request_id)
                        if scope is not None:
                            scope.cancel()
                        continue
                    scope = trio.CancelScope()
                    scopes[request.request_id] = scope
                    nursery.start_soon(self._fetch_task, request, scope, scopes, send)
                nursery.cancel_scope.cancel()  # the gateway closed the stream
        finally:
            self.open_streams -= 1

    async def _fetch_task(self, request: pb.FetchRequest, scope: trio.CancelScope,
                          scopes: dict[int, trio.CancelScope], send: grpc.StreamSender) -> None:
        self.pending_fetches += 1
        try:
            with scope:
                await self._wait_for_data(request)
                # Bound the fetched bytes this stream holds: read only once the replies
                # already queued for the gateway leave room (backpressure per gateway stream).
                # Reserve what the read can return (what the log holds past the offsets,
                # within the request's budget), not the budget: one big max_bytes must not
                # serialise every other fetch on the stream.
                available, _errors = self._available(request)
                reserved = await send.reserve(min(_fetch_budget(request), available))
                try:
                    reply = await self._read(request)
                except BaseException:
                    send.release(reserved)
                    raise
                send(reply, size=sum(len(p.records) for p in reply.partitions),
                     reserved=reserved)
        finally:
            self.pending_fetches -= 1
            scopes.pop(request.request_id, None)

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchReply:
        """Answer once ``min_bytes`` are available or ``max_wait_ms`` has passed."""
        await self._wait_for_data(request)
        return await self._read(request)

    async def _wait_for_data(self, request: pb.FetchRequest) -> None:
        """Park until ``min_bytes`` are available, or an error, or ``max_wait_ms``."""
        deadline = trio.current_time() + min(max(request.max_wait_ms, 0) / 1000, MAX_FETCH_WAIT_S)
        min_bytes = max(request.min_bytes, 1)
        while True:
            available, errors = self._available(request)
            if errors or available >= min_bytes or trio.current_time() >= deadline:
                break
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
        for part in request.partitions:
            try:
                total += self.registry.partition(part.topic, part.partition).bytes_after(
                    part.offset)
            except (TopicError, OffsetOutOfRange):
                errors = True
        return total, errors

    async def _read(self, request: pb.FetchRequest) -> pb.FetchReply:
        budget = _fetch_budget(request)
        results = []
        for part in request.partitions:
            out = pb.FetchedPartition(topic=part.topic, partition=part.partition,
                                      high_watermark=-1, log_start_offset=-1)
            try:
                plog = self.registry.partition(part.topic, part.partition)
                out.high_watermark = plog.high_watermark
                out.log_start_offset = plog.log_start_offset
                # Kafka returns at least one batch even past the budget, but only for the first
                # partition that has data; later ones respect what remains.
                limit = min(part.max_bytes, budget) if part.max_bytes > 0 else budget
                if budget > 0 or not any(r.records for r in results):
                    read = await plog.read(part.offset, limit)
                    out.records = read.records
                    out.high_watermark = read.high_watermark
                    budget -= len(read.records)
            except TopicError as exc:
                out.error_code = exc.code
            except OffsetOutOfRange:
                out.error_code = ErrorCode.offset_out_of_range
            results.append(out)
        return pb.FetchReply(request_id=request.request_id, partitions=results)


def _fetch_budget(request: pb.FetchRequest) -> int:
    return request.max_bytes if request.max_bytes > 0 else DEFAULT_FETCH_MAX_BYTES


def apply_config_op(configs: dict[str, str], op: pb.AlterConfigsRequestOp,
                    defaults: dict[str, str]) -> None:
    """One IncrementalAlterConfigs operation; list values are comma-separated, as in Kafka."""
    if op.op == OP_SET:
        if op.value is None:
            raise TopicError(ErrorCode.invalid_config, f"{op.name}: SET needs a value")
        configs[op.name] = op.value
    elif op.op == OP_DELETE:
        configs.pop(op.name, None)
    elif op.op in (OP_APPEND, OP_SUBTRACT):
        current = configs.get(op.name, defaults.get(op.name, ""))
        items = [item for item in current.split(",") if item]
        change = [item for item in (op.value or "").split(",") if item]
        if op.op == OP_APPEND:
            items += [item for item in change if item not in items]
        else:
            items = [item for item in items if item not in change]
        configs[op.name] = ",".join(items)
    else:
        raise TopicError(ErrorCode.invalid_request, f"unknown config operation {op.op}")
