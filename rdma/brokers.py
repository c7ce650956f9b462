"""Which broker to read from, for the sidecar and the mount in a cluster.

A lone broker serves every read. In a cluster each broker numbers the volumes of the segments
it lists from ``broker_id << kelp.fileid.BROKER_VOLUME_BITS``, so a file id names the broker
that holds its bytes, and a partition's segments are listed by its leader. ``Brokers`` keeps
etcd's registrations (``/kelp/brokers/``) and partition states (``/kelp/partitions/``) in
view and one gRPC channel per broker it has read from; a file id whose broker it does not know
(or a lone broker's) goes to the default broker.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from broker.controller import PARTITIONS, partition_key
from broker.membership import BROKERS, BrokerInfo
from broker.placement import NO_LEADER, PartitionState
from kelp import fileid, grpc
from kelp.etcd import Etcd, Mirror

log = logging.getLogger("kelp.sidecar")


class Brokers:
    def __init__(self, etcd: str, token: str | None = None) -> None:
        self.etcd = Etcd.from_text(etcd)  # raises ValueError
        self.token = token
        self.members = Mirror(self.etcd, BROKERS)
        self.partitions = Mirror(self.etcd, PARTITIONS)
        self._channels: dict[str, grpc.Channel] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.members.run)
                await nursery.start(self.partitions.run)
                task_status.started()
        finally:
            for channel in self._channels.values():
                channel.close()
            self.etcd.close()

    def _address(self, broker_id: int) -> str | None:
        entry = self.members.entries.get(BROKERS + str(broker_id).encode())
        if entry is None:
            return None
        try:
            return BrokerInfo.decode(entry.value).grpc
        except (ValueError, KeyError, TypeError):
            return None

    def for_file(self, file_id: str) -> tuple[grpc.Channel, str] | None:
        """The channel to the broker holding ``file_id``'s bytes, and its address; None for
        an id no registered broker numbered (the caller uses its default broker)."""
        try:
            volume = fileid.parse(file_id).volume
        except fileid.FileIdError:
            return None
        address = self._address(fileid.broker_of(volume))
        return None if address is None else (self.channel(address), address)

    def for_partition(self, topic: str, partition: int) -> tuple[grpc.Channel, str] | None:
        """The channel to the partition's leader, and its address (None: no known leader)."""
        entry = self.partitions.entries.get(partition_key(topic, partition))
        if entry is None:
            return None
        try:
            leader = PartitionState.decode(entry.value).leader
        except (ValueError, KeyError, TypeError):
            return None
        address = None if leader == NO_LEADER else self._address(leader)
        return None if address is None else (self.channel(address), address)

    def channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.Channel(grpc.Address.parse(address),
                                                             token=self.token)
        return channel

    def health(self) -> dict[str, Any]:
        return {"brokers": len(self.members.entries), "channels": len(self._channels)}
