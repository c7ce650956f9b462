"""Transaction markers in a cluster (Kafka's WriteTxnMarkers).

The transaction coordinator lives with the coordination partition's leader, while each
partition a transaction wrote is led by whichever broker the controller chose. A COMMIT or
ABORT marker must be written by that leader, stamped with its leader epoch, and replicated like
any batch: written into a follower's copy it would break the copy's offsets. So the coordinator
writes a marker itself only for a partition it leads, and otherwise asks the leader over the
broker-to-broker ``WriteTxnMarker`` call, retrying across leader changes until the leader
answers that every in-sync replica holds it (or the topic is gone: no reader needs it).

A coordinator that stops coordinating stops retrying: its successor finds the transaction
prepared in the replicated log and writes the markers again (a marker twice is harmless: the
second finds no open transaction).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from kio.schema.errors import ErrorCode

from broker.log import OffsetOutOfRange
from broker.placement import NO_LEADER
from broker.producers import ABORT, COMMIT
from broker.topics import TopicError, TopicRegistry
from broker.transactions import TxnError
from kelp import grpc
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

if TYPE_CHECKING:
    from broker.replication import Replication

log = logging.getLogger("kelp.broker.transactions")

RETRY_S = (0.05, 1.0)  # first and longest pause between attempts


async def write_here(registry: TopicRegistry, replication: Replication, topic: str,
                     partition: int, producer_id: int, epoch: int, kind: int) -> None:
    """Write the marker as the partition's leader; returns once the ISR holds it. Raises
    ``TopicError`` (with Kafka's code) when this broker does not lead it, or it is gone, or
    ``kind`` is neither COMMIT nor ABORT."""
    if kind not in (COMMIT, ABORT):
        raise TopicError(ErrorCode.invalid_request, f"marker kind {kind} is neither COMMIT "
                         "nor ABORT")
    replication.check_leader(topic, partition)
    plog = registry.partition(topic, partition)
    try:
        result = plog.append_marker(producer_id, epoch, kind)
        replication.on_local_append(topic, partition, plog)
        await plog.wait_durable(result.write_mark)
    except OffsetOutOfRange as exc:  # the topic was deleted under it
        raise TopicError(ErrorCode.unknown_topic_or_partition, str(exc)) from None
    await replication.wait_replicated(topic, partition, plog, result.last_offset + 1, 1)


class ClusterMarkers:
    """The coordinator's ``WriteMarker`` in a cluster."""

    def __init__(self, registry: TopicRegistry, replication: Replication,
                 coordinating: Callable[[], bool]) -> None:
        self.registry = registry
        self.replication = replication
        self.coordinating = coordinating
        self.remote_writes = 0

    async def __call__(self, topic: str, partition: int, producer_id: int, epoch: int,
                       kind: int) -> None:
        pause = RETRY_S[0]
        while True:
            if not self.coordinating():
                raise TxnError(ErrorCode.not_coordinator,
                               "coordination moved before the markers were written")
            state = self.replication.controller.states().get((topic, partition))
            if state is None or self.registry.get(topic) is None:
                return  # the topic was deleted: no reader is left to need the marker
            error = await self._attempt(state.leader, topic, partition, producer_id, epoch,
                                        kind)
            if error is None or error == ErrorCode.unknown_topic_or_partition:
                return
            log.info("transaction marker not written yet, retrying", extra={
                "topic": topic, "partition": partition, "leader": state.leader,
                "error": str(error)})
            await trio.sleep(pause)
            pause = min(pause * 2, RETRY_S[1])

    async def _attempt(self, leader: int, topic: str, partition: int, producer_id: int,
                       epoch: int, kind: int) -> ErrorCode | str | None:
        """None once written; else why not (an error code or a failure's description)."""
        if leader == NO_LEADER:
            return ErrorCode.leader_not_available
        if leader == self.replication.broker_id:
            try:
                await write_here(self.registry, self.replication, topic, partition,
                                 producer_id, epoch, kind)
            except TopicError as exc:
                return ErrorCode(exc.code)
            return None
        channel = self.replication.channel(leader)
        if channel is None:
            return ErrorCode.leader_not_available
        try:
            reply = await channel.call(BROKER.write_txn_marker, pb.WriteTxnMarkerRequest(
                topic=topic, partition=partition, producer_id=producer_id,
                producer_epoch=epoch, kind=kind), timeout=30)
        except Exception as exc:  # unreachable, restarting, timed out: the loop retries
            return grpc.describe_failure(exc)
        self.remote_writes += 1
        return None if reply.error_code == 0 else ErrorCode(reply.error_code)
