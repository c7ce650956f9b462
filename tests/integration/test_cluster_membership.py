"""Brokers in a cluster through a real etcd: registration under a lease, one controller, and
what happens when brokers are killed, stopped and restarted, and when etcd restarts."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio_asyncio
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from broker.controller import (
    TOPICS,
    TopicMeta,
    create_topic,
)
from kelp.etcd import Etcd
from tests.cluster_procs import (
    BrokerCluster,
    BrokerNode,
    gateway_on,
    partition_states,
    running_cluster,
    wait_for,
)


@pytest.fixture
def brokers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerCluster]:
    yield from running_cluster(tmp_path, request, wait_registered=False)


def views(nodes: list[BrokerNode]) -> list[dict]:
    return [node.cluster() for node in nodes]


def agreed(nodes: list[BrokerNode], broker_ids: list[int]) -> dict | None:
    """The one view every node has, if they agree on the members and on a controller."""
    seen = views(nodes)
    first = seen[0]
    if first["controller"] is None or first["brokers"] != broker_ids:
        return None
    if any((v["controller"], v["controller_epoch"], v["brokers"]) !=
           (first["controller"], first["controller_epoch"], first["brokers"]) for v in seen):
        return None
    return first


def test_brokers_register_and_agree_on_one_controller(brokers: BrokerCluster) -> None:
    view = wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "one view of three brokers")
    assert all(v["registered"] for v in views(brokers.brokers))
    controller = view["controller"]
    assert [n.metric("kelp_broker_controller") for n in brokers.brokers] == [
        float(n.broker_id == controller) for n in brokers.brokers]
    assert {n.metric("kelp_broker_cluster_brokers") for n in brokers.brokers} == {3.0}

    # The controller is SIGKILLed: its lease runs out, another broker takes over with a
    # higher epoch, and the dead one leaves the member list.
    dead = brokers.brokers[controller]
    dead.proc.kill()
    alive = [n for n in brokers.brokers if n is not dead]
    ids = sorted(n.broker_id for n in alive)
    after = wait_for(lambda: agreed(alive, ids), "a new controller among the survivors",
                     timeout=15)
    assert after["controller"] in ids and after["controller_epoch"] > view["controller_epoch"]

    # Restarted with the same id, it registers again and follows the new controller.
    dead.proc.start()
    again = wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers again")
    assert again["controller"] == after["controller"]

    # A clean stop deregisters at once (the lease is revoked, not left to expire).
    stopped = next(n for n in brokers.brokers if n.broker_id != again["controller"])
    stopped.proc.stop()
    rest = [n for n in brokers.brokers if n is not stopped]
    wait_for(lambda: agreed(rest, sorted(n.broker_id for n in rest)),
             "the stopped broker gone", timeout=2.5)


def test_a_second_process_cannot_take_a_live_brokers_id(brokers: BrokerCluster,
                                                        tmp_path: Path) -> None:
    wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers")
    twin = BrokerNode(1, tmp_path / "twin", brokers.etcd)
    twin.proc.launch()
    try:
        twin.proc.wait_for_log("waiting for its lease to expire")
        assert "msg=ready" not in twin.proc.log_text()
        # The original goes away: the twin takes the id once the old lease has expired.
        brokers.brokers[1].proc.kill()
        twin.proc.wait_for_log("msg=ready", timeout=15)
        assert twin.cluster()["registered"]
    finally:
        twin.proc.stop()


def test_brokers_come_back_after_etcd_restarts(brokers: BrokerCluster) -> None:
    before = wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers")
    brokers.etcd.kill()
    brokers.etcd.start()
    wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers after a quick restart")
    # Down for longer than a lease: every broker loses its registration, keeps serving,
    # and registers again once etcd is back (waiting out the leases etcd restored).
    brokers.etcd.kill()
    time.sleep(brokers.lease_ms / 1000 + 2)
    assert all(not n.cluster()["registered"] for n in brokers.brokers)
    brokers.etcd.start()
    after = wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]),
                     "three brokers after etcd's restart", timeout=30)
    assert after["controller"] is not None
    # Still serving all along: health answered by every broker.
    assert all(json.dumps(n.health()) for n in brokers.brokers)
    assert after["controller_epoch"] >= before["controller_epoch"]


def created_id(etcd_endpoint: str) -> uuid.UUID:
    async def read() -> uuid.UUID:
        async with trio_asyncio.open_loop():
            etcd = Etcd.from_text(etcd_endpoint)
            try:
                entry = await etcd.get(TOPICS + b"orders")
            finally:
                etcd.close()
        assert entry is not None
        return TopicMeta.decode(entry.value).topic_id

    return trio.run(read)


def test_the_controller_moves_leaders_off_dead_brokers(brokers: BrokerCluster) -> None:
    wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers")

    async def create() -> dict:
        async with trio_asyncio.open_loop():
            etcd = Etcd.from_text(brokers.etcd.endpoint)
            try:
                first = await create_topic(etcd, "orders", 6, 3, {0: None, 1: None, 2: None})
                again = await create_topic(etcd, "orders", 6, 3, {0: None, 1: None, 2: None})
                assert again is None  # created once
                return first
            finally:
                etcd.close()

    created = trio.run(create)
    assert sorted(r.leader for r in created.values()) == [0, 0, 1, 1, 2, 2]

    # Every broker opens its replicas under the cluster's topic id, and knows its roles.
    def roles() -> list[dict]:
        return [n.cluster()["replicas"] for n in brokers.brokers]

    wait_for(lambda: roles() == [{"leader": 2, "follower": 4}] * 3, "replicas opened")
    def catalogued() -> list[set[tuple[str, str, int]]]:
        catalogues = [json.loads((n.workdir / f"broker{n.broker_id}" / "topics.json")
                                 .read_text()) for n in brokers.brokers]
        return [{(t["name"], t["id"], t["partitions"]) for t in c["topics"]}
                for c in catalogues]

    wanted = {("orders", str(created_id(brokers.etcd.endpoint)), 6)}
    wait_for(lambda: catalogued() == [wanted] * 3, "the topic in every broker's catalogue")

    # Broker 0 is SIGKILLed: its partitions get new leaders from their ISR with the epoch
    # bumped; it leaves every ISR; the others' partitions keep their leader and epoch.
    brokers.brokers[0].proc.kill()

    def moved() -> dict | None:
        states = partition_states(brokers.etcd.endpoint)
        if any(0 in s.isr or s.leader == 0 for s in states.values()):
            return None
        return states

    after = wait_for(moved, "leaders moved off broker 0", timeout=20)
    for (_topic, partition), state in after.items():
        before = created[partition]
        assert state.leader in (1, 2) and state.isr == tuple(b for b in before.replicas if b)
        assert state.leader_epoch == before.leader_epoch + (before.leader == 0)
        assert state.leader == before.leader or before.leader == 0

    # It comes back: it leads nothing (leaders and epochs stay), and each leader adds it back
    # to the ISR once it has caught up (broker.replication), in replica order.
    brokers.brokers[0].proc.start()
    wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers again")
    def all_in_sync() -> dict | None:
        states = partition_states(brokers.etcd.endpoint)
        return states if all(len(s.isr) == 3 for s in states.values()) else None

    rejoined = wait_for(all_in_sync, "broker 0 back in every ISR")
    assert isinstance(rejoined, dict)
    for key, state in rejoined.items():
        assert (state.leader, state.leader_epoch) == (after[key].leader, after[key].leader_epoch)
        assert state.isr == state.replicas

    # Two of three down: the last in-sync replica leads everything.
    survivor = brokers.brokers[2]
    for node in brokers.brokers:
        if node is not survivor:
            node.proc.kill()
    wait_for(lambda: all(s.leader == 2 and s.isr == (2,) for s in
                         partition_states(brokers.etcd.endpoint).values()),
             "broker 2 leading alone", timeout=20)
    assert survivor.cluster()["controller"] == 2
    assert survivor.cluster()["replicas"] == {"leader": 6, "follower": 0}


def test_create_topics_through_kafka_places_replicas_over_the_cluster(
        brokers: BrokerCluster, tmp_path: Path) -> None:
    wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers")
    gateway, kafka_port = gateway_on(brokers.brokers[1], tmp_path)
    try:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{kafka_port}"})
        futures = admin.create_topics([NewTopic("replicated", 4, 3), NewTopic("too-wide", 1, 4),
                                       NewTopic("defaulted", 2)], request_timeout=20)
        futures["replicated"].result(20)
        futures["defaulted"].result(20)
        with pytest.raises(KafkaException) as refused:
            futures["too-wide"].result(20)
        assert refused.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR
        again = admin.create_topics([NewTopic("replicated", 4, 3)])["replicated"]
        with pytest.raises(KafkaException) as exists:
            again.result(20)
        assert exists.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

        states = partition_states(brokers.etcd.endpoint)
        replicated = {p: s for (t, p), s in states.items() if t == "replicated"}
        assert sorted(replicated) == [0, 1, 2, 3]
        assert all(sorted(s.replicas) == [0, 1, 2] for s in replicated.values())
        assert all(len(s.replicas) == 1 for (t, _), s in states.items() if t == "defaulted")
        assert not any(t == "too-wide" for t, _ in states)
        # Every broker opened both topics, the registry's _schemas (which the gateway created
        # through the same path) and the coordination partition, created when the registry's
        # election group first asked for a coordinator; the client sees them through the
        # gateway.
        wait_for(lambda: all(n.health()["topics"] == 4 for n in brokers.brokers),
                 "the topics on every broker")
        states = partition_states(brokers.etcd.endpoint)
        assert sorted(t for t, _ in states) == ["__consumer_offsets", "_schemas", "defaulted",
                                                 "defaulted", "replicated", "replicated",
                                                 "replicated", "replicated"]
        listed = admin.list_topics(timeout=10).topics
        assert len(listed["replicated"].partitions) == 4 and "too-wide" not in listed
    finally:
        gateway.stop()


def test_partitions_added_and_topics_deleted_through_kafka_reach_every_broker(
        brokers: BrokerCluster, tmp_path: Path) -> None:
    wait_for(lambda: agreed(brokers.brokers, [0, 1, 2]), "three brokers")
    gateway, kafka_port = gateway_on(brokers.brokers[0], tmp_path, "--no-registry")
    try:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{kafka_port}"})
        admin.create_topics([NewTopic("grows", 2, 2), NewTopic("goes", 1, 3)])["grows"].result(20)
        admin.create_partitions([NewPartitions("grows", 5)])["grows"].result(20)
        states = partition_states(brokers.etcd.endpoint)
        grows = {p: s for (t, p), s in states.items() if t == "grows"}
        assert sorted(grows) == [0, 1, 2, 3, 4] and all(len(s.replicas) == 2
                                                         for s in grows.values())
        wait_for(lambda: all(json.loads((n.workdir / f"broker{n.broker_id}" / "topics.json")
                                        .read_text())["topics"] for n in brokers.brokers),
                 "catalogues written")

        def partition_counts(node: BrokerNode) -> dict[str, int]:
            catalogue = json.loads((node.workdir / f"broker{node.broker_id}" / "topics.json")
                                   .read_text())
            return {t["name"]: t["partitions"] for t in catalogue["topics"]}

        wait_for(lambda: all(partition_counts(n) == {"grows": 5, "goes": 1}
                             for n in brokers.brokers), "five partitions everywhere")
        admin.delete_topics(["goes"])["goes"].result(20)
        assert not any(t == "goes" for t, _ in partition_states(brokers.etcd.endpoint))
        wait_for(lambda: all(partition_counts(n) == {"grows": 5} for n in brokers.brokers),
                 "the deleted topic gone from every broker")
        time.sleep(1.5)  # and it stays gone (nothing re-opens it)
        assert all(partition_counts(n) == {"grows": 5} for n in brokers.brokers)
        assert "goes" not in admin.list_topics(timeout=10).topics
    finally:
        gateway.stop()
