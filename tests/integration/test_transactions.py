"""Transactions with real clients against real processes: commit and abort loops seen by
read_committed and read_uncommitted consumers (confluent-kafka and kafka-python), zombie
fencing, a transaction left open that times out, a consume-transform-produce loop with
send_offsets_to_transaction across a group rebalance, DescribeTransactions/ListTransactions,
and exactly-once through SIGKILLs of the broker mid-transaction."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import TopicPartition as KTopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import TransactionalIdNotFoundError

from tests.kelp_procs import Cluster
from tests.txn_clients import read_topic

SIGKILL_CYCLES = int(os.environ.get("KELP_TXN_KILL_CYCLES", "6"))


def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions)])[topic].result(30)


def txn_producer(bootstrap: str, transactional_id: str, **extra: object) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id,
                         "linger.ms": 5, **extra})
    producer.init_transactions(30)
    return producer


def values(txn: int, count: int) -> list[bytes]:
    return [b"txn%d-%d" % (txn, i) for i in range(count)]


def test_commit_and_abort_loop_confluent(cluster: Cluster, topic_name: str) -> None:
    create(cluster.bootstrap, topic_name, 2)
    producer = txn_producer(cluster.bootstrap, f"{topic_name}-loop")
    committed: dict[int, list[bytes]] = {0: [], 1: []}
    every: dict[int, list[bytes]] = {0: [], 1: []}
    for txn in range(10):
        producer.begin_transaction()
        for i, value in enumerate(values(txn, 20)):
            producer.produce(topic_name, value=value, partition=i % 2)
            every[i % 2].append(value)
            if txn % 2 == 0:
                committed[i % 2].append(value)
        producer.flush(30)  # the aborted records reach the log too
        if txn % 2 == 0:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    assert read_topic(cluster.bootstrap, topic_name, 2, committed=True, expected=100) == \
        committed
    assert read_topic(cluster.bootstrap, topic_name, 2, committed=False, expected=200) == every


def test_commit_and_abort_loop_kafka_python(cluster: Cluster, topic_name: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    create(cluster.bootstrap, topic_name, 2)
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap,
                             transactional_id=f"{topic_name}-kp")
    producer.init_transactions()
    committed: list[bytes] = []
    for txn in range(6):
        producer.begin_transaction()
        for i, value in enumerate(values(txn, 10)):
            producer.send(topic_name, value=value, partition=i % 2)
            if txn % 2 == 0:
                committed.append(value)
        producer.flush()
        if txn % 2 == 0:
            producer.commit_transaction()
        else:
            producer.abort_transaction()
    producer.close()
    for isolation, wanted in (("read_committed", 30), ("read_uncommitted", 60)):
        consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap, isolation_level=isolation,
                                 enable_auto_commit=False, consumer_timeout_ms=3000)
        consumer.assign([KTopicPartition(topic_name, p) for p in (0, 1)])
        consumer.seek_to_beginning()
        got = [message.value for message in consumer]
        consumer.close()
        assert len(got) == wanted, (isolation, len(got))
        if isolation == "read_committed":
            assert sorted(got) == sorted(committed)
            # kafka-python's own reader agrees with librdkafka's
            by_partition = read_topic(cluster.bootstrap, topic_name, 2, committed=True,
                                      expected=30)
            assert sorted(by_partition[0] + by_partition[1]) == sorted(committed)


def test_a_zombie_is_fenced_and_its_transaction_aborted(cluster: Cluster,
                                                         topic_name: str) -> None:
    create(cluster.bootstrap, topic_name, 1)
    tid = f"{topic_name}-zombie"
    zombie = txn_producer(cluster.bootstrap, tid)
    zombie.begin_transaction()
    zombie.produce(topic_name, value=b"zombie", partition=0)
    zombie.flush(30)
    successor = txn_producer(cluster.bootstrap, tid)  # fences the zombie, aborts its txn
    with pytest.raises(KafkaException) as fenced:
        zombie.commit_transaction(30)
    error = fenced.value.args[0]
    assert error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                            KafkaError.INVALID_PRODUCER_EPOCH), error
    assert error.fatal()
    successor.begin_transaction()
    successor.produce(topic_name, value=b"successor", partition=0)
    successor.commit_transaction(30)
    assert read_topic(cluster.bootstrap, topic_name, 1, committed=True, expected=1) == {
        0: [b"successor"]}
    assert read_topic(cluster.bootstrap, topic_name, 1, committed=False, expected=2) == {
        0: [b"zombie", b"successor"]}


def test_a_transaction_left_open_times_out_and_is_aborted(cluster: Cluster,
                                                          topic_name: str) -> None:
    create(cluster.bootstrap, topic_name, 1)
    tid = f"{topic_name}-stuck"
    stuck = txn_producer(cluster.bootstrap, tid, **{"transaction.timeout.ms": 2000})
    stuck.begin_transaction()
    stuck.produce(topic_name, value=b"never committed", partition=0)
    stuck.flush(30)
    # While it is open, the last stable offset holds back a later committed transaction.
    other = txn_producer(cluster.bootstrap, f"{topic_name}-other")
    other.begin_transaction()
    other.produce(topic_name, value=b"committed", partition=0)
    other.commit_transaction(30)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)  # kafka-python's admin
    try:
        described = admin.describe_transactions([tid])[tid]
        assert described.state.value == "Ongoing"
        assert described.topic_partitions == {KTopicPartition(topic_name, 0)}
        assert described.transaction_timeout_ms == 2000
        with pytest.raises(TransactionalIdNotFoundError):
            admin.describe_transactions(["no-such-id"])
        listed = admin.list_transactions(state_filters=["Ongoing"], duration_filter_ms=0)
        assert tid in {t.transactional_id for node in listed.values() for t in node}
    finally:
        admin.close()
    assert read_topic(cluster.bootstrap, topic_name, 1, committed=True, settle_s=0.5) == {0: []}
    # Kafka's coordinator aborts it after transaction.timeout.ms; then the LSO moves on.
    assert read_topic(cluster.bootstrap, topic_name, 1, committed=True, expected=1,
                      timeout_s=15) == {0: [b"committed"]}
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        assert admin.describe_transactions([tid])[tid].state.value == "CompleteAbort"
    finally:
        admin.close()
    with pytest.raises(KafkaException):  # the instance that let it time out is fenced
        stuck.commit_transaction(10)


def test_consume_transform_produce_across_a_rebalance(cluster: Cluster,
                                                      topic_name: str) -> None:
    source, sink, group = f"{topic_name}-in", f"{topic_name}-out", f"{topic_name}-eos"
    create(cluster.bootstrap, source, 4)
    create(cluster.bootstrap, sink, 2)
    total = 400
    feeder = Producer({"bootstrap.servers": cluster.bootstrap})
    for n in range(total):
        feeder.produce(source, value=b"in-%d" % n, partition=n % 4)
    feeder.flush(30)
    stop = threading.Event()
    failures: list[BaseException] = []
    aborted = [0]
    commits: dict[str, int] = {"w1": 0, "w2": 0}

    def worker(name: str) -> None:
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                             "isolation.level": "read_committed",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        producer = txn_producer(cluster.bootstrap, f"{topic_name}-{name}")
        consumer.subscribe([source])
        try:
            while not stop.is_set():
                batch = [m for m in consumer.consume(10, timeout=0.3) if m.error() is None]
                if not batch:
                    continue
                producer.begin_transaction()
                try:
                    for message in batch:
                        producer.produce(sink, value=b"out-" + message.value()[3:],
                                         partition=message.partition() % 2)
                    time.sleep(0.2)  # slow enough that the rebalance lands mid-stream
                    positions = consumer.position(consumer.assignment())
                    producer.send_offsets_to_transaction(
                        positions, consumer.consumer_group_metadata(), 30)
                    producer.commit_transaction(30)
                    commits[name] += 1
                except KafkaException as exc:
                    if not exc.args[0].txn_requires_abort():
                        raise
                    producer.abort_transaction(30)
                    aborted[0] += 1
                    # Back to the committed offsets: the aborted records are done again.
                    assignment = consumer.assignment()
                    for tp in consumer.committed(assignment, timeout=10):
                        consumer.seek(TopicPartition(
                            tp.topic, tp.partition,
                            tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
        except BaseException as exc:
            failures.append(exc)
        finally:
            consumer.close()

    def committed_total() -> int:
        probe = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group})
        try:
            offsets = probe.committed([TopicPartition(source, p) for p in range(4)], timeout=10)
            return sum(max(tp.offset, 0) for tp in offsets)
        finally:
            probe.close()

    first = threading.Thread(target=worker, args=("w1",))
    first.start()
    second = threading.Thread(target=worker, args=("w2",))
    try:
        deadline = time.monotonic() + 90
        while committed_total() < total // 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        second.start()  # the group rebalances while the first worker is mid-stream
        while committed_total() < total and time.monotonic() < deadline and not failures:
            time.sleep(0.5)
    finally:
        stop.set()
        first.join(30)
        if second.is_alive() or second.ident is not None:
            second.join(30)
    assert not failures, failures
    assert committed_total() == total
    assert commits["w1"] and commits["w2"], commits  # the rebalance moved work to w2
    out = read_topic(cluster.bootstrap, sink, 2, committed=True, expected=total)
    produced = sorted(out[0] + out[1])
    assert produced == sorted(b"out-%d" % n for n in range(total)), (
        f"{len(produced)} output records for {total} inputs ({aborted[0]} transactions "
        "aborted)")


def test_exactly_once_through_broker_sigkills(own_cluster: Cluster, topic_name: str,
                                              tmp_path: Path) -> None:
    cluster = own_cluster
    create(cluster.bootstrap, topic_name, 2)
    per_txn = 10
    outcomes: dict[int, str] = {}  # txn -> committed / aborted / unknown
    stop = threading.Event()
    failures: list[BaseException] = []

    def produce_loop() -> None:
        producer = txn_producer(cluster.bootstrap, f"{topic_name}-chaos",
                                **{"transaction.timeout.ms": 10000})
        txn = 0
        try:
            while not stop.is_set():
                try:
                    producer.begin_transaction()
                    for i, value in enumerate(values(txn, per_txn)):
                        producer.produce(topic_name, value=value, partition=i % 2)
                    outcomes[txn] = "unknown"
                    if txn % 5 == 4:  # some are aborted on purpose, kills or not
                        producer.flush(60)
                        producer.abort_transaction(60)
                        outcomes[txn] = "aborted"
                    else:
                        producer.commit_transaction(60)
                        outcomes[txn] = "committed"
                except KafkaException as exc:
                    error = exc.args[0]
                    if error.txn_requires_abort():
                        try:
                            producer.abort_transaction(60)
                            outcomes[txn] = "aborted"
                        except KafkaException:
                            producer = txn_producer(cluster.bootstrap, f"{topic_name}-chaos",
                                                    **{"transaction.timeout.ms": 10000})
                    elif error.fatal():
                        producer = txn_producer(cluster.bootstrap, f"{topic_name}-chaos",
                                                **{"transaction.timeout.ms": 10000})
                    # retriable: the outcome stays unknown, the next transaction goes on
                txn += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=produce_loop)
    thread.start()
    try:
        for cycle in range(SIGKILL_CYCLES):
            time.sleep(1.0 + 0.1 * (cycle % 5))
            cluster.restart_broker(hard=True)
            cluster.broker.wait_for_log("ready", timeout=30)
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join(120)
    assert not failures, failures
    assert not thread.is_alive()
    committed = [t for t, o in outcomes.items() if o == "committed"]
    print("transaction outcomes:", {o: list(outcomes.values()).count(o)
                                    for o in ("committed", "aborted", "unknown")})
    assert len(committed) >= SIGKILL_CYCLES, outcomes  # work went on between the kills
    expected = per_txn * len(committed)
    seen = read_topic(cluster.bootstrap, topic_name, 2, committed=True, expected=expected,
                      settle_s=2.0, timeout_s=60)
    records = seen[0] + seen[1]
    assert len(records) == len(set(records)), "a record is visible twice"
    by_txn: dict[int, set[bytes]] = {}
    for value in records:
        txn = int(value.split(b"-")[0][3:])
        by_txn.setdefault(txn, set()).add(value)
    for txn, outcome in outcomes.items():
        visible = by_txn.get(txn, set())
        if outcome == "committed":
            assert visible == set(values(txn, per_txn)), f"committed txn {txn} lost records"
        elif outcome == "aborted":
            assert not visible, f"aborted txn {txn} is visible"
        else:  # the commit's answer was lost: all or nothing
            assert visible in (set(), set(values(txn, per_txn))), f"txn {txn} is torn"
    for partition in (0, 1):  # each partition in production order
        numbers = [int(v.split(b"-")[0][3:]) for v in seen[partition]]
        assert numbers == sorted(numbers)


def test_commit_and_abort_loop_aiokafka(cluster: Cluster, topic_name: str) -> None:
    """aiokafka asks the oldest versions (InitProducerId, AddPartitionsToTxn, EndTxn v0)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as ATopicPartition

    create(cluster.bootstrap, topic_name, 2)

    async def main() -> tuple[list[bytes], list[bytes], list[bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap,
                                    transactional_id=f"{topic_name}-aio")
        await producer.start()
        committed: list[bytes] = []
        try:
            for txn in range(4):
                await producer.begin_transaction()
                for i, value in enumerate(values(txn, 10)):
                    await producer.send_and_wait(topic_name, value=value, partition=i % 2)
                    if txn % 2 == 0:
                        committed.append(value)
                if txn % 2 == 0:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()
        seen = {}
        for isolation in ("read_committed", "read_uncommitted"):
            consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap,
                                        isolation_level=isolation, enable_auto_commit=False)
            await consumer.start()
            try:
                consumer.assign([ATopicPartition(topic_name, p) for p in (0, 1)])
                await consumer.seek_to_beginning()
                got: list[bytes] = []
                while True:
                    batches = await consumer.getmany(timeout_ms=1500)
                    if not batches:
                        break
                    got += [m.value for msgs in batches.values() for m in msgs]
                seen[isolation] = got
            finally:
                await consumer.stop()
        return committed, seen["read_committed"], seen["read_uncommitted"]

    committed, read_committed, read_uncommitted = asyncio.run(main())
    assert sorted(read_committed) == sorted(committed) and len(committed) == 20
    assert len(read_uncommitted) == 40
