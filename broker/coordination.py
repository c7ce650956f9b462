"""In a cluster, group, offset and transaction coordination lives with a partition's leader.

Kafka's coordinators live on the leader of the ``__consumer_offsets`` (or
``__transaction_state``) partition their id hashes to and fail over with it. kelp keeps all
three in one replicated, compacted partition, ``__consumer_offsets-0``: committed offsets keyed
``[group, topic, partition]``, group state keyed ``[kind, group]`` (``broker.group_file.GroupLog``)
and transaction state keyed by transactional id, each read back by its owner and passed over by
the others. Its followers replicate it like any partition; its leader is the coordinator.

``CoordinationHost`` watches this broker's roles. When it comes to lead the partition it
replays the log into a fresh ``Coordinator`` and ``TransactionCoordinator`` (the path a lone
broker's restart takes) and hands them to the service; when it stops leading it takes them away
first, so new calls are answered "not the coordinator" (ABORTED: the gateway tells the client
COORDINATOR_LOAD_IN_PROGRESS and it retries), then cancels their timers and every call still
running in them. A write is acknowledged once every in-sync replica
of the partition holds it, so the next leader knows everything a client was told.

The partition is created when a coordinator call first finds none (replication factor
``offsets.topic.replication.factor``, capped at 3), once that many brokers are alive, as Kafka
creates its offsets topic on the first FindCoordinator; a cluster nobody asks for a group or a
transaction does without it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from broker.group_file import GroupFile, GroupLog
from broker.log import PartitionLog
from broker.offsets import OffsetStore
from broker.topics import TopicError
from broker.transactions import TxnError
from broker.txn_markers import ClusterMarkers

if TYPE_CHECKING:
    from broker.cluster_topics import ClusterTopics
    from broker.groups import Coordinator
    from broker.membership import Membership
    from broker.replication import Replication
    from broker.txn_coordinator import TransactionCoordinator

log = logging.getLogger("kelp.broker.coordination")

TOPIC = "__consumer_offsets"
KEY = (TOPIC, 0)
TOPIC_CONFIGS = {"cleanup.policy": "compact"}
RECHECK_S = 5.0  # a safety net: every change of roles wakes the loop

BuildGroups = Callable[[OffsetStore, tuple[GroupFile, GroupFile]], "Coordinator"]
BuildTxns = Callable[..., "TransactionCoordinator"]


class NotCoordinator(GRPCError):
    """ABORTED: the broker is up, the call was refused for its role (the gateway answers
    COORDINATOR_LOAD_IN_PROGRESS without counting the broker unreachable)."""

    def __init__(self, why: str) -> None:
        super().__init__(Status.ABORTED, f"not the coordinator: {why}")


class Coordination:
    """What the service calls while this broker coordinates."""

    def __init__(self, store: OffsetStore, groups: Coordinator,
                 transactions: TransactionCoordinator) -> None:
        self.store = store
        self.groups = groups
        self.transactions = transactions


class CoordinationHost:
    def __init__(self, replication: Replication, membership: Membership,
                 cluster_topics: ClusterTopics, replication_factor: Callable[[], int],
                 build_groups: BuildGroups, build_txns: BuildTxns) -> None:
        self.replication = replication
        self.membership = membership
        self.cluster_topics = cluster_topics
        self.replication_factor = replication_factor
        self.build_groups = build_groups
        self.build_txns = build_txns
        self.current: Coordination | None = None
        self.epoch: int | None = None  # the leader epoch it coordinates in
        self.loads = 0
        self._calls: set[trio.CancelScope] = set()  # coordinated calls running now
        self._tasks: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._creating = False
        self._warned = False  # about too few brokers for the coordination topic
        self.on_change: Callable[[Coordination | None], None] = lambda _c: None

    # -- serving calls ------------------------------------------------------------------

    @contextlib.contextmanager
    def serving(self) -> Iterator[Coordination]:
        """Run a coordinated call: refused unless this broker coordinates, cancelled (and
        refused) when it stops coordinating meanwhile."""
        current = self.current
        if current is None:
            if self.replication.ready and TOPIC not in self.replication.managed:
                self._create_soon()
                raise NotCoordinator(f"{TOPIC} is being created")
            raise NotCoordinator(f"broker {self.replication.broker_id} does not lead {TOPIC}")
        scope = trio.CancelScope()
        self._calls.add(scope)
        try:
            with scope:
                yield current
        except TopicError as exc:  # its write could not be replicated: leadership moved
            raise NotCoordinator(str(exc)) from exc
        finally:
            self._calls.discard(scope)
        if scope.cancelled_caught:
            raise NotCoordinator("coordination moved to another broker")

    # -- following leadership ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    changed = self.replication.roles_changed
                    epoch = (self.replication.leader_epoch(KEY)
                             if self.replication.ready else None)
                    if epoch != self.epoch:
                        self._stop()
                        if epoch is not None:
                            try:
                                await self._start(nursery, epoch)
                            except (OSError, TopicError, ValueError) as exc:
                                # Not coordinating: calls are refused, the next look retries.
                                log.error("coordination not loaded", extra={
                                    "error": repr(exc)})
                    with trio.move_on_after(RECHECK_S):
                        await changed.wait()
        finally:
            self._nursery = None
            self._stop()

    async def _start(self, nursery: trio.Nursery, epoch: int) -> None:
        plog = self.replication.registry.partition(*KEY)
        replicated = functools.partial(self._replicated, plog)

        # The logs are replayed in worker threads: a long log must not stall the broker.
        # Nothing else writes it meanwhile (a leader's log is written only by its coordinator).
        started = trio.current_time()
        group_logs = (GroupLog("classic", plog, replicated), GroupLog("consumer", plog, replicated))

        def replay() -> OffsetStore:
            for group_log in group_logs:
                group_log.preload()
            return OffsetStore(None, shared=plog, replicated=replicated)

        store = await trio.to_thread.run_sync(replay)
        groups = self.build_groups(store, group_logs)
        groups.load_groups()  # from what the thread read
        markers = ClusterMarkers(self.replication.registry, self.replication,
                                 lambda: self.epoch == epoch)
        transactions = await trio.to_thread.run_sync(
            lambda: self.build_txns(store, groups, shared=plog, replicated=replicated,
                                    markers=markers))
        coordination = Coordination(store, groups, transactions)
        if self.replication.leader_epoch(KEY) != epoch:
            return  # lost the lead while loading: the loop looks again
        self._tasks = trio.CancelScope()
        nursery.start_soon(self._run_tasks, coordination, self._tasks)
        self.current, self.epoch = coordination, epoch
        self.loads += 1
        self.on_change(coordination)
        log.info("coordinating", extra={"topic": TOPIC, "leader_epoch": epoch,
                                        "groups": len(coordination.groups.groups),
                                        "transactions": len(coordination.transactions.txns),
                                        "load_s": round(trio.current_time() - started, 3)})

    def _stop(self) -> None:
        if self.current is None:
            self.epoch = None
            return
        self.current, self.epoch = None, None
        self.on_change(None)
        for scope in [*self._calls, *([self._tasks] if self._tasks else [])]:
            scope.cancel()
        self._tasks = None
        log.info("no longer coordinating", extra={"topic": TOPIC})

    @staticmethod
    async def _run_tasks(coordination: Coordination, scope: trio.CancelScope) -> None:
        """The coordinators' timers, until leadership ends. A write failing because it could
        not be replicated any more, or markers abandoned because coordination moved, mean
        the same: the timers stop quietly."""
        with scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(coordination.groups.run)
                    nursery.start_soon(coordination.transactions.run)
            except* (TopicError, TxnError) as group:
                log.info("coordinator timers stopped", extra={
                    "reason": str(group.exceptions[0])})

    async def _replicated(self, plog: PartitionLog, end: int) -> None:
        self.replication.on_local_append(*KEY, plog)
        await self.replication.wait_replicated(*KEY, plog, end, 1)

    def _create_soon(self) -> None:
        if not self._creating and self._nursery is not None:
            self._creating = True
            self._nursery.start_soon(self._create_topic)

    async def _create_topic(self) -> None:
        try:
            wanted = min(max(self.replication_factor(), 1), 3)
            if len(self.membership.brokers()) < wanted:
                if not self._warned:
                    self._warned = True
                    log.warning("not enough brokers for the coordination topic yet", extra={
                        "topic": TOPIC, "brokers": len(self.membership.brokers()),
                        "replication_factor": wanted})
                return  # as Kafka: not before enough brokers are alive to hold its replicas
            # Another broker may create it first, or etcd be down: the next call asks again.
            with contextlib.suppress(TopicError):
                await self.cluster_topics.create(TOPIC, 1, wanted, dict(TOPIC_CONFIGS))
                log.info("coordination topic created", extra={
                    "topic": TOPIC, "replication_factor": wanted})
        finally:
            self._creating = False


P = ParamSpec("P")
R = TypeVar("R")


def coordinated(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A coordinator call of the broker service: in a cluster, run while this broker
    coordinates (``CoordinationHost.serving``), on the coordinators it holds then."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        service: Any = args[0]
        host: CoordinationHost | None = service.coordination_host
        if host is None:
            return await method(*args, **kwargs)
        with host.serving():
            return await method(*args, **kwargs)
        raise AssertionError("unreachable")  # serving() raises when it swallowed a cancel

    return call
