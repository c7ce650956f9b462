"""Partition administration in a cluster, through kafka-python's admin client: a fourth broker
joins and a partition is reassigned onto it while a producer and a consumer run (no record
lost, duplicated or reordered; the new replica holds the leader's bytes), and a preferred
leader election moves leadership back to a returning broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient
from kafka import TopicPartition as KTopicPartition

from tests.cluster_procs import (
    BrokerCluster,
    BrokerNode,
    gateway_on,
    partition_states,
    running_cluster,
    wait_for,
)
from tests.integration.test_replication import create, log_bytes


@pytest.fixture
def brokers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerCluster]:
    yield from running_cluster(tmp_path, request,
                               broker_args=("--replica-lag-time-max-ms", "5000"))


@pytest.fixture
def kafka(brokers: BrokerCluster, tmp_path: Path) -> Iterator[str]:
    gateway, port = gateway_on(brokers.brokers[0], tmp_path, "--no-registry", "--etcd",
                               brokers.etcd.endpoint)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        gateway.stop()


def test_a_partition_moves_to_a_new_broker_with_no_gap_for_its_consumer(
        brokers: BrokerCluster, kafka: str, tmp_path: Path) -> None:
    from confluent_kafka.admin import NewTopic

    create(kafka, NewTopic("moving", 1, 3))
    assert partition_states(brokers.etcd.endpoint)[("moving", 0)].replicas == (0, 1, 2)
    stop = threading.Event()
    acked: list[str] = []
    consumed: list[tuple[int, str]] = []

    def produce() -> None:
        producer = Producer({"bootstrap.servers": kafka, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 2})
        sent = 0
        while not stop.is_set():
            producer.produce("moving", f"m{sent}".encode(), partition=0,
                             on_delivery=lambda e, m: e is None and acked.append(
                                 m.value().decode()))
            sent += 1
            producer.poll(0.002)
        assert producer.flush(60) == 0

    def consume() -> None:
        consumer = Consumer({"bootstrap.servers": kafka, "group.id": "mover",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition("moving", 0, 0)])
        while not stop.is_set() or len(consumed) < len(acked):
            for message in consumer.consume(200, timeout=0.2):
                if message.error() is None:
                    consumed.append((message.offset(), message.value().decode()))
        consumer.close()

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    admin = KafkaAdminClient(bootstrap_servers=kafka, request_timeout_ms=30_000)
    try:
        wait_for(lambda: len(acked) > 300, "records flowing")
        newcomer = BrokerNode(3, tmp_path, brokers.etcd, brokers.lease_ms,
                              ("--replica-lag-time-max-ms", "5000"))
        brokers.brokers.append(newcomer)  # stopped with the others
        newcomer.proc.start()
        wait_for(lambda: newcomer.cluster()["registered"], "broker 3 registered")
        partition = KTopicPartition("moving", 0)
        # Off broker 0, the leader: broker 3 catches up, then broker 1 takes the lead.
        assert admin.alter_partition_reassignments({partition: [1, 2, 3]}) == {
            partition: None}
        moved = wait_for(lambda: (s := partition_states(brokers.etcd.endpoint)[
            ("moving", 0)]).target is None and s.replicas == (1, 2, 3) and s,
            "the partition on brokers 1, 2 and 3", timeout=60)
        assert moved.leader == 1 and moved.isr == (1, 2, 3)
        assert admin.list_partition_reassignments() == {}
        settled = len(acked)
        wait_for(lambda: len(acked) > settled + 300, "records flowing on the new replicas")
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        admin.close()
    assert not any(thread.is_alive() for thread in threads)
    values = [v for _, v in consumed]
    assert len(values) == len(set(values)) and set(values) == set(acked)
    assert [o for o, _ in consumed] == list(range(len(consumed)))  # no gap, no reordering
    assert [int(v[1:]) for v in values] == sorted(int(v[1:]) for v in values)
    leader = brokers.brokers[1]
    wait_for(lambda: log_bytes(brokers.brokers[3], "moving", 0) ==
             log_bytes(leader, "moving", 0), "broker 3 holding the leader's bytes")


def test_a_preferred_leader_election_moves_the_lead_back(brokers: BrokerCluster,
                                                         kafka: str) -> None:
    from confluent_kafka.admin import NewTopic

    create(kafka, NewTopic("preferred", 3, 3))
    states = partition_states(brokers.etcd.endpoint)
    led_by_1 = next(p for (t, p), s in states.items() if t == "preferred" and s.leader == 1)
    brokers.brokers[1].proc.kill()
    wait_for(lambda: partition_states(brokers.etcd.endpoint)[("preferred", led_by_1)].leader
             not in (1, -1), "a new leader")
    brokers.brokers[1].proc.start()
    wait_for(lambda: 1 in partition_states(brokers.etcd.endpoint)[("preferred",
                                                                   led_by_1)].isr,
             "broker 1 back in sync", timeout=30)
    admin = KafkaAdminClient(bootstrap_servers=kafka, request_timeout_ms=30_000)
    try:
        result = admin.elect_leaders(0, {"preferred": [led_by_1, 7]}, raise_errors=False)
        codes = {p.partition_id: p.error_code
                 for t in result.replica_election_results for p in t.partition_result}
        assert codes == {led_by_1: 0, 7: 3}  # elected; UNKNOWN_TOPIC_OR_PARTITION
        state = partition_states(brokers.etcd.endpoint)[("preferred", led_by_1)]
        assert state.leader == 1
        again = admin.elect_leaders(0, {"preferred": [led_by_1]}, raise_errors=False)
        assert [p.error_code for t in again.replica_election_results
                for p in t.partition_result] == [84]  # ELECTION_NOT_NEEDED
    finally:
        admin.close()
