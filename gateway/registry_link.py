"""The registry's view of the broker (``registry.link.BrokerLink``) over the gateway's
broker client: the same calls, with the client's two failures told as one ``BrokerDown``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from gateway.broker_client import BrokerClient, BrokerFailed, BrokerUnavailable
from kelp.grpc import Route
from kelp.rpc.broker import v1 as pb
from registry.link import BrokerDown

Rep = TypeVar("Rep")


class RegistryBrokerLink:
    def __init__(self, broker: BrokerClient,
                 leader: Callable[[str, int], BrokerClient] | None = None) -> None:
        self.broker = broker
        # In a cluster, the client of a partition's leader (the gateway's router).
        self.leader = leader or (lambda topic, partition: broker)

    async def wait_connected(self) -> None:
        await self.broker.wait_connected()

    async def call(self, method: Route[Any, Rep], request: Any, *,
                   timeout: float = 10.0) -> Rep:
        try:
            return await self.broker.call(method, request, timeout=timeout)
        except (BrokerUnavailable, BrokerFailed) as exc:
            raise BrokerDown(str(exc)) from exc

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchReply:
        try:
            first = request.partitions[0] if request.partitions else None
            broker = self.broker if first is None else self.leader(first.topic, first.partition)
            return await broker.fetch(request)
        except (BrokerUnavailable, BrokerFailed) as exc:
            raise BrokerDown(str(exc)) from exc

    async def append(self, topic: str, partition: int, batch: bytes) -> pb.AppendReply:
        try:
            # Within the gateway's bound on unanswered appends, like every Kafka producer.
            broker = self.leader(topic, partition)
            await broker.wait_append_writable()
            waiter = broker.submit_append(topic, partition, batch, -1)
            assert waiter is not None  # acks=all is always answered
            reply: pb.AppendReply = await waiter.wait()
        except (BrokerUnavailable, BrokerFailed) as exc:
            raise BrokerDown(str(exc)) from exc
        return reply
