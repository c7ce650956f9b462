"""Consumer groups with confluent-kafka (librdkafka 2.16): eager and cooperative rebalances,
static membership, the 3 → 4 rebalance time, and a group surviving gateway and broker restarts.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.group_ledger import Ledger
from tests.group_members import HEARTBEAT_MS, ConfluentMember, Member, stop_all
from tests.group_scenarios import (
    PARTITIONS,
    assert_exactly_once,
    assert_unique_owners,
    committed_offsets,
    committed_via_consumer,
    create_topic,
    leave_join_resume,
    produce_wave,
    stable_assignment,
    wait_consumed,
    wait_stable,
    wait_until,
)
from tests.kelp_procs import Cluster

COOPERATIVE = {"partition.assignment.strategy": "cooperative-sticky"}




def kafka_python_committed(bootstrap: str, group: str) -> dict[int, tuple[int, str]]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    return {tp.partition: (om.offset, om.metadata) for tp, om in found.items()}


def confluent_factory(cluster: Cluster, topic: str, **config: object):
    def make(name: str, ledger: Ledger, group: str) -> Member:
        return ConfluentMember(name, ledger, cluster.bootstrap, group, topic, **config)
    return make


@pytest.mark.parametrize("config", [pytest.param({}, id="eager-range"),
                                    pytest.param(COOPERATIVE, id="cooperative-sticky")])
def test_three_members_leave_join_and_resume(group_cluster: Cluster, topic_name: str,
                                             config: dict) -> None:
    summary = leave_join_resume(group_cluster, topic_name,
                                confluent_factory(group_cluster, topic_name, **config),
                                eager=not config)
    print(f"\nconfluent-kafka {config or 'eager'}: {summary}")


@pytest.mark.parametrize("config", [pytest.param({}, id="eager-range"),
                                    pytest.param(COOPERATIVE, id="cooperative-sticky")])
def test_rebalance_time_three_to_four(group_cluster: Cluster, topic_name: str,
                                      config: dict) -> None:
    """From the 4th consumer's subscribe until all four own a non-empty stable assignment."""
    create_topic(group_cluster.bootstrap, topic_name)
    ledger = Ledger(cluster=group_cluster)
    make = confluent_factory(group_cluster, topic_name, **config)
    group = f"g-{topic_name}"
    members = [make(f"m{i}", ledger, group).start() for i in range(3)]
    try:
        assert_unique_owners(wait_stable(ledger, members))
        started = time.monotonic()
        members.append(make("m3", ledger, group).start())
        four = wait_stable(ledger, members)
        elapsed = time.monotonic() - started
        assert_unique_owners(four)
        assert sorted(len(parts) for parts in four.values()) == [1, 1, 2, 2]
        print(f"\nrebalance 3 -> 4 members, confluent-kafka "
              f"{config.get('partition.assignment.strategy', 'range,roundrobin (eager)')}: "
              f"{elapsed:.3f} s (heartbeat.interval.ms={HEARTBEAT_MS})")
        assert not ledger.violations, ledger.violations
    finally:
        stop_all(members)
    ledger.fail_fast()


def test_static_member_restart_keeps_partitions_without_rebalance(
        group_cluster: Cluster, topic_name: str) -> None:
    """KIP-345: a member with group.instance.id that comes back within session.timeout.ms gets
    its partitions back, and the other members see neither a revoke nor an assign."""
    bootstrap = group_cluster.bootstrap
    create_topic(bootstrap, topic_name)
    group = f"g-{topic_name}"
    ledger = Ledger(cluster=group_cluster)

    def make(name: str) -> Member:
        return ConfluentMember(name, ledger, bootstrap, group, topic_name,
                               **{"group.instance.id": f"{group}-{name}"})

    # s0 first and alone, so that it leads; the restarted member (s2) is then a follower.
    members = [make("s0").start()]
    try:
        wait_stable(ledger, members)
        members += [make("s1").start(), make("s2").start()]
        before = wait_stable(ledger, members)
        assert_unique_owners(before)
        produced = produce_wave(bootstrap, topic_name, "a", 30)
        wait_consumed(ledger, produced)

        restarted_at = time.monotonic()
        members[2].stop()  # a static member does not send LeaveGroup on close
        members[2] = make("s2").start()
        back = wait_stable(ledger, members)
        took = time.monotonic() - restarted_at
        assert back == before, f"the restarted static member got {back}, had {before}"
        time.sleep(3 * HEARTBEAT_MS / 1000 + 0.5)  # the others heartbeat a few times meanwhile
        disturbed = [e for e in ledger.events_since(restarted_at) if e.member != "s2"]
        assert not disturbed, f"other members were rebalanced: {disturbed}"
        assert stable_assignment(ledger, members) == before
        print(f"\nstatic member s2 back with {sorted(back['s2'])} after {took:.3f} s")

        produced |= produce_wave(bootstrap, topic_name, "b", 30)
        wait_consumed(ledger, produced)
    finally:
        stop_all(members)
    assert_exactly_once(ledger, produced)


def test_group_survives_gateway_and_broker_restart(group_cluster: Cluster,
                                                   topic_name: str) -> None:
    cluster = group_cluster
    bootstrap = cluster.bootstrap
    create_topic(bootstrap, topic_name)
    group = f"g-{topic_name}"
    ledger = Ledger(cluster=cluster)
    make = confluent_factory(cluster, topic_name)
    members = [make(f"m{i}", ledger, group).start() for i in range(2)]
    per_wave = 30
    try:
        before = wait_stable(ledger, members)
        produced = produce_wave(bootstrap, topic_name, "a", per_wave)
        wait_consumed(ledger, produced)

        # Gateways are stateless and the coordinator lives in the broker: members reconnect and
        # carry on in the same generation, without a rebalance.
        gateway_restart = time.monotonic()
        cluster.gateway.stop()
        cluster.gateway.start()
        produced |= produce_wave(bootstrap, topic_name, "b", per_wave)
        wait_consumed(ledger, produced)
        disturbed = ledger.events_since(gateway_restart)
        assert not disturbed, f"a gateway restart rebalanced the group: {disturbed}"
        assert stable_assignment(ledger, members) == before

        expected = {p: 2 * per_wave for p in range(PARTITIONS)}
        wait_until(lambda: committed_offsets(bootstrap, group, topic_name) == expected,
                   f"commits to reach {expected}", ledger)

        # A metadata string committed by a standalone consumer must survive as well.
        meta_group = f"{group}-meta"
        standalone = Consumer({"bootstrap.servers": bootstrap, "group.id": meta_group,
                               "enable.auto.commit": False})
        try:
            standalone.commit(offsets=[TopicPartition(topic_name, 0, 7, "kept across restarts")],
                              asynchronous=False)
        finally:
            standalone.close()

        cluster.restart_broker(hard=True)

        committed = committed_via_consumer(bootstrap, group, topic_name)
        assert {p: off for p, (off, _meta) in committed.items()} == expected
        # Read through kafka-python, which shows the bytes as stored: confluent-kafka-python
        # commits the metadata with its NUL terminator (metadata_size = strlen + 1), and reads
        # it back as a C string, which may add stray bytes or fail to decode (librdkafka#4649).
        assert kafka_python_committed(bootstrap, meta_group) == {
            0: (7, "kept across restarts\x00")}

        # Members rejoin (a rebalance is allowed here) and consumption resumes at the commits.
        produced |= produce_wave(bootstrap, topic_name, "c", per_wave)
        wait_consumed(ledger, produced)
        assert_unique_owners(wait_stable(ledger, members))
    finally:
        stop_all(members)
    summary = assert_exactly_once(ledger, produced)
    assert committed_offsets(bootstrap, group, topic_name) == {
        p: 3 * per_wave for p in range(PARTITIONS)}
    print(f"\nrestarts: {summary}; client errors seen: {ledger.client_errors[:5]}")
