"""What the registry needs of the broker, stated here so that ``registry/`` depends on no
process package: the gateway passes an adapter over its broker client
(``gateway/registry_link.py``).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from kelp.grpc import Route
from kelp.rpc.broker import v1 as pb

Rep = TypeVar("Rep")


class BrokerDown(Exception):
    """A call to the broker that produced no answer: unreachable, or failed there. The
    registry treats both alike (log, back off, try again; a write answers 50001)."""


class BrokerLink(Protocol):
    """Every method raises :class:`BrokerDown` when the broker gives no answer."""

    async def wait_connected(self) -> None: ...

    async def call(self, method: Route[Any, Rep], request: Any, *,
                   timeout: float = 10.0) -> Rep:
        """A unary call of a Broker method (``kelp.routes.BROKER.join_group``)."""
        ...

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchReply: ...

    async def append(self, topic: str, partition: int, batch: bytes) -> pb.AppendReply:
        """Append with acks=all: answered once the batch is durable."""
        ...
