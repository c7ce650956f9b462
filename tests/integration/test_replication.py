"""Replicated partitions on three real brokers and a real etcd, driven by confluent-kafka through
a gateway that routes each partition to its leader: acks=all records survive a leader's
SIGKILL, a returning broker catches up byte for byte and rejoins the ISR, min.insync.replicas
refuses acks=all while reads go on, a fenced leader truncates, configs and OffsetForLeaderEpoch
follow the cluster, gateways are Kafka nodes; and partition administration through
kafka-python's admin client: a partition moves to a fourth broker under a running producer and
consumer, and a preferred leader election moves the lead back."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaAdminClient
from kafka import TopicPartition as KTopicPartition

from tests.cluster_procs import (
    BrokerCluster,
    BrokerNode,
    gateway_on,
    partition_states,
    routed_gateway,
    running_cluster,
    wait_for,
)


@pytest.fixture
def brokers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerCluster]:
    # A short replica lag so that ISR changes happen within a test.
    yield from running_cluster(tmp_path, request,
                               broker_args=("--replica-lag-time-max-ms", "5000"))


@pytest.fixture
def kafka(brokers: BrokerCluster, tmp_path: Path) -> Iterator[str]:
    """A routing gateway whose control calls go to broker 0 (never killed here)."""
    yield from routed_gateway(brokers, tmp_path)


def create(bootstrap: str, topic: NewTopic) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([topic])[topic.topic].result(30)


def produce(bootstrap: str, topic: str, values: list[tuple[int, str]], **config: object
            ) -> dict[str, tuple[int, int]]:
    """Send (partition, value) pairs; every delivery must succeed: value -> (partition, offset)."""
    acked: dict[str, tuple[int, int]] = {}
    failed: list[object] = []

    def delivered(error: KafkaError | None, message: object) -> None:
        if error is not None:
            failed.append(error)
        else:
            acked[message.value().decode()] = (message.partition(), message.offset())

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5, "message.timeout.ms": 60_000,
                         **config})
    for partition, value in values:
        producer.produce(topic, value.encode(), partition=partition, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(90) == 0
    assert not failed, failed[:3]
    return acked


def consume_all(bootstrap: str, topic: str, partitions: int, expected: int
                ) -> list[tuple[int, int, str]]:
    """(partition, offset, value) of every record from the start, until ``expected`` came."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "checker",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: list[tuple[int, int, str]] = []
    try:
        for _ in range(600):
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is None:
                    seen.append((message.partition(), message.offset(),
                                 message.value().decode()))
            if len(seen) >= expected:
                break
    finally:
        consumer.close()
    return seen


def leaders(brokers: BrokerCluster, topic: str) -> dict[int, int]:
    return {p: s.leader for (t, p), s in partition_states(brokers.etcd.endpoint).items()
            if t == topic}


def log_bytes(node: BrokerNode, topic: str, partition: int) -> bytes:
    directory = node.workdir / f"broker{node.broker_id}" / f"{topic}-{partition}"
    return b"".join(path.read_bytes() for path in sorted(directory.glob("*.log")))


def test_acks_all_records_survive_a_leaders_sigkill_and_it_returns_byte_for_byte(
        brokers: BrokerCluster, kafka: str) -> None:
    create(kafka, NewTopic("orders", 3, 3))
    led = leaders(brokers, "orders")
    assert sorted(led.values()) == [0, 1, 2]  # one partition led by each broker
    before = produce(kafka, "orders", [(i % 3, f"a{i}") for i in range(300)])

    victim = brokers.brokers[1]
    victim.proc.kill()
    # Produced during the failover: the client retries until the new leader takes them.
    after = produce(kafka, "orders", [(i % 3, f"b{i}") for i in range(300)])
    moved = leaders(brokers, "orders")
    assert 1 not in moved.values()
    alive = [n for n in brokers.brokers if n is not victim]
    # Every partition lacks broker 1 now: each leader reports it under-replicated. (Every
    # partition has three replicas: "orders", and the coordination partition if a client's
    # group or transaction created it.)
    total = len(partition_states(brokers.etcd.endpoint))
    assert sum(n.metric("kelp_broker_leader_partitions") for n in alive) == total
    assert sum(n.metric("kelp_broker_under_replicated_partitions") for n in alive) == total

    acked = {**before, **after}
    seen = consume_all(kafka, "orders", 3, len(acked))
    values = [value for _, _, value in seen]
    assert len(values) == len(set(values)) == 600, "lost or duplicated records"
    assert {value: (p, o) for p, o, value in seen} == acked  # where each ack said
    for partition in range(3):
        offsets = [o for p, o, _ in seen if p == partition]
        assert offsets == sorted(offsets)
        order = [v for p, _, v in seen if p == partition]
        assert order == [v for v in [f"a{i}" for i in range(300)] +
                         [f"b{i}" for i in range(300)] if int(v[1:]) % 3 == partition]

    # The killed broker comes back as a follower, catches up and rejoins every ISR; each
    # replica then holds the same bytes (offsets and leader epochs as the leader wrote them).
    victim.proc.start()
    wait_for(lambda: all(len(s.isr) == 3 for (t, _), s in
                         partition_states(brokers.etcd.endpoint).items() if t == "orders"),
             "broker 1 back in every ISR", timeout=30)
    wait_for(lambda: sum(n.metric("kelp_broker_under_replicated_partitions")
                         for n in brokers.brokers) == 0, "nothing under-replicated")
    total = len(partition_states(brokers.etcd.endpoint))
    assert sum(n.metric("kelp_broker_follower_partitions") for n in brokers.brokers) == 2 * total
    for partition in range(3):
        wait_for(lambda p=partition: len({log_bytes(n, "orders", p)
                                          for n in brokers.brokers}) == 1,
                 f"orders-{partition} identical on every replica")
        assert log_bytes(brokers.brokers[0], "orders", partition)
    # /health shows it from each side: the leader counts both followers at its log end, each
    # follower's last fetch was answered just now.
    for partition in range(3):
        name = f"orders-{partition}"
        views = {n.broker_id: n.cluster()["replication"] for n in brokers.brokers}
        (leader,) = [b for b, view in views.items() if name in view["leading"]]
        led = views[leader]["leading"][name]
        assert len(led["isr"]) == 3
        assert {f: p["log_end"] for f, p in led["followers"].items()} == {
            str(b): led["log_end"] for b in views if b != leader}
        for follower in (b for b in views if b != leader):
            followed = views[follower]["following"][name]
            assert followed["leader"] == leader and followed["log_end"] == led["log_end"]
            assert followed["s_since_fetch"] < 5  # long polls end within 0.5 s


def test_a_leader_dying_under_a_long_poll_does_not_hold_the_other_partitions(
        brokers: BrokerCluster, kafka: str) -> None:
    # One Fetch through the gateway covers partitions led by every broker. When a leader dies
    # while the consumer's long poll is parked there, the records of the partitions whose
    # leaders live must still come as soon as they are committed (the gateway held the whole
    # response for its 10 s reconnection wait: 9.9 s). With RF=3 the dead broker is in their
    # ISR until its 3 s lease ends, so the high-water mark moves (and the record is readable)
    # only then: about 3 s.
    create(kafka, NewTopic("spread", 3, 3))
    led = leaders(brokers, "spread")
    victim = brokers.brokers[1]
    alive = next(p for p, leader in led.items() if leader == 2)
    consumer = Consumer({"bootstrap.servers": kafka, "group.id": "spread",
                         "fetch.wait.max.ms": 2000, "enable.partition.eof": False})
    consumer.assign([TopicPartition("spread", p, 0) for p in range(3)])
    try:
        consumer.consume(10, timeout=2.0)  # the long polls are parked, nothing to read
        victim.proc.kill()
        time.sleep(0.2)  # the gateway sees the streams close; the poll is still in flight
        killed_at = time.monotonic()
        produce(kafka, "spread", [(alive, "after")])
        got: list[str] = []
        while not got and time.monotonic() - killed_at < 15:
            got = [m.value().decode() for m in consumer.consume(10, timeout=0.5)
                   if m.error() is None]
        waited = time.monotonic() - killed_at
    finally:
        consumer.close()
    assert got == ["after"]
    assert waited < 6.0, f"the record of a live leader's partition took {waited:.1f} s"


def test_a_topic_deleted_and_made_again_is_replicated_afresh(brokers: BrokerCluster,
                                                              kafka: str) -> None:
    # Deleted while its followers are fetching, then created again under the same name at
    # once: every broker replicates the new topic (none keeps a dead follower of the old one).
    admin = AdminClient({"bootstrap.servers": kafka})
    create(kafka, NewTopic("again", 1, 3))
    produce(kafka, "again", [(0, f"old{i}") for i in range(200)])
    admin.delete_topics(["again"])["again"].result(30)
    wait_for(lambda: ("again", 0) not in partition_states(brokers.etcd.endpoint),
             "the old topic gone from etcd")
    wait_for(lambda: _create_again(admin), "the topic created again", timeout=30)
    acked = produce(kafka, "again", [(0, f"new{i}") for i in range(100)])
    wait_for(lambda: len(partition_states(brokers.etcd.endpoint)[("again", 0)].isr) == 3,
             "every broker in the new topic's ISR", timeout=30)
    wait_for(lambda: len({log_bytes(n, "again", 0) for n in brokers.brokers}) == 1,
             "the new topic identical on every replica")
    seen = consume_all(kafka, "again", 1, len(acked))
    assert [v for _, _, v in seen] == [f"new{i}" for i in range(100)]


def _create_again(admin: AdminClient) -> bool:
    """Create "again" (RF=3); False while the old one is still being deleted."""
    try:
        admin.create_topics([NewTopic("again", 1, 3)])["again"].result(30)
    except KafkaException:  # TOPIC_ALREADY_EXISTS while the delete completes
        return False
    return True


def test_min_insync_replicas_refuses_acks_all_while_reads_continue(
        brokers: BrokerCluster, kafka: str) -> None:
    create(kafka, NewTopic("strict", 1, 3, config={"min.insync.replicas": "2"}))
    produce(kafka, "strict", [(0, f"r{i}") for i in range(50)])
    for node in brokers.brokers[1:]:
        node.proc.kill()
    wait_for(lambda: partition_states(brokers.etcd.endpoint)[("strict", 0)].isr == (0,),
             "broker 0 alone in the ISR", timeout=30)
    # ... and the leader knows it (its view follows etcd a moment later): otherwise the append
    # is written and refused after it (NOT_ENOUGH_REPLICAS_AFTER_APPEND), as in Kafka.
    wait_for(lambda: brokers.brokers[0].metric("kelp_broker_partition_in_sync_replicas",
                                               topic="strict", partition="0") == 1,
             "the leader seeing itself alone in the ISR")

    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": kafka, "acks": "all", "retries": 0,
                         "message.timeout.ms": 10_000})
    producer.produce("strict", b"refused", partition=0,
                     on_delivery=lambda error, _message: errors.append(error))
    producer.flush(20)
    assert [e.code() if e else None for e in errors] == [KafkaError.NOT_ENOUGH_REPLICAS]

    # acks=1 does not ask for replicas (as in Kafka), and reads go on.
    produce(kafka, "strict", [(0, "one-replica")], **{"acks": 1, "enable.idempotence": False})
    values = [v for _, _, v in consume_all(kafka, "strict", 1, 51)]
    assert values == [f"r{i}" for i in range(50)] + ["one-replica"]


def test_a_leader_fenced_while_stopped_truncates_what_it_wrote_alone(
        brokers: BrokerCluster, kafka: str) -> None:
    """A leader cut off from its followers (SIGSTOPped) takes acks=1 records no one else has,
    and is stopped in turn; the others come back, elect a new leader, which takes new records.
    The old leader, resumed, must drop its lone records (truncating at the new leader's epoch
    boundary) and end up with exactly the new leader's bytes: they are never served."""
    create(kafka, NewTopic("fenced", 3, 3))
    partition = next(p for p, leader in leaders(brokers, "fenced").items() if leader == 1)
    produce(kafka, "fenced", [(partition, f"s{i}") for i in range(20)])
    old = brokers.brokers[1]
    others = [n for n in brokers.brokers if n is not old]
    lone = Producer({"bootstrap.servers": kafka, "acks": 1, "enable.idempotence": False})
    lone.list_topics("fenced", timeout=10)  # metadata first: the control broker stops too
    for node in others:
        node.proc.signal(signal.SIGSTOP)
    try:
        # The followers' fetches parked at the leader are answered (empty) within its long
        # poll; after that nothing the leader writes reaches them.
        time.sleep(1.0)
        for i in range(5):  # within the replica lag, so the ISR is not shrunk meanwhile
            lone.produce("fenced", f"lone{i}".encode(), partition=partition)
        assert lone.flush(5) == 0
    finally:
        old.proc.signal(signal.SIGSTOP)
        for node in others:
            node.proc.signal(signal.SIGCONT)
    try:
        wait_for(lambda: leaders(brokers, "fenced")[partition] not in (1, -1), "a new leader",
                 timeout=30)
        produce(kafka, "fenced", [(partition, f"n{i}") for i in range(10)])
    finally:
        old.proc.signal(signal.SIGCONT)
    new_leader = brokers.brokers[leaders(brokers, "fenced")[partition]]
    wait_for(lambda: log_bytes(old, "fenced", partition) ==
             log_bytes(new_leader, "fenced", partition),
             "the old leader holding exactly the new leader's log", timeout=30)
    assert b"lone" not in log_bytes(old, "fenced", partition)
    assert "truncating to the leader's epoch boundary" in old.proc.log_text()
    values = [v for p, _, v in consume_all(kafka, "fenced", 3, 30) if p == partition]
    assert values == [f"s{i}" for i in range(20)] + [f"n{i}" for i in range(10)]


def test_topic_configs_altered_through_one_broker_apply_on_every_leader(
        brokers: BrokerCluster, kafka: str) -> None:
    """AlterConfigs reaches the gateway's broker, which writes the topic's configs to etcd;
    every broker applies them, so min.insync.replicas raised after creation is enforced by
    leaders that never saw the request."""
    from confluent_kafka.admin import ConfigResource

    create(kafka, NewTopic("configured", 3, 3))
    admin = AdminClient({"bootstrap.servers": kafka})
    resource = ConfigResource(ConfigResource.Type.TOPIC, "configured",
                              set_config={"min.insync.replicas": "3"})
    admin.alter_configs([resource])[resource].result(30)

    def catalogued(node: BrokerNode) -> dict[str, str]:
        catalogue = json.loads((node.workdir / f"broker{node.broker_id}" / "topics.json")
                               .read_text())
        return next(t.get("configs", {}) for t in catalogue["topics"]
                    if t["name"] == "configured")

    wait_for(lambda: all(catalogued(n) == {"min.insync.replicas": "3"}
                         for n in brokers.brokers), "the config on every broker")
    partition = next(p for p, leader in leaders(brokers, "configured").items() if leader == 1)
    brokers.brokers[2].proc.kill()
    wait_for(lambda: 2 not in partition_states(brokers.etcd.endpoint)[
        ("configured", partition)].isr, "broker 2 out of the ISR", timeout=30)
    wait_for(lambda: brokers.brokers[1].metric("kelp_broker_partition_in_sync_replicas",
                                               topic="configured",
                                               partition=str(partition)) == 2,
             "the leader seeing broker 2 out of the ISR")
    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": kafka, "acks": "all", "retries": 0,
                         "message.timeout.ms": 10_000})
    producer.produce("configured", b"refused", partition=partition,
                     on_delivery=lambda error, _message: errors.append(error))
    producer.flush(20)
    assert [e.code() if e else None for e in errors] == [KafkaError.NOT_ENOUGH_REPLICAS]


def test_offset_for_leader_epoch_is_answered_by_the_leader_from_its_epochs(
        brokers: BrokerCluster, kafka: str) -> None:
    """After a failover a consumer validates its position (KIP-320): the gateway asks the
    partition's leader where each epoch ended, and fences a client with a stale epoch."""
    from kio.index import load_request_schema

    from tests.integration.test_api_versions_matrix import mk, nested
    from tests.kafka_raw import request_once

    create(kafka, NewTopic("epochs", 3, 3))
    partition = next(p for p, leader in leaders(brokers, "epochs").items() if leader == 1)
    produce(kafka, "epochs", [(partition, f"e0-{i}") for i in range(10)])
    brokers.brokers[1].proc.kill()
    wait_for(lambda: partition_states(brokers.etcd.endpoint)[("epochs", partition)].leader
             not in (1, -1), "a new leader")
    produce(kafka, "epochs", [(partition, f"e1-{i}") for i in range(5)])
    request_type = load_request_schema(23, 4)

    def ask(current: int, epoch: int) -> tuple[int, int, int]:
        response = request_once(kafka, mk(request_type, replica_id=-1, topics=(mk(
            nested(request_type, "OffsetForLeaderTopic"), topic="epochs", partitions=(
                mk(nested(request_type, "OffsetForLeaderPartition"), partition=partition,
                   current_leader_epoch=current, leader_epoch=epoch),)),)))
        found = response.topics[0].partitions[0]
        return found.error_code, found.leader_epoch, found.end_offset

    assert ask(1, 0) == (0, 0, 10)   # epoch 0 ended where the new leader's began
    assert ask(1, 1) == (0, 1, 15)   # the current epoch ends at the log end
    assert ask(0, 0)[0] == 74        # FENCED_LEADER_EPOCH: the client's metadata is stale


def test_gateways_are_kafka_nodes_sharing_the_partitions(brokers: BrokerCluster,
                                                         tmp_path: Path) -> None:
    """Two gateways: Metadata through either lists both as nodes, with the same leader for
    each partition, spread over them; a producer writes through both, and when one gateway
    stops, the other takes its partitions."""
    gateways = [gateway_on(brokers.brokers[0], tmp_path, "--no-registry", "--etcd",
                           brokers.etcd.endpoint, "--node-id", str(i), name=f"gw{i}")
                for i in range(2)]
    try:
        addresses = [f"127.0.0.1:{port}" for _, port in gateways]
        create(addresses[0], NewTopic("spread", 6, 3))

        def view(bootstrap: str) -> tuple[dict[int, int], dict[int, str]]:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            metadata = admin.list_topics("spread", timeout=10)
            return ({p.id: p.leader for p in metadata.topics["spread"].partitions.values()},
                    {b.id: f"{b.host}:{b.port}" for b in metadata.brokers.values()})

        wait_for(lambda: all(len(view(a)[1]) == 2 for a in addresses), "both gateways listed")
        (leaders_0, nodes_0), (leaders_1, nodes_1) = (view(a) for a in addresses)
        assert nodes_0 == nodes_1 == {0: addresses[0], 1: addresses[1]}
        assert leaders_0 == leaders_1 and set(leaders_0.values()) == {0, 1}
        acked = produce(addresses[0], "spread", [(i % 6, f"a{i}") for i in range(120)])
        gateways[1][0].stop()
        wait_for(lambda: view(addresses[0])[1] == {0: addresses[0]}, "gateway 1 gone")
        acked.update(produce(addresses[0], "spread", [(i % 6, f"b{i}") for i in range(120)]))
        values = [v for _, _, v in consume_all(addresses[0], "spread", 6, 240)]
        assert sorted(values) == sorted(acked) and len(values) == 240
    finally:
        for gateway, _ in gateways:
            gateway.stop()


def test_a_partition_moves_to_a_new_broker_with_no_gap_for_its_consumer(
        brokers: BrokerCluster, kafka: str, tmp_path: Path) -> None:
    create(kafka, NewTopic("moving", 1, 3))
    assert partition_states(brokers.etcd.endpoint)[("moving", 0)].replicas == (0, 1, 2)
    stop = threading.Event()
    produced = threading.Event()  # the producer flushed: every ack is in
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
        produced.set()

    def consume() -> None:
        consumer = Consumer({"bootstrap.servers": kafka, "group.id": "mover",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition("moving", 0, 0)])
        deadline = float("inf")
        while (not produced.is_set() or len(consumed) < len(acked)) and \
                time.monotonic() < deadline:
            if stop.is_set() and deadline == float("inf"):
                deadline = time.monotonic() + 60
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


def test_followers_fetch_on_one_stream_per_leader(brokers: BrokerCluster, kafka: str) -> None:
    """A replicated append's two fetches (the records out, the follower's next offset back)
    ride each follower's ReplicaFetchStream to the leader, not a unary call apiece."""
    create(kafka, NewTopic("streamed", 3, 3))
    for round_ in range(10):  # each acks=all round needs both fetches of every follower
        produce(kafka, "streamed", [(i % 3, f"s{round_}-{i}") for i in range(30)])
    streamed = sum(n.metric("kelp_broker_replica_fetches", how="stream")
                   for n in brokers.brokers)
    unary = sum(n.metric("kelp_broker_replica_fetches", how="unary") for n in brokers.brokers)
    assert streamed > 0
    assert streamed > 5 * unary  # unary only while a stream is (re)connecting


def test_a_fetch_stream_echoes_ids_drops_cancelled_fetches_and_refuses_reused_ids(
        brokers: BrokerCluster, kafka: str) -> None:
    """The leader's side of ReplicaFetchStream, driven by hand as a follower would."""
    import trio_asyncio

    from kelp import grpc
    from kelp.routes import BROKER
    from kelp.rpc.broker import v1 as pb

    create(kafka, NewTopic("by-hand", 1, 3))
    state = partition_states(brokers.etcd.endpoint)[("by-hand", 0)]
    follower = next(b for b in state.replicas if b != state.leader)
    leader = brokers.brokers[state.leader]
    # etcd names the leader before that broker has taken the lead up: until then it answers
    # NOT_LEADER_OR_FOLLOWER at once, and nothing would park.
    wait_for(lambda: "by-hand-0" in leader.cluster()["replication"]["leading"],
             "the leader leading by-hand-0")

    def fetch(request_id: int, max_wait_ms: int, epoch: int = state.leader_epoch
              ) -> pb.ReplicaFetchRequest:
        return pb.ReplicaFetchRequest(topic="by-hand", partition=0, replica_id=follower,
                                      leader_epoch=epoch, fetch_offset=0, max_bytes=1 << 20,
                                      max_wait_ms=max_wait_ms, request_id=request_id)

    async def talk() -> None:
        async with trio_asyncio.open_loop():
            channel = grpc.Channel(grpc.Address.parse(f"127.0.0.1:{leader.grpc_port}"))
            try:
                async with channel.open_stream(BROKER.replica_fetch_stream) as stream:
                    stream.send(fetch(7, 2_000))  # nothing to fetch: it parks
                    stream.send(fetch(7, 2_000))  # the same id while 7 is parked
                    with trio.fail_after(5):
                        reused = await stream.recv()
                    assert reused.request_id == 7 and reused.error_code == 44  # POLICY_VIOLATION
                    stream.send(pb.ReplicaFetchRequest(request_id=7, cancel=True))
                    stream.send(fetch(8, 5_000, epoch=state.leader_epoch + 5))  # a future epoch
                    with trio.fail_after(5):
                        refused = await stream.recv()
                    assert refused.request_id == 8
                    assert refused.error_code == 75  # UNKNOWN_LEADER_EPOCH
                    stream.send(fetch(9, 300))  # parks 0.3 s, then answers empty
                    with trio.fail_after(5):
                        answered = await stream.recv()
                    assert answered.request_id == 9 and answered.error_code == 0
                    assert answered.records == b"" and answered.log_end_offset == 0
                    # 7 was cancelled: its empty answer, due 2 s after it parked, never comes.
                    late = None
                    with trio.move_on_after(2.5):
                        late = await stream.recv()
                    assert late is None, f"a reply to a cancelled fetch: {late}"
            finally:
                channel.close()

    trio.run(talk)
