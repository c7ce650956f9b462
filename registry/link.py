"""What the registry needs of the broker, stated here so that ``registry/`` depends on no
process package: the gateway passes an adapter over its broker client
(``gateway/registry_link.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

from kelp.rpc.broker import v1 as pb


class BrokerDown(Exception):
    """A call to the broker that produced no answer: unreachable, or failed there. The
    registry treats both alike (log, back off, try again; a write answers 50001)."""


class BrokerLink(Protocol):
    """Every method raises :class:`BrokerDown` when the broker gives no answer."""

    async def wait_connected(self) -> None: ...

    async def call(self, method: str, request: Any, reply_type: type, *,
                   timeout: float = 10.0) -> Any:
        """A unary call by method name (``"JoinGroup"``), with its reply message type."""
        ...

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchReply: ...

    async def append(self, topic: str, partition: int, batch: bytes) -> pb.AppendReply:
        """Append with acks=all: answered once the batch is durable."""
        ...
