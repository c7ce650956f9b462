"""Group, offset and producer-id coordination fails over with the leader of the coordination
partition (``__consumer_offsets-0``): three brokers on etcd, a routing gateway, real clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.cluster_procs import (
    BrokerCluster,
    partition_states,
    routed_gateway,
    running_cluster,
    wait_for,
)

COORDINATION = ("__consumer_offsets", 0)
SESSION_TIMEOUT_S = 10.0


@pytest.fixture
def brokers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerCluster]:
    yield from running_cluster(tmp_path, request)


@pytest.fixture
def bootstrap(brokers: BrokerCluster, tmp_path: Path) -> Iterator[str]:
    """A routing gateway's Kafka address."""
    yield from routed_gateway(brokers, tmp_path)


def coordinator_of(brokers: BrokerCluster, *, not_on: int | None = None) -> int:
    """The broker leading the coordination partition (once it has three in-sync replicas,
    or once its lead moved off ``not_on``). It exists once a client asked for a group or a
    transaction."""
    def state() -> object:
        return partition_states(brokers.etcd.endpoint).get(COORDINATION)

    if not_on is None:
        wait_for(lambda: (s := state()) is not None and len(s.isr) == 3 and s.leader >= 0,
                 "the coordination partition and its leader", timeout=30)
    else:
        wait_for(lambda: state().leader not in (not_on, -1), "a new coordinator", timeout=30)
    return state().leader


def produce(bootstrap: str, topic: str, count: int, start: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all"})
    for n in range(start, start + count):
        producer.produce(topic, f"{n}".encode(), partition=n % 3)
    assert producer.flush(60) == 0


def test_groups_offsets_and_producer_ids_survive_the_coordinators_death(
        brokers: BrokerCluster, bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("orders", 3, 3)])["orders"].result(30)
    produce(bootstrap, "orders", 300)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "billing",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": int(SESSION_TIMEOUT_S * 1000)})
    consumer.subscribe(["orders"])
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while len(seen) < 150 and time.monotonic() < deadline:
        seen += [m.value().decode() for m in consumer.consume(50, timeout=0.5)
                 if m.error() is None]
    assert len(seen) >= 150
    committed = consumer.commit(asynchronous=False)
    positions = {tp.partition: max(tp.offset, 0) for tp in committed}  # -1001: none
    assert sum(positions.values()) == len(seen)

    # The group's first call created the coordination partition.
    victim_id = coordinator_of(brokers)
    victim = brokers.brokers[victim_id]
    victim.proc.kill()
    killed_at = time.monotonic()
    coordinator_of(brokers, not_on=victim_id)

    # The same member carries on: heartbeats and commits reach the new coordinator,
    # which knows its generation from the replicated log.
    produce(bootstrap, "orders", 30, start=300)
    resumed_at = None
    deadline = time.monotonic() + 60
    while len(seen) < 330 and time.monotonic() < deadline:
        got = [m.value().decode() for m in consumer.consume(50, timeout=0.5)
               if m.error() is None]
        if got and resumed_at is None:
            resumed_at = time.monotonic()
        seen += got
    assert sorted(int(v) for v in seen) == list(range(330))
    assert resumed_at is not None and resumed_at - killed_at < SESSION_TIMEOUT_S + 5
    consumer.commit(asynchronous=False)
    consumer.close()

    # Committed offsets are the new coordinator's: a new member starts where they are.
    again = Consumer({"bootstrap.servers": bootstrap, "group.id": "billing",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        stored = again.committed([TopicPartition("orders", p) for p in range(3)],
                                 timeout=20)
        assert sum(tp.offset for tp in stored) == 330
    finally:
        again.close()

    # Producer ids keep coming from etcd's blocks: a new producer gets a fresh id and its
    # idempotent writes are accepted.
    produce(bootstrap, "orders", 10, start=330)
    victim.proc.start()
    wait_for(lambda: len(partition_states(brokers.etcd.endpoint)[COORDINATION].isr) == 3,
             "the old coordinator back in sync", timeout=60)


def read_committed(bootstrap: str, topic: str, partitions: int) -> list[str]:
    """Every record a read_committed reader gets, up to the last stable offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "auditor",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    values: list[str] = []
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                consumer.position([TopicPartition(topic, p)])[0].offset < end
                for p, end in ends.items()):
            values += [m.value().decode() for m in consumer.consume(100, timeout=0.5)
                       if m.error() is None]
    finally:
        consumer.close()
    return values


def test_transactions_span_partitions_led_by_other_brokers_and_survive_the_coordinator(
        brokers: BrokerCluster, bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("ledger", 3, 3)])["ledger"].result(30)
    leaders = {partition_states(brokers.etcd.endpoint)[("ledger", p)].leader
               for p in range(3)}
    assert len(leaders) > 1  # markers must reach leaders other than the coordinator

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "ledger-tx"})
    producer.init_transactions(30)
    coordinator = coordinator_of(brokers)  # created by the producer's first call

    def transaction(values: range, commit: bool) -> None:
        producer.begin_transaction()
        for n in values:
            producer.produce("ledger", f"{n}".encode(), partition=n % 3)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    transaction(range(0, 30), commit=True)
    transaction(range(30, 60), commit=False)
    assert sorted(int(v) for v in read_committed(bootstrap, "ledger", 3)) == \
        list(range(30))

    brokers.brokers[coordinator].proc.kill()
    coordinator_of(brokers, not_on=coordinator)
    # The same producer goes on with the new coordinator, which read its id and epoch
    # from the replicated log.
    transaction(range(60, 90), commit=True)
    assert sorted(int(v) for v in read_committed(bootstrap, "ledger", 3)) == \
        [*range(30), *range(60, 90)]
