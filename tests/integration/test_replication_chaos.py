"""The scale-out history check: three brokers, two routing gateways, an RF=3 topic; an
idempotent acks=all producer writes through one gateway and a group consumer reads through the
other while brokers are SIGKILLed and restarted one at a time, and etcd restarts once.

Every ack and every consumed record is recorded; at the end the whole topic is read again and
checked: no acknowledged record lost, none stored twice, each at the offset its ack named (when
the client was told one), each partition in the order it was produced, the group consumer saw
every acknowledged record, and its consumption resumed within the session timeout whenever a
partition leader died.
``KELP_CLUSTER_KILL_CYCLES`` sets the number of kills (6 here, each broker twice; ``just soak``
runs more).

Brokers 1, 2 and 0 are killed in turn; whichever leads the coordination partition
(``__consumer_offsets-0``: groups, committed offsets, transactions) hands coordination to
another broker with it, and the group's consumption must resume within the session timeout
then too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from tests.cluster_procs import (
    BrokerCluster,
    gateway_on,
    partition_states,
    running_cluster,
    wait_for,
)

CYCLES = int(os.environ.get("KELP_CLUSTER_KILL_CYCLES", "6"))

PARTITIONS = 6
SESSION_TIMEOUT_S = 10.0


@pytest.fixture
def brokers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerCluster]:
    # A short replica lag so that ISR changes happen within a test.
    yield from running_cluster(tmp_path, request,
                               broker_args=("--replica-lag-time-max-ms", "5000"))


class History:
    """What the clients saw: acks (value -> partition, offset) and consumed records."""

    def __init__(self) -> None:
        self.acked: dict[str, tuple[int, int]] = {}
        self.failed: list[str] = []
        # librdkafka's epoch bumps and sequence resets: each re-sends batches it could not
        # prove stored under new sequence numbers, the way a duplicate would get in.
        self.resequenced: list[str] = []
        self.consumed: list[tuple[int, int, str]] = []
        self.consumed_at: list[float] = []  # when each poll brought records
        self.kills: list[tuple[float, int]] = []  # when which broker was killed
        self.cycles: list[tuple[float, float, bool]] = []  # kill, cycle end, coordinator?
        self.sent = 0
        self.stop = threading.Event()
        self.produced = threading.Event()  # the producer flushed: every ack is in


class _Resequencing(logging.Handler):
    """Keeps librdkafka's reports of an idempotence epoch bump or sequence reset."""

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith(("ERRSEQ ", "UNKPID ", "ERRPID ")) or (
                text.startswith("DRAIN ") and ("epoch bump" in text or " reset " in text)):
            self.history.resequenced.append(text[:300])


def run_producer(bootstrap: str, history: History) -> None:
    librdkafka_log = logging.getLogger("history.producer")
    librdkafka_log.propagate = False
    librdkafka_log.setLevel(logging.DEBUG)
    librdkafka_log.addHandler(_Resequencing(history))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5, "message.timeout.ms": 120_000,
                         "debug": "eos", "logger": librdkafka_log})

    def delivered(error: KafkaError | None, message: object) -> None:
        if error is not None:
            history.failed.append(str(error))
        else:
            history.acked[message.value().decode()] = (message.partition(), message.offset())

    while not history.stop.is_set():
        value = f"{history.sent % PARTITIONS}:{history.sent}"
        producer.produce("history", value.encode(), partition=history.sent % PARTITIONS,
                         on_delivery=delivered)
        history.sent += 1
        producer.poll(0.002)
    producer.flush(120)
    history.produced.set()


def run_consumer(bootstrap: str, history: History) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "history",
                         "auto.offset.reset": "earliest",
                         "session.timeout.ms": int(SESSION_TIMEOUT_S * 1000),
                         "enable.auto.commit": True, "auto.commit.interval.ms": 500})
    consumer.subscribe(["history"])
    try:
        # Until every acknowledged record came (acks are only all in once the producer has
        # flushed), or a minute after the end.
        while not history.produced.is_set() or len(
                {v for _, _, v in history.consumed}) < len(history.acked):
            got = [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
            if got:
                history.consumed_at.append(time.monotonic())
            history.consumed += [(m.partition(), m.offset(), m.value().decode()) for m in got]
            if history.stop.is_set() and time.monotonic() > history.deadline:
                break
    finally:
        consumer.close()


def committed_total(admin: AdminClient) -> int:
    """The sum of the group's committed offsets, as its coordinator answers now (-1 while it
    cannot)."""
    try:
        listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("history")])
        partitions = listed["history"].result(10).topic_partitions
    except KafkaException:
        return -1
    return sum(max(tp.offset, 0) for tp in partitions)


def replication_report(brokers: BrokerCluster) -> str:
    """Each partition's state in etcd and each broker's own view of its replication (leaders'
    follower progress, followers' last fetch), for a failure message."""
    lines = [f"{key}: {state}" for key, state in
             sorted(partition_states(brokers.etcd.endpoint).items())]
    for node in brokers.brokers:
        try:
            detail = node.cluster().get("replication")
        except OSError as exc:
            detail = repr(exc)
        lines.append(f"broker {node.broker_id}: {json.dumps(detail, sort_keys=True)}")
    return "\n".join(lines)


def read_log(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int, str]]:
    """(partition, offset, value) of every stored record, each offset once (a consumer may
    deliver one twice; the log holds it once), read up to each partition's high-water mark."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "log-reader",
                         "enable.auto.commit": False})
    stored: dict[tuple[int, int], str] = {}
    try:
        for partition in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10)
            consumer.assign([TopicPartition(topic, partition, low)])
            deadline = time.monotonic() + 60
            while not any(p == partition and o == high - 1 for p, o in stored) and \
                    high > low and time.monotonic() < deadline:
                for message in consumer.consume(500, timeout=0.2):
                    if message.error() is None:
                        stored[(message.partition(), message.offset())] = \
                            message.value().decode()
    finally:
        consumer.close()
    return [(p, o, v) for (p, o), v in sorted(stored.items())]


def test_no_acknowledged_record_is_lost_or_duplicated_while_brokers_die(
        brokers: BrokerCluster, tmp_path: Path) -> None:
    gateways = [gateway_on(brokers.brokers[0], tmp_path, "--no-registry", "--etcd",
                           brokers.etcd.endpoint, "--node-id", str(i), name=f"gateway{i}")
                for i in range(2)]
    try:
        produce_to, consume_from = (f"127.0.0.1:{port}" for _, port in gateways)
        admin = AdminClient({"bootstrap.servers": produce_to})
        admin.create_topics([NewTopic("history", PARTITIONS, 3)])["history"].result(30)
        history = History()
        history.deadline = float("inf")
        threads = [threading.Thread(target=run_producer, args=(produce_to, history)),
                   threading.Thread(target=run_consumer, args=(consume_from, history))]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(history.acked) > 200, "the first acks", timeout=30)
            for cycle in range(CYCLES):
                # One failure per session timeout: the group's heartbeats must have had a
                # coordinator to answer them since the last kill. Two coordinator failovers 5 s
                # apart (about 4 s each) leave librdkafka no heartbeat answered for 10 s, and it
                # ends its session itself (as it would against Kafka): a pause from two causes.
                if history.kills:
                    time.sleep(max(history.kills[-1][0] + SESSION_TIMEOUT_S - time.monotonic(),
                                   0))
                victim = brokers.brokers[(cycle + 1) % len(brokers.brokers)]
                coordinator = partition_states(brokers.etcd.endpoint)[
                    ("__consumer_offsets", 0)].leader
                victim.proc.kill()
                history.kills.append((time.monotonic(), victim.broker_id))
                wait_for(lambda v=victim.broker_id: all(
                    s.leader != v and v not in s.isr
                    for s in partition_states(brokers.etcd.endpoint).values()),
                    f"cycle {cycle}: leaders off broker {victim.broker_id}", timeout=30)
                acked = len(history.acked)
                wait_for(lambda a=acked: len(history.acked) > a + 50,
                         f"cycle {cycle}: acks go on without broker {victim.broker_id}",
                         timeout=30)
                victim.proc.start()
                try:
                    wait_for(lambda: all(len(s.isr) == 3 for s in
                                         partition_states(brokers.etcd.endpoint).values()),
                             f"cycle {cycle}: broker {victim.broker_id} back in every ISR",
                             timeout=60)
                except AssertionError:
                    print(replication_report(brokers))
                    raise
                if cycle == CYCLES // 2:
                    brokers.etcd.stop()
                    brokers.etcd.start()
                # The group consumes again, and commits through its coordinator (wherever that
                # is now), before the next kill, so each pause has one cause.
                before = len(history.consumed)
                wait_for(lambda b=before: len(history.consumed) > b + 100,
                         f"cycle {cycle}: consumption going on", timeout=60)
                committed = committed_total(admin)
                wait_for(lambda c=committed: committed_total(admin) > c,
                         f"cycle {cycle}: the group committing", timeout=60)
                history.cycles.append((history.kills[-1][0], time.monotonic(),
                                       victim.broker_id == coordinator))
        finally:
            history.stop.set()
            history.deadline = time.monotonic() + 60
            for thread in threads:
                thread.join(180)
        # Consumption resumes within the session timeout when a partition leader dies, and
        # when the group's coordinator does.
        leader_pauses, coordinator_pauses = [0.0], [0.0]
        for killed_at, ended_at, was_coordinator in history.cycles:
            times = [killed_at, *(t for t in history.consumed_at if killed_at < t < ended_at)]
            longest = max(b - a for a, b in itertools.pairwise(times))
            (coordinator_pauses if was_coordinator else leader_pauses).append(longest)
        print(f"history: {history.sent} sent, {len(history.acked)} acked, "
              f"{len(history.consumed)} consumed, {CYCLES} kills; longest consumer pause "
              f"after a leader's kill {max(leader_pauses):.1f} s, after the "
              f"coordinator's {max(coordinator_pauses):.1f} s; "
              f"{len(history.resequenced)} librdkafka resequencing reports")
        for line in history.resequenced[:20]:
            print("  ", line)
        assert max(leader_pauses) < SESSION_TIMEOUT_S
        assert max(coordinator_pauses) < SESSION_TIMEOUT_S
        assert not any(thread.is_alive() for thread in threads)
        assert not history.failed, history.failed[:5]
        assert len(history.acked) == history.sent > 1000

        stored = read_log(consume_from, "history", PARTITIONS)
        where: dict[str, list[tuple[int, int]]] = {}
        for p, o, v in stored:
            where.setdefault(v, []).append((p, o))
        twice = {v: places for v, places in where.items() if len(places) > 1}
        lost = sorted(set(history.acked) - set(where))
        # librdkafka reports a batch as delivered without an offset when a later batch of the
        # same producer was accepted while it awaited a retry (its sequence proves it stored):
        # those are checked for presence, order and uniqueness, not position.
        misplaced = {v: (history.acked[v], where[v]) for v in history.acked
                     if v in where and history.acked[v][1] is not None
                     and history.acked[v] not in where[v]}
        assert not lost and not misplaced, (f"{len(lost)} lost: {lost[:10]}; "
                                            f"{len(misplaced)} misplaced: "
                                            f"{list(misplaced.items())[:10]}")
        for partition in range(PARTITIONS):
            sequence = [int(v.split(":")[1]) for p, _, v in stored if p == partition]
            assert sequence == sorted(sequence), f"partition {partition} out of order"
        # The group consumer saw every acknowledged record (some twice after a rebalance is
        # at-least-once, as in Kafka), and nothing that was not stored.
        consumed = {v for _, _, v in history.consumed}
        assert consumed == set(history.acked), [
            (p, len({v for q, _, v in history.consumed if q == p}),
             len([v for q, _, v in stored if q == p])) for p in range(PARTITIONS)]
        assert {(p, o, v) for p, o, v in history.consumed} <= set(stored)
        assert not twice, f"stored twice: {list(twice.items())[:5]}"
    finally:
        for gateway, _ in gateways:
            gateway.stop()
