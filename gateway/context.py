"""What every request handler shares: configuration, the broker client, a topic cache."""

from __future__ import annotations

import uuid
import zlib
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerClient, BrokerUnavailable
from gateway.idle_polls import IdlePolls
from gateway.listeners import Listener
from gateway.memory import BytePool, Output
from gateway.produce_order import ProduceOrder
from gateway.quotas import ClientQuotas
from gateway.sasl import MECHANISMS
from gateway.security import SecurityView, session
from gateway.validation_settings import TopicSettings
from kelp import acl
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb
from registry.state import RegistryState

if TYPE_CHECKING:
    from gateway.router import Router

NODE_ID = 0
COORDINATION_TOPIC = "__consumer_offsets"  # as broker.coordination names it
# What a group or transaction call gets while its coordinator broker cannot be reached (it is
# restarting, or in a cluster its lead is moving). This gateway stays the client's coordinator
# node, so "load in progress" (retry, same coordinator) rather than COORDINATOR_NOT_AVAILABLE:
# on that, librdkafka marks the coordinator dead and re-resolves it to this same node, tearing
# down its in-flight requests each time, and the group's heartbeats stall past the session.
COORDINATOR_UNREACHABLE = ErrorCode.coordinator_load_in_progress
# The client address of the connection a handler serves (for DescribeGroups' client_host).
current_peer: ContextVar[str] = ContextVar("current_peer", default="")
# The connection's unsent output, and the pool bytes the request being served holds until its
# response is written (see gateway.memory); None outside a Kafka connection.
current_output: ContextVar[Output | None] = ContextVar("current_output", default=None)
current_holds: ContextVar[list[tuple[BytePool, int]] | None] = ContextVar(
    "current_holds", default=None)
# The connection's idempotent-produce chains (see gateway.produce_order).
current_produce_order: ContextVar[ProduceOrder | None] = ContextVar(
    "current_produce_order", default=None)


@dataclass(frozen=True)
class GatewayConfig:
    advertised_host: str = "127.0.0.1"
    advertised_port: int = 9092
    auto_create_topics: bool = True
    max_request_bytes: int = 100 * 1024 * 1024
    # Request bytes one connection may have in flight before kelp stops reading it.
    max_inflight_bytes: int = 64 * 1024 * 1024
    cluster_id: str = "kelp-cluster"
    max_inflight_requests: int = 64
    # Testing: drop the connection instead of answering every Nth produce, after the broker
    # appended it, so producers must retry what was already stored (0: never).
    drop_produce_every: int = 0
    # Gateway-wide bytes of large requests being received or served (Kafka's
    # queued.max.request.bytes), and of fetch responses not yet written (see gateway.memory).
    queued_max_request_bytes: int = 64 * 1024 * 1024
    fetch_memory_bytes: int = 64 * 1024 * 1024
    # Kafka's connections.max.idle.ms, and how long one request may take to arrive whole.
    connections_max_idle_ms: int = 600_000
    request_timeout_ms: int = 30_000
    # Kafka's max.connections: client connections served at once (more wait to be accepted).
    max_connections: int = 10_000
    listen: str = "127.0.0.1:9092"  # the Kafka listener's HOST:PORT as given at start
    # Every Kafka listener (name, security protocol, bound and advertised address); empty:
    # one PLAINTEXT listener at ``listen``, advertised at advertised_host:port.
    listeners: tuple[Listener, ...] = ()
    sasl_mechanisms: tuple[str, ...] = MECHANISMS  # sasl.enabled.mechanisms
    # KIP-368's connections.max.reauth.ms: a SASL session lasts this long, then the client
    # must re-authenticate on the same connection or be disconnected (0: forever).
    connections_max_reauth_ms: int = 0
    authorizer: acl.Settings = field(default_factory=acl.Settings)
    ssl_principal_mapping_rules: str = "DEFAULT"


    def all_listeners(self) -> tuple[Listener, ...]:
        if self.listeners:
            return self.listeners
        host, _, port = self.listen.rpartition(":")
        return (Listener("PLAINTEXT", "PLAINTEXT", host.strip("[]"), int(port),
                         self.advertised_host, self.advertised_port),)


@dataclass(frozen=True, slots=True)
class TopicMeta:
    name: str
    topic_id: uuid.UUID
    partitions: int
    internal: bool


class DropConnection(Exception):
    """Raised by a handler to close its connection without answering (a test knob)."""


@dataclass
class GatewayContext:
    config: GatewayConfig
    broker: BrokerClient
    produces_answered: int = 0
    produces_dropped: int = 0
    # Topic metadata seen in the broker's replies; Fetch v13+ names topics by id.
    topics_by_id: dict[uuid.UUID, TopicMeta] = field(default_factory=dict)
    # The schema registry's state (None without a registry), for produce validation.
    registry_state: RegistryState | None = None
    # Internal topics and the principals that own them (the registry's topic): only those and
    # super users write to them over Kafka, whatever the ACLs say (with an authorizer on).
    owned_topics: dict[str, frozenset[str]] = field(default_factory=dict)
    topic_settings: TopicSettings = field(init=False)
    request_pool: BytePool = field(init=False)
    fetch_pool: BytePool = field(init=False)
    quotas: ClientQuotas = field(init=False)
    idle_polls: IdlePolls = field(init=False)
    security: SecurityView = field(init=False)
    # In a cluster (--etcd): which broker leads each partition (gateway.router).
    router: Router | None = None

    def __post_init__(self) -> None:
        self.security = SecurityView(self.broker, self.config.authorizer)
        self.topic_settings = TopicSettings(self.broker)
        self.request_pool = BytePool(self.config.queued_max_request_bytes)
        self.fetch_pool = BytePool(self.config.fetch_memory_bytes)
        self.quotas = ClientQuotas(self.broker)
        self.idle_polls = IdlePolls(self.broker)

    @property
    def node_id(self) -> int:
        """This gateway's Kafka node id (``--node-id`` in a cluster)."""
        return NODE_ID if self.router is None else self.router.node[0]

    def kafka_nodes(self) -> list[tuple[int, str, int]]:
        """(node id, host, port) of the Kafka nodes clients see: this gateway alone, or every
        live gateway of a cluster, this one at the current listener's address."""
        host, port = self.advertised()
        if self.router is None:
            return [(NODE_ID, host, port)]
        return [(node, host, port) if node == self.node_id else (node, other_host, other_port)
                for node, other_host, other_port in self.router.nodes()]

    @staticmethod
    def partition_node(topic: str, index: int, nodes: list[tuple[int, str, int]]) -> int:
        """The gateway Metadata names as a partition's leader: spread over the gateways, the
        same from each (any gateway serves any partition; this spreads the clients)."""
        if len(nodes) == 1:
            return nodes[0][0]
        return nodes[(zlib.crc32(topic.encode()) + index) % len(nodes)][0]

    def leader(self, topic: str, partition: int) -> BrokerClient:
        """The broker to send the partition's produce and fetch to (raises
        ``BrokerUnavailable`` when a cluster partition has no reachable leader)."""
        return self.broker if self.router is None else self.router.leader(topic, partition)

    def coordinator(self) -> BrokerClient:
        """The broker that coordinates groups, offsets and transactions: in a cluster the
        leader of the coordination partition (``broker.coordination``; raises
        ``BrokerUnavailable`` while it has none the gateway can reach), else the gateway's own
        broker."""
        if self.router is None:
            return self.broker
        return self.router.leader(COORDINATION_TOPIC, 0)

    async def any_broker_call(self, method: Any, request: Any) -> Any:
        """A call any broker answers alike: the gateway's own, or in a cluster another while
        that one is down. Raises ``BrokerUnavailable`` when none can."""
        try:
            return await self.broker.call(method, request)
        except BrokerUnavailable:
            if self.router is None:
                raise
            return await self.router.call_any(method, request)

    def data_brokers(self) -> list[BrokerClient]:
        """Every broker appends may go to (their backlogs bound what this gateway queues)."""
        return [self.broker] if self.router is None else self.router.clients()

    def owns(self, topic: str) -> bool:
        """Whether the current connection may write ``topic`` as its owner."""
        settings = self.config.authorizer
        principal = session().principal
        return (not settings.enabled or principal in settings.super_users
                or principal in self.owned_topics.get(topic, ()))

    def advertised(self) -> tuple[str, int]:
        """The address clients of the current connection's listener are told to use."""
        listener = session().listener
        if listener is not None:
            return listener.advertised_host, listener.advertised_port
        return self.config.advertised_host, self.config.advertised_port

    async def describe_topics(
        self, names: list[str], *, auto_create: bool = False
    ) -> list[tuple[ErrorCode, TopicMeta | None]]:
        """(error code, metadata) per name, or for every topic when ``names`` is empty."""
        request = pb.DescribeTopicsRequest(names=names, auto_create=auto_create)
        try:
            reply = await self.broker.call(BROKER.describe_topics, request)
        except BrokerUnavailable:
            if self.router is None:
                raise
            # In a cluster every broker holds every topic's metadata: Metadata goes on while
            # the gateway's own broker is down (auto-creation waits for it).
            reply = await self.router.call_any(BROKER.describe_topics, replace(
                request, auto_create=False))
        out: list[tuple[ErrorCode, TopicMeta | None]] = []
        for info in reply.topics:
            if info.error_code:
                missing = TopicMeta(info.name, uuid.UUID(int=0), 0, False)
                out.append((ErrorCode(info.error_code), missing))
                continue
            meta = TopicMeta(info.name, uuid.UUID(bytes=info.topic_id), info.partitions,
                             info.internal)
            self.topics_by_id[meta.topic_id] = meta
            out.append((ErrorCode.none, meta))
        return out

    async def existing_topics(self, names: list[str]) -> dict[str, TopicMeta] | None:
        """The named topics that exist (every topic for ``[]``), never creating one; None
        when the broker does not answer."""
        try:
            described = await self.describe_topics(sorted(set(names)))
        except BrokerUnavailable:
            return None
        return {meta.name: meta for code, meta in described
                if code == ErrorCode.none and meta is not None}

    async def topic_by_id(self, topic_id: uuid.UUID) -> TopicMeta | None:
        if topic_id not in self.topics_by_id:
            await self.describe_topics([])
        return self.topics_by_id.get(topic_id)
