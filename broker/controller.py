"""The cluster controller: keeps every partition's leader and ISR in etcd true to the live brokers.

Every broker with ``--etcd`` runs this; only the one holding the controller key
(``broker.membership``) acts. It mirrors ``/kelp/partitions/`` and the broker registrations,
and whenever either changes it applies ``broker.placement.after_brokers_changed`` to each
partition: a dead leader is replaced from the ISR with the leader epoch bumped, dead followers
leave the ISR, a partition with no live in-sync replica goes offline until one returns.

Every write is a compare-and-swap on the partition's revision *and* on the controller key's
create revision (the controller epoch): a controller deposed while it was deciding (its lease
lost, another elected) has its writes refused by etcd, never applied over the new one's.

Topic metadata lives beside it: ``/kelp/topics/<name>`` (id, partition count, replication
factor) and ``/kelp/partitions/<name>/<n>`` (``PartitionState``), written together when a topic
is created (``create_topic``).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field

import trio

from broker.membership import CONTROLLER, Membership
from broker.placement import (
    PartitionState,
    after_brokers_changed,
    assign_replicas,
    reassignment_step,
)
from kelp.etcd import Etcd, EtcdUnavailable, Mirror, wait_any_change
from kelp.metrics import Gauges

log = logging.getLogger("kelp.broker.controller")

TOPICS = b"/kelp/topics/"
PARTITIONS = b"/kelp/partitions/"
RECHECK_S = 1.0  # how often a broker looks at whether it became (or stopped being) controller


def partition_key(topic: str, partition: int) -> bytes:
    return PARTITIONS + f"{topic}/{partition}".encode()


def parse_partition_key(key: bytes) -> tuple[str, int]:
    topic, _, number = key[len(PARTITIONS):].decode().rpartition("/")
    return topic, int(number)


@dataclass(frozen=True)
class TopicMeta:
    topic_id: uuid.UUID
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"topic_id": str(self.topic_id), "partitions": self.partitions,
                           "replication_factor": self.replication_factor,
                           "configs": self.configs}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> TopicMeta:
        value = json.loads(data)
        configs = value.get("configs", {})
        if not isinstance(configs, dict):
            raise TypeError("configs is not an object")
        return cls(uuid.UUID(value["topic_id"]), int(value["partitions"]),
                   int(value["replication_factor"]),
                   {str(k): str(v) for k, v in configs.items()})


async def create_topic(etcd: Etcd, name: str, partitions: int, replication_factor: int,
                       brokers: dict[int, str | None], configs: dict[str, str] | None = None
                       ) -> dict[int, PartitionState] | None:
    """Place a new topic on ``brokers`` (id -> rack) and write it with all its partitions in
    one etcd transaction; None if the topic exists. Raises ``PlacementError``."""
    assignment = assign_replicas(range(partitions), replication_factor, brokers)
    states = {p: PartitionState.new(replicas) for p, replicas in assignment.items()}
    meta = TopicMeta(uuid.uuid4(), partitions, replication_factor, dict(configs or {}))
    topic_key = TOPICS + name.encode()
    puts = [(topic_key, meta.encode())]
    puts += [(partition_key(name, p), state.encode()) for p, state in states.items()]
    written = await etcd.write_if([(topic_key, "create", 0)], puts)
    return None if written is None else states


async def delete_topic(etcd: Etcd, name: str) -> bool:
    """Remove a topic and all its partitions from etcd in one transaction; False if etcd has
    no such topic."""
    topic_key = TOPICS + name.encode()
    entry = await etcd.get(topic_key)
    while entry is not None:
        if await etcd.write_if([(topic_key, "mod", entry.mod_revision)], deletes=[topic_key],
                               delete_prefixes=[PARTITIONS + f"{name}/".encode()]) is not None:
            return True
        entry = await etcd.get(topic_key)  # changed meanwhile (partitions added): again
    return False


async def alter_topic_configs(etcd: Etcd, name: str, configs: dict[str, str]) -> bool:
    """Replace a topic's configs in etcd (every broker applies them); False if etcd has no
    such topic."""
    topic_key = TOPICS + name.encode()
    while (entry := await etcd.get(topic_key)) is not None:
        meta = TopicMeta.decode(entry.value)
        altered = TopicMeta(meta.topic_id, meta.partitions, meta.replication_factor,
                            dict(configs))
        if await etcd.write_if([(topic_key, "mod", entry.mod_revision)],
                               [(topic_key, altered.encode())]) is not None:
            return True
    return False


async def add_partitions(etcd: Etcd, name: str, count: int, brokers: dict[int, str | None]
                         ) -> TopicMeta | None:
    """Grow a topic to ``count`` partitions, placing the new ones on ``brokers`` (leaders
    continuing the rotation); None if etcd has no such topic. Raises ``PlacementError``, and
    ``ValueError`` when ``count`` does not grow the topic."""
    topic_key = TOPICS + name.encode()
    while (entry := await etcd.get(topic_key)) is not None:
        meta = TopicMeta.decode(entry.value)
        if count <= meta.partitions:
            raise ValueError(f"topic {name!r} has {meta.partitions} partitions; the new count "
                             f"must be larger, not {count}")
        assignment = assign_replicas(range(meta.partitions, count), meta.replication_factor,
                                     brokers)
        grown = TopicMeta(meta.topic_id, count, meta.replication_factor, meta.configs)
        puts = [(topic_key, grown.encode())]
        puts += [(partition_key(name, p), PartitionState.new(r).encode())
                 for p, r in assignment.items()]
        if await etcd.write_if([(topic_key, "mod", entry.mod_revision)], puts) is not None:
            return grown
    return None


class Controller:
    def __init__(self, etcd: Etcd, membership: Membership, *, unclean: bool = False) -> None:
        self.etcd = etcd
        self.membership = membership
        self.unclean = unclean
        self.partitions = Mirror(etcd, PARTITIONS)
        self.leader_changes = 0  # elections this broker made as controller
        self.isr_changes = 0

    def gauges(self) -> Gauges:
        """The cluster as this broker sees it, for ``/metrics``."""
        membership = self.membership
        return {
            "kelp_broker_cluster_brokers": (
                "Live brokers registered in etcd.", (), [((), len(membership.brokers()))]),
            "kelp_broker_cluster_registered": (
                "1 while this broker's registration lease is held.", (),
                [((), int(membership.registered))]),
            "kelp_broker_controller": (
                "1 while this broker is the controller.", (),
                [((), int(membership.is_controller))]),
            "kelp_broker_controller_epoch": (
                "The controller epoch this broker knows.", (),
                [((), membership.controller_epoch)]),
            "kelp_broker_controller_leader_changes": (
                "Partition leaders this broker changed as controller.", (),
                [((), self.leader_changes)]),
            "kelp_broker_controller_isr_changes": (
                "ISR shrinks this broker wrote as controller.", (), [((), self.isr_changes)]),
        }

    def states(self) -> dict[tuple[str, int], PartitionState]:
        """Every readable partition state, by (topic, partition)."""
        found = {}
        for key, entry in self.partitions.entries.items():
            try:
                found[parse_partition_key(key)] = PartitionState.decode(entry.value)
            except (ValueError, KeyError, TypeError):
                continue  # logged where the controller meets it
        return found

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.partitions.run)
            task_status.started()
            while True:
                if self.membership.is_controller:
                    try:
                        await self._control(self.membership.controller_epoch)
                    except EtcdUnavailable as exc:
                        log.warning("controller cannot reach etcd", extra={"error": str(exc)})
                await trio.sleep(RECHECK_S)

    def _still_controller(self, epoch: int) -> bool:
        return self.membership.is_controller and self.membership.controller_epoch == epoch

    async def _control(self, epoch: int) -> None:
        """Reconcile until this broker stops being controller in ``epoch``."""
        log.info("acting as controller", extra={"epoch": epoch})
        brokers_mirror = self.membership.brokers_mirror
        while self._still_controller(epoch):
            seen = (brokers_mirror.revision, self.partitions.revision)
            live = set(self.membership.brokers())
            for key, entry in list(self.partitions.entries.items()):
                if not self._still_controller(epoch):
                    return
                try:
                    state = PartitionState.decode(entry.value)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("unreadable partition state left alone", extra={
                        "key": key.decode(errors="replace"), "error": str(exc)})
                    continue
                new = reassignment_step(after_brokers_changed(state, live,
                                                              unclean=self.unclean), live)
                if new == state:
                    continue
                written = await self.etcd.write_if(
                    [(CONTROLLER, "create", epoch), (key, "mod", entry.mod_revision)],
                    [(key, new.encode())])
                if written is None:
                    break  # deposed, or the partition changed meanwhile: look again
                topic, partition = parse_partition_key(key)
                if new.replicas != state.replicas:
                    log.info("partition replicas changed", extra={
                        "topic": topic, "partition": partition, "replicas": list(new.replicas),
                        "reassigning": new.target is not None})
                if new.leader != state.leader:
                    self.leader_changes += 1
                    log.info("partition leader changed", extra={
                        "topic": topic, "partition": partition, "leader": new.leader,
                        "leader_epoch": new.leader_epoch, "isr": list(new.isr)})
                else:
                    self.isr_changes += 1
            await wait_any_change([(brokers_mirror, seen[0]), (self.partitions, seen[1])],
                                  RECHECK_S)  # the recheck also notices a lost election
