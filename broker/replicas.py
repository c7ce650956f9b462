"""The partitions this broker holds in a cluster, and its role in each (leader or follower).

Follows the topics and partition states in etcd (``broker.controller``'s layout): a topic gets
its local logs under the topic id the cluster gave it, so every replica of a partition is the
same topic to clients and to each other; partitions added in etcd are added here, and a topic
deleted from etcd is deleted here (never a local topic the cluster did not give this broker).
Each hosted partition's current ``PartitionState`` says who leads, in which leader epoch.

Every broker opens every topic in etcd, with all its partitions, hosted or not (the ones not
hosted stay empty and are never led here), so that Metadata through any broker lists every
topic. What each hosted partition's state asks of this broker (lead, follow) is
``broker.replication``'s job.
"""

from __future__ import annotations

import logging
import uuid

import trio

from broker import metrics
from broker.controller import TOPICS, Controller, TopicMeta
from broker.placement import PartitionState
from broker.replication import Replication
from broker.topics import TopicError, TopicRegistry
from kelp.etcd import Mirror, wait_any_change

log = logging.getLogger("kelp.broker.replicas")

RETRY_S = 1.0


class ReplicaManager:
    def __init__(self, registry: TopicRegistry, controller: Controller, broker_id: int,
                 replication: Replication | None = None) -> None:
        self.registry = registry
        self.replication = replication
        self.controller = controller
        self.broker_id = broker_id
        self.topics = Mirror(controller.etcd, TOPICS)
        # Hosted partitions and their state as last seen.
        self.hosted: dict[tuple[str, int], PartitionState] = {}
        self._refused: set[tuple[str, str]] = set()  # (topic, reason) already logged
        self.opened: dict[str, uuid.UUID] = {}  # topics opened from etcd, by name

    def roles(self) -> dict[str, int]:
        """How many hosted partitions this broker leads and follows (for /health)."""
        leading = sum(1 for s in self.hosted.values() if s.leader == self.broker_id)
        return {"leader": leading, "follower": len(self.hosted) - leading}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.topics.run)
            task_status.started()
            partitions = self.controller.partitions
            while True:
                seen = (self.topics.revision, partitions.revision)
                await self._reconcile()
                # The timeout also retries what failed last time.
                await wait_any_change([(self.topics, seen[0]), (partitions, seen[1])], RETRY_S)

    async def _reconcile(self) -> None:
        states = self.controller.states()
        hosted = {key: state for key, state in states.items()
                  if self.broker_id in state.replicas}
        for key, state in hosted.items():
            before = self.hosted.get(key)
            if before is None or before.leader != state.leader or \
                    before.leader_epoch != state.leader_epoch:
                log.info("partition role", extra={
                    "topic": key[0], "partition": key[1], "leader": state.leader,
                    "leader_epoch": state.leader_epoch,
                    "role": "leader" if state.leader == self.broker_id else "follower"})
        self.hosted = hosted
        in_etcd: set[str] = set()
        for key, entry in sorted(self.topics.entries.items()):
            name = key[len(TOPICS):].decode(errors="replace")
            try:
                meta = TopicMeta.decode(entry.value)
            except (ValueError, KeyError, TypeError) as exc:
                self._refuse(name, f"unreadable topic metadata: {exc}")
                continue
            in_etcd.add(name)
            local = self.registry.get(name)
            if local is not None and local.topic_id != meta.topic_id and \
                    self.opened.get(name) == local.topic_id:
                # Deleted and created again in etcd between two looks: the old one goes.
                await self.registry.delete(name)
                metrics.forget_topic(name)
                local = None
            try:
                if local is None:
                    await self.registry.create(name, meta.partitions, meta.configs,
                                               topic_id=meta.topic_id)
                    log.info("replicas opened", extra={
                        "topic": name,
                        "partitions": sorted(p for t, p in hosted if t == name)})
                elif local.topic_id != meta.topic_id:
                    self._refuse(name, f"a local topic of that name has id {local.topic_id}, "
                                       f"the cluster's is {meta.topic_id}")
                    continue
                else:
                    if local.partition_count < meta.partitions:
                        await self.registry.add_partitions(name, meta.partitions)
                    if local.configs != meta.configs:
                        await self.registry.alter_configs(name, meta.configs)
            except TopicError as exc:
                self._refuse(name, str(exc))
                continue
            self.opened[name] = meta.topic_id
        for name, topic_id in list(self.opened.items()):
            if name in in_etcd:
                continue
            del self.opened[name]
            local = self.registry.get(name)
            if local is not None and local.topic_id == topic_id:
                await self.registry.delete(name)
                metrics.forget_topic(name)
        if self.replication is not None:
            self.replication.update(set(self.opened), {
                key: state for key, state in hosted.items() if key[0] in self.opened})

    def _refuse(self, topic: str, reason: str) -> None:
        if (topic, reason) not in self._refused:
            if len(self._refused) >= 10_000:  # a bound on what is remembered, not on logging
                self._refused.clear()
            self._refused.add((topic, reason))
            log.error("cannot host the topic's replicas", extra={"topic": topic,
                                                                  "reason": reason})

