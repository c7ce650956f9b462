"""CreateTopics in a cluster: the topic is placed over the live brokers and written to etcd
(``broker.controller.create_topic``), then answered once this broker's replica manager has
opened it, so the client's next Metadata through this broker finds it.

Kafka's answers: INVALID_REPLICATION_FACTOR when there are fewer live brokers than replicas,
TOPIC_ALREADY_EXISTS when etcd has the name (whichever broker created it first wins), and
REQUEST_TIMED_OUT when etcd cannot be reached (nothing was created).
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from kio.schema.errors import ErrorCode

from broker.controller import add_partitions, alter_topic_configs, create_topic, delete_topic
from broker.membership import Membership
from broker.placement import PlacementError, assign_replicas
from broker.topics import Topic, TopicError, TopicRegistry
from kelp.etcd import Etcd, EtcdUnavailable

OPEN_TIMEOUT_S = 10.0


class ClusterTopics:
    def __init__(self, etcd: Etcd, membership: Membership, registry: TopicRegistry,
                 default_replication_factor: Callable[[], int]) -> None:
        self.etcd = etcd
        self.membership = membership
        self.registry = registry
        self.default_replication_factor = default_replication_factor

    async def create(self, name: str, partitions: int, replication_factor: int,
                     configs: dict[str, str], *, validate_only: bool = False
                     ) -> tuple[Topic, int]:
        """The topic (as this broker holds it) and its replication factor; raises
        ``TopicError`` with Kafka's code."""
        if replication_factor in (0, -1):
            replication_factor = self.default_replication_factor()
        # Name, partition count and configs are checked as a lone broker checks them.
        checked = await self.registry.create(name, partitions, configs, validate_only=True)
        brokers = {i: info.rack for i, info in self.membership.brokers().items()}
        try:
            if validate_only:
                assign_replicas(range(checked.partition_count), replication_factor, brokers)
                return checked, replication_factor
            states = await create_topic(self.etcd, name, checked.partition_count,
                                        replication_factor, brokers, checked.configs)
        except PlacementError as exc:
            raise TopicError(ErrorCode.invalid_replication_factor, str(exc)) from None
        except EtcdUnavailable as exc:
            raise TopicError(ErrorCode.request_timed_out,
                             f"the cluster's metadata store is unreachable: {exc}") from None
        if states is None:
            raise TopicError(ErrorCode.topic_already_exists, f"topic {name!r} already exists")
        await self._wait_for(lambda: self.registry.get(name) is not None,
                             f"topic {name!r} was created in the cluster but is not open on "
                             "this broker yet")
        topic = self.registry.get(name)
        assert topic is not None
        return topic, replication_factor

    async def delete(self, name: str) -> Topic:
        """Delete the topic from the cluster, answered once this broker has dropped it."""
        local = self.registry.get(name)
        if local is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        try:
            in_cluster = await delete_topic(self.etcd, name)
        except EtcdUnavailable as exc:
            raise TopicError(ErrorCode.request_timed_out,
                             f"the cluster's metadata store is unreachable: {exc}") from None
        if not in_cluster:  # a topic this broker had before it joined: only here
            return await self.registry.delete(name)
        await self._wait_for(lambda: self.registry.get(name) is not local,
                             f"topic {name!r} was deleted in the cluster but is still open here")
        return local

    async def add_partitions(self, name: str, count: int, *, validate_only: bool = False
                             ) -> Topic:
        """Grow the topic in the cluster, answered once this broker has opened the new
        partitions."""
        checked = await self.registry.add_partitions(name, count, validate_only=True)
        brokers = {i: info.rack for i, info in self.membership.brokers().items()}
        if validate_only:
            return checked
        try:
            grown = await add_partitions(self.etcd, name, count, brokers)
        except PlacementError as exc:
            raise TopicError(ErrorCode.invalid_replication_factor, str(exc)) from None
        except ValueError as exc:
            raise TopicError(ErrorCode.invalid_partitions, str(exc)) from None
        except EtcdUnavailable as exc:
            raise TopicError(ErrorCode.request_timed_out,
                             f"the cluster's metadata store is unreachable: {exc}") from None
        if grown is None:  # a topic this broker had before it joined: only here
            return await self.registry.add_partitions(name, count)
        await self._wait_for(
            lambda: (t := self.registry.get(name)) is not None and t.partition_count >= count,
            f"topic {name!r} grew in the cluster but not yet on this broker")
        topic = self.registry.get(name)
        assert topic is not None
        return topic

    async def alter_configs(self, name: str, configs: dict[str, str], *,
                            validate_only: bool = False) -> None:
        """Replace a topic's configs in the cluster, answered once this broker has them."""
        await self.registry.alter_configs(name, configs, validate_only=True)  # checks them
        if validate_only:
            return
        try:
            in_cluster = await alter_topic_configs(self.etcd, name, configs)
        except EtcdUnavailable as exc:
            raise TopicError(ErrorCode.request_timed_out,
                             f"the cluster's metadata store is unreachable: {exc}") from None
        if not in_cluster:  # a topic this broker had before it joined: only here
            await self.registry.alter_configs(name, configs)
            return
        await self._wait_for(
            lambda: (t := self.registry.get(name)) is not None and t.configs == configs,
            f"topic {name!r}'s configs changed in the cluster but not yet on this broker")

    async def _wait_for(self, done: Callable[[], bool], failure: str) -> None:
        with trio.move_on_after(OPEN_TIMEOUT_S):
            while not done():
                await trio.sleep(0.02)
            return
        raise TopicError(ErrorCode.request_timed_out, failure)
