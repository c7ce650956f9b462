"""The broker's gRPC service: ``BrokerService`` implements the generated ``BrokerBase``.

Thin trio handlers over the topic registry and partition logs. The service is one class made
of small parts, each in its own module, each implementing some of the generated methods by
their generated names: the control calls here; Append and Fetch (``broker.streams``); group
coordination (``broker.group_service``); UCX segment leases (``broker.ucx_export``); the read
API of the sidecar and the mount (``broker.exports``). ``kelp.grpc.service_mapping`` serves it
and refuses to start if a generated method is not implemented.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpclib.const
import trio
from grpclib.exceptions import GRPCError
from kio.schema.errors import ErrorCode

from broker import metrics
from broker.broker_configs import BrokerConfigs
from broker.config_service import ConfigCalls, QuotaCalls
from broker.coordination import CoordinationHost, coordinated
from broker.exports import ExportCalls, Exports
from broker.group_service import GroupCalls
from broker.groups import Coordinator
from broker.log import OffsetOutOfRange
from broker.producer_ids import BlockAllocator, ProducerIds
from broker.security import SecurityStore
from broker.security_service import SecurityCalls
from broker.streams import DataStreams
from broker.topics import TopicError, TopicRegistry
from broker.transactions import TxnError
from broker.txn_coordinator import TransactionCoordinator
from broker.txn_markers import write_here
from broker.txn_service import TxnCalls
from broker.ucx_export import LeaseCalls, UcxExporter
from kelp import __version__, grpc
from kelp.process import count_tasks
from kelp.rpc.broker import v1 as pb

if TYPE_CHECKING:
    from broker.cluster_security import ClusterSecurity
    from broker.cluster_topics import ClusterTopics
    from broker.partition_admin import PartitionAdmin
    from broker.replication import Replication

EARLIEST = -2
LATEST = -1
MAX_TIMESTAMP = -3
# KIP-405 (tiered storage): kelp keeps every segment local, so the earliest local offset is
# the log start, and there is no tiered or pending-upload offset to report (-1, as Kafka does
# for a topic without remote storage).
EARLIEST_LOCAL = -4
LATEST_TIERED = -5
EARLIEST_PENDING_UPLOAD = -6


class BrokerService(DataStreams, GroupCalls, TxnCalls, ConfigCalls, QuotaCalls, SecurityCalls,
                    LeaseCalls, ExportCalls, pb.BrokerBase):
    """The whole Broker service. Parts a caller does not pass stand in harmlessly: no
    ``coordinator`` answers the group calls UNIMPLEMENTED (no ``transactions``, the
    transaction calls), no ``exporter`` answers OpenRead
    503 as ``--no-ucx`` does, ``exports`` defaults to the registry's with default chunks."""

    def __init__(self, registry: TopicRegistry, *, coordinator: Coordinator | None = None,
                 exports: Exports | None = None, exporter: UcxExporter | None = None,
                 broker_configs: BrokerConfigs | None = None,
                 security: SecurityStore | None = None,
                 transactions: TransactionCoordinator | None = None,
                 producer_ids: BlockAllocator | None = None,
                 auto_create_partitions: int = 1, append_delay_s: float = 0.0) -> None:
        self.registry = registry
        # Without one, the broker's configs are the registry's defaults, kept in memory only.
        self.broker_configs = broker_configs or BrokerConfigs.from_flags(
            [f"{name}={value}" for name, value in registry.defaults.values.items()])
        self._config_lock = trio.Lock()
        # Where a restarted broker starts: a gateway's known version never matches by chance.
        self._quotas_version = secrets.randbits(62) + 1
        self._quotas_changed = trio.Event()
        # SCRAM credentials and ACLs (in memory only without one, as in unit tests).
        self.security = security or SecurityStore(None)
        self._security_lock = trio.Lock()
        self._security_changed = trio.Event()
        self.cluster_security: ClusterSecurity | None = None
        self.producer_ids = producer_ids or ProducerIds(registry.data_dir)
        self.transactions = transactions
        self.auto_create_partitions = auto_create_partitions
        self.coordinator = coordinator
        # In a cluster: the coordinators come and go with the lead of the coordination
        # partition (broker.coordination), and the calls that use them run under it.
        self.coordination_host: CoordinationHost | None = None
        # In a cluster (--etcd): CreateTopics places topics through etcd (broker.cluster_topics).
        self.cluster_topics: ClusterTopics | None = None
        # In a cluster: replication between the brokers (broker.replication), and
        # ElectLeaders and reassignments through etcd (broker.partition_admin).
        self.replication: Replication | None = None
        self.partition_admin: PartitionAdmin | None = None
        self.exports = exports if exports is not None else Exports(registry)
        self.exporter = (exporter if exporter is not None
                         else UcxExporter(self.exports, "127.0.0.1", 0, enabled=False))
        # A test knob that makes every append slow, as a slow disk would.
        self.append_delay_s = append_delay_s
        # Introspection for /health and the tests: what is open and parked right now.
        self.open_streams = 0
        self.pending_appends = 0
        self.pending_fetches = 0

    def mapping(self) -> dict[str, grpclib.const.Handler]:
        return grpc.service_mapping(self)

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
                replication = spec.replication_factor
                if self.cluster_topics is not None:
                    topic, replication = await self.cluster_topics.create(
                        spec.name, spec.partitions, replication, dict(spec.configs),
                        validate_only=request.validate_only)
                else:
                    if replication not in (0, -1, 1):
                        raise TopicError(ErrorCode.invalid_replication_factor,
                                         f"replication factor {replication} is not available: "
                                         "this cluster has one broker")
                    replication = 1
                    topic = await self.registry.create(spec.name, spec.partitions,
                                                       dict(spec.configs),
                                                       validate_only=request.validate_only)
                results.append(pb.TopicResult(name=spec.name, partitions=topic.partition_count,
                                              topic_id=topic.topic_id.bytes,
                                              replication_factor=replication))
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
                if self.cluster_topics is not None:
                    topic = await self.cluster_topics.delete(name)
                else:
                    topic = await self.registry.delete(name)
                metrics.forget_topic(name)
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
                grow = (self.registry.add_partitions if self.cluster_topics is None
                        else self.cluster_topics.add_partitions)
                topic = await grow(target.topic, target.count,
                                   validate_only=request.validate_only)
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
                    if self.cluster_topics is not None:  # placed by the cluster, default RF
                        topic, _ = await self.cluster_topics.create(
                            name, self.auto_create_partitions, -1, {})
                    else:
                        topic = await self.registry.create(name, self.auto_create_partitions)
                except TopicError as exc:
                    error = exc.code
                    if exc.code == ErrorCode.topic_already_exists:  # another broker won
                        topic = self.registry.get(name)
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

    # -- between the brokers of a cluster (broker.replication) ---------------------------------

    async def replica_fetch(self, request: pb.ReplicaFetchRequest) -> pb.ReplicaFetchReply:
        if self.replication is None:
            raise GRPCError(grpclib.const.Status.FAILED_PRECONDITION,
                                    "this broker is not in a cluster")
        return await self.replication.replica_fetch(request)

    async def replica_fetch_stream(
            self, recv: Callable[[], Awaitable[pb.ReplicaFetchRequest | None]],
            send: grpc.StreamSender) -> None:
        if self.replication is None:
            raise GRPCError(grpclib.const.Status.FAILED_PRECONDITION,
                            "this broker is not in a cluster")
        await self.replication.replica_fetch_stream(recv, send)

    async def leader_epoch_end(self, request: pb.LeaderEpochEndRequest
                               ) -> pb.LeaderEpochEndReply:
        if self.replication is None:
            raise GRPCError(grpclib.const.Status.FAILED_PRECONDITION,
                                    "this broker is not in a cluster")
        return await self.replication.leader_epoch_end(request)

    async def write_txn_marker(self, request: pb.WriteTxnMarkerRequest
                               ) -> pb.WriteTxnMarkerReply:
        if self.replication is None:
            raise GRPCError(grpclib.const.Status.FAILED_PRECONDITION,
                            "this broker is not in a cluster")
        try:
            await write_here(self.registry, self.replication, request.topic, request.partition,
                             request.producer_id, request.producer_epoch, request.kind)
        except TopicError as exc:
            return pb.WriteTxnMarkerReply(error_code=exc.code, error_message=str(exc))
        return pb.WriteTxnMarkerReply()

    def _admin(self) -> PartitionAdmin:
        if self.partition_admin is None:
            raise GRPCError(grpclib.const.Status.FAILED_PRECONDITION,
                            "this broker is not in a cluster")
        return self.partition_admin

    async def elect_leaders(self, request: pb.ElectLeadersRequest) -> pb.ElectLeadersReply:
        return await self._admin().elect_leaders(request)

    async def reassign_partitions(self, request: pb.ReassignPartitionsRequest
                                  ) -> pb.ReassignPartitionsReply:
        return await self._admin().reassign(request)

    async def list_reassignments(self, request: pb.ListReassignmentsRequest
                                 ) -> pb.ListReassignmentsReply:
        return await self._admin().list_reassignments(request)

    async def list_offsets(self, request: pb.ListOffsetsRequest) -> pb.ListOffsetsReply:
        answers = []
        for query in request.queries:
            ref = query.partition
            answer = pb.ListOffsetsReplyAnswer(partition=ref, offset=-1, timestamp=-1)
            try:
                plog = self._served(ref.topic, ref.partition)
            except TopicError as exc:
                answer.error_code = exc.code
                answers.append(answer)
                continue
            if query.timestamp in (EARLIEST, EARLIEST_LOCAL):
                answer.offset = plog.log_start_offset
            elif query.timestamp in (LATEST_TIERED, EARLIEST_PENDING_UPLOAD):
                pass  # nothing is tiered: offset -1
            elif query.timestamp == LATEST:
                answer.offset = (plog.last_stable_offset if query.isolation_level == 1
                                 else plog.high_watermark)
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

    async def init_producer_id(self, request: pb.InitProducerIdRequest
                               ) -> pb.InitProducerIdReply:
        if request.transactional_id is not None:
            return await self._init_transactional(request)
        # An idempotent producer's id: any broker hands one out (in a cluster, from a block
        # reserved in etcd), coordinator or not.
        producer_id, epoch = await self.producer_ids.init(request.producer_id,
                                                          request.producer_epoch)
        return pb.InitProducerIdReply(producer_id=producer_id, producer_epoch=epoch)

    @coordinated
    async def _init_transactional(self, request: pb.InitProducerIdRequest
                                  ) -> pb.InitProducerIdReply:
        """A transactional producer's id and epoch: the transaction coordinator's."""
        if self.transactions is None:
            return pb.InitProducerIdReply(error_code=ErrorCode.coordinator_not_available,
                                          producer_id=-1, producer_epoch=-1)
        try:
            producer_id, epoch = await self.transactions.init_producer_id(
                request.transactional_id, request.transaction_timeout_ms,
                request.producer_id, request.producer_epoch)
        except TxnError as exc:
            return pb.InitProducerIdReply(error_code=exc.code, producer_id=-1,
                                          producer_epoch=-1)
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
                table = plog.producers
                out.producers = [
                    pb.DescribeProducersReplyProducer(
                        producer_id=pid, producer_epoch=entry.epoch,
                        last_sequence=entry.batches[-1].last_sequence if entry.batches else -1,
                        last_timestamp=entry.last_ms or -1,
                        current_txn_start_offset=table.open_txns.get(pid, -1))
                    for pid, entry in sorted(table.entries.items())]
            partitions.append(out)
        return pb.DescribeProducersReply(partitions=partitions)

