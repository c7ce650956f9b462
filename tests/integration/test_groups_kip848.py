"""KIP-848 consumer groups (group.protocol=consumer): the broker assigns partitions and
members reconcile by heartbeat. librdkafka 2.16 and the Java client 3.9 go through the same
leave / join / resume-from-commits scenario as the classic groups, with exact record sets;
the group survives a broker restart; ListGroups and ConsumerGroupDescribe show it; a classic
JoinGroup to it is refused while it has members."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.clients.prepare import run_java, start_java
from tests.group_ledger import Ledger
from tests.group_members import ConfluentMember, Member, stop_all
from tests.group_scenarios import (
    GROUP_BROKER_ARGS,
    assert_exactly_once,
    assert_unique_owners,
    create_topic,
    dump_logs_if_failed,
    leave_join_resume,
    produce_wave,
    wait_consumed,
    wait_stable,
)
from tests.kafka_raw import request_once
from tests.kelp_procs import Cluster

# Shorter than Kafka's defaults (45 s sessions, 5 s heartbeats) so tests run in seconds.
KIP848_BROKER_ARGS = [
    *GROUP_BROKER_ARGS,
    "--config", "group.consumer.heartbeat.interval.ms=500",
    "--config", "group.consumer.min.heartbeat.interval.ms=100",
    "--config", "group.consumer.session.timeout.ms=6000",
    "--config", "group.consumer.min.session.timeout.ms=1000",
]
CONSUMER_PROTOCOL = {"group.protocol": "consumer", "session.timeout.ms": None,
                     "heartbeat.interval.ms": None}


@pytest.fixture
def kip848_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster", broker_args=KIP848_BROKER_ARGS)
    try:
        yield cluster.start()
    finally:
        dump_logs_if_failed(request, cluster)
        cluster.stop()


def confluent_members(cluster: Cluster, topic: str):
    def make(name: str, ledger: Ledger, group: str) -> Member:
        return ConfluentMember(name, ledger, cluster.bootstrap, group, topic,
                               **CONSUMER_PROTOCOL)
    return make


def test_confluent_members_leave_join_and_resume(kip848_cluster: Cluster,
                                                 topic_name: str) -> None:
    summary = leave_join_resume(kip848_cluster, topic_name,
                                confluent_members(kip848_cluster, topic_name), eager=False)
    print(f"\nconfluent-kafka group.protocol=consumer: {summary}")


def test_a_group_survives_a_broker_restart(kip848_cluster: Cluster, topic_name: str) -> None:
    bootstrap = kip848_cluster.bootstrap
    create_topic(bootstrap, topic_name)
    ledger = Ledger(cluster=kip848_cluster)
    make = confluent_members(kip848_cluster, topic_name)
    group = f"g-{topic_name}"
    members = [make(f"m{i}", ledger, group).start() for i in range(2)]
    try:
        assert_unique_owners(wait_stable(ledger, members))
        produced = produce_wave(bootstrap, topic_name, "a", 40)
        wait_consumed(ledger, produced)
        kip848_cluster.restart_broker(hard=False)
        produced |= produce_wave(bootstrap, topic_name, "b", 40)
        wait_consumed(ledger, produced)
        assert_unique_owners(wait_stable(ledger, members))
        # Its offsets made it an Empty classic group at start-up too; it is one kind only.
        assert _list_groups(kip848_cluster)[group][0] == "consumer"
        stop_all(members)
        members = []
        assert_exactly_once(ledger, produced)
    finally:
        stop_all(members)


def _list_groups(cluster: Cluster, types: tuple[str, ...] = ()
                 ) -> dict[str, tuple[str, str]]:
    request_type = load_request_schema(16, 5)
    response = request_once(cluster.bootstrap,
                            request_type(states_filter=(), types_filter=types))
    ids = [g.group_id for g in response.groups]
    assert len(ids) == len(set(ids)), f"a group listed twice: {ids}"  # one kind at a time
    return {g.group_id: (g.group_type, g.group_state) for g in response.groups}


def _classic_join(cluster: Cluster, group: str) -> ErrorCode:
    request_type = load_request_schema(11, 7)
    module = sys.modules[request_type.__module__]
    request = request_type(
        group_id=group, session_timeout=datetime.timedelta(seconds=10),
        rebalance_timeout=datetime.timedelta(seconds=10), member_id="",
        group_instance_id=None, protocol_type="consumer",
        protocols=(module.JoinGroupRequestProtocol(name="range", metadata=b""),))
    return request_once(cluster.bootstrap, request).error_code


def test_list_groups_shows_the_type_and_classic_joins_are_refused(kip848_cluster: Cluster,
                                                                   topic_name: str) -> None:
    create_topic(kip848_cluster.bootstrap, topic_name)
    group = f"g-{topic_name}"
    consumer = Consumer({"bootstrap.servers": kip848_cluster.bootstrap, "group.id": group,
                         "group.protocol": "consumer"})
    try:
        consumer.subscribe([topic_name])
        for _ in range(40):
            consumer.poll(0.25)
            if consumer.assignment():
                break
        assert consumer.assignment()
        assert _list_groups(kip848_cluster)[group] == ("consumer", "Stable")
        assert _classic_join(kip848_cluster, group) == ErrorCode.inconsistent_group_protocol
    finally:
        consumer.close()


def test_java_consumer_protocol_and_describe(kip848_cluster: Cluster, topic_name: str,
                                             tmp_path: Path) -> None:
    run = run_java("KelpJavaConsumerGroup", [kip848_cluster.bootstrap, topic_name], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "OK consumer-group" in run.stdout
    print(run.stdout.strip().splitlines()[-1])


def _heartbeat(cluster: Cluster, **fields: object):
    request_type = load_request_schema(68, 0)
    defaults = {"member_id": "", "member_epoch": 0, "instance_id": None, "rack_id": None,
                "rebalance_timeout": datetime.timedelta(seconds=10),
                "subscribed_topic_names": None, "server_assignor": None,
                "topic_partitions": None}
    return request_once(cluster.bootstrap, request_type(**{**defaults, **fields}))


def test_a_member_that_stops_heartbeating_loses_its_partitions(kip848_cluster: Cluster,
                                                               topic_name: str) -> None:
    create_topic(kip848_cluster.bootstrap, topic_name)
    group = f"g-{topic_name}"
    refused = _heartbeat(kip848_cluster, group_id=group, topic_partitions=())
    assert refused.error_code == ErrorCode.invalid_request  # no subscription on joining
    ghost = _heartbeat(kip848_cluster, group_id=group, subscribed_topic_names=(topic_name,),
                       topic_partitions=())
    assert ghost.error_code == ErrorCode.none and ghost.member_epoch > 0
    assert sum(len(t.partitions) for t in ghost.assignment.topic_partitions) == 6
    fenced = _heartbeat(kip848_cluster, group_id=group, member_id=ghost.member_id,
                        member_epoch=ghost.member_epoch + 5)
    assert fenced.error_code == ErrorCode.fenced_member_epoch
    # A real member joins; the ghost never heartbeats again, so after its session (6 s here)
    # its partitions go to the one that is alive.
    consumer = Consumer({"bootstrap.servers": kip848_cluster.bootstrap, "group.id": group,
                         "group.protocol": "consumer"})
    try:
        consumer.subscribe([topic_name])
        for _ in range(80):
            consumer.poll(0.25)
            if len(consumer.assignment()) == 6:
                break
        assert len(consumer.assignment()) == 6
    finally:
        consumer.close()


def _commit(cluster: Cluster, group: str, topic: str, member_id: str, epoch: int,
            offset: int) -> ErrorCode:
    request_type = load_request_schema(8, 9)
    module = sys.modules[request_type.__module__]
    response = request_once(cluster.bootstrap, request_type(
        group_id=group, generation_id_or_member_epoch=epoch, member_id=member_id,
        group_instance_id=None, topics=(module.OffsetCommitRequestTopic(name=topic, partitions=(
            module.OffsetCommitRequestPartition(partition_index=0, committed_offset=offset,
                                                committed_leader_epoch=-1,
                                                committed_metadata=""),)),)))
    return response.topics[0].partitions[0].error_code


def _fetch(cluster: Cluster, group: str, topic: str, member_id: str | None,
           epoch: int) -> tuple[ErrorCode, int | None]:
    request_type = load_request_schema(9, 9)
    module = sys.modules[request_type.__module__]
    response = request_once(cluster.bootstrap, request_type(require_stable=True, groups=(
        module.OffsetFetchRequestGroup(group_id=group, member_id=member_id, member_epoch=epoch,
                                       topics=(module.OffsetFetchRequestTopics(
                                           name=topic, partition_indexes=(0,)),)),)))
    fetched = response.groups[0]
    offset = fetched.topics[0].partitions[0].committed_offset if fetched.topics else None
    return fetched.error_code, offset


def _delete(cluster: Cluster, group: str) -> ErrorCode:
    request_type = load_request_schema(42, 2)
    return request_once(cluster.bootstrap, request_type(groups_names=(group,))).results[0] \
        .error_code


def _describe(cluster: Cluster, *groups: str):
    request_type = load_request_schema(69, 0)
    return request_once(cluster.bootstrap, request_type(
        group_ids=groups, include_authorized_operations=False)).groups


def _offset_delete(cluster: Cluster, group: str, topic: str) -> ErrorCode:
    request_type = load_request_schema(47, 0)
    module = sys.modules[request_type.__module__]
    response = request_once(cluster.bootstrap, request_type(group_id=group, topics=(
        module.OffsetDeleteRequestTopic(name=topic, partitions=(
            module.OffsetDeleteRequestPartition(partition_index=0),)),)))
    return response.error_code or response.topics[0].partitions[0].error_code


def test_offsets_check_member_epochs_and_static_members_come_back(kip848_cluster: Cluster,
                                                                  topic_name: str) -> None:
    create_topic(kip848_cluster.bootstrap, topic_name)
    group = f"g-{topic_name}"
    member = _heartbeat(kip848_cluster, group_id=group, instance_id="static-1",
                        subscribed_topic_names=(topic_name,), topic_partitions=())
    member_id, epoch = member.member_id, member.member_epoch
    assert _commit(kip848_cluster, group, topic_name, member_id, epoch + 1, 5) \
        == ErrorCode.stale_member_epoch
    assert _commit(kip848_cluster, group, topic_name, "stranger", epoch, 5) \
        == ErrorCode.unknown_member_id
    assert _commit(kip848_cluster, group, topic_name, member_id, epoch, 7) == ErrorCode.none
    assert _fetch(kip848_cluster, group, topic_name, member_id, epoch - 1)[0] \
        == ErrorCode.stale_member_epoch
    assert _fetch(kip848_cluster, group, topic_name, member_id, epoch) == (ErrorCode.none, 7)
    assert _fetch(kip848_cluster, group, topic_name, None, -1) == (ErrorCode.none, 7)  # admin
    assert _list_groups(kip848_cluster, ("classic",)).get(group) is None
    assert _list_groups(kip848_cluster, ("consumer",))[group][0] == "consumer"
    assert _delete(kip848_cluster, group) == ErrorCode.non_empty_group
    described, unknown = _describe(kip848_cluster, group, f"none-{topic_name}")
    assert described.error_code == ErrorCode.none and described.assignor_name == "uniform"
    assert [(m.member_id, m.member_epoch, m.instance_id) for m in described.members] \
        == [(member_id, epoch, "static-1")]
    assert {(t.topic_name, p) for t in described.members[0].assignment.topic_partitions
            for p in t.partitions} == {(topic_name, p) for p in range(6)}
    assert unknown.error_code == ErrorCode.group_id_not_found
    assert _offset_delete(kip848_cluster, group, topic_name) \
        == ErrorCode.group_subscribed_to_topic
    # A static member leaving for a restart (-2) keeps its partitions; back under a new id
    # with the same instance id, it has them again at the same epoch, without a rebalance.
    another = _heartbeat(kip848_cluster, group_id=group, instance_id="static-1",
                         subscribed_topic_names=(topic_name,), topic_partitions=())
    assert another.error_code == ErrorCode.unreleased_instance_id
    left = _heartbeat(kip848_cluster, group_id=group, member_id=member_id, member_epoch=-2,
                      instance_id="static-1")
    assert left.error_code == ErrorCode.none
    back = _heartbeat(kip848_cluster, group_id=group, member_id="restarted",
                      instance_id="static-1", subscribed_topic_names=(topic_name,),
                      topic_partitions=())
    assert back.error_code == ErrorCode.none and back.member_epoch == epoch
    assert sorted(p for t in back.assignment.topic_partitions for p in t.partitions) \
        == sorted(p for t in member.assignment.topic_partitions for p in t.partitions)
    gone = _heartbeat(kip848_cluster, group_id=group, member_id="restarted", member_epoch=-1)
    assert gone.error_code == ErrorCode.none
    assert _offset_delete(kip848_cluster, group, topic_name) == ErrorCode.none  # no members
    assert _fetch(kip848_cluster, group, topic_name, None, -1) == (ErrorCode.none, -1)
    assert _delete(kip848_cluster, group) == ErrorCode.none
    assert _fetch(kip848_cluster, group, topic_name, None, -1) == (ErrorCode.none, -1)
    assert group not in _list_groups(kip848_cluster)


def test_regex_subscription_and_new_topics_reassign(kip848_cluster: Cluster,
                                                    topic_name: str) -> None:
    """librdkafka sends a '^' subscription as SubscribedTopicRegex; a topic created later that
    matches raises the group epoch and is assigned too (and one that does not, is not)."""
    bootstrap = kip848_cluster.bootstrap
    create_topic(bootstrap, f"{topic_name}-one", partitions=2)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic_name}",
                         "group.protocol": "consumer", "group.remote.assignor": "range"})

    def assigned_topics(wanted: set[str]) -> set[str]:
        for _ in range(120):
            consumer.poll(0.25)
            topics = {tp.topic for tp in consumer.assignment()}
            if topics == wanted:
                break
        return topics

    try:
        consumer.subscribe([f"^{topic_name}-.*"])
        assert assigned_topics({f"{topic_name}-one"}) == {f"{topic_name}-one"}
        create_topic(bootstrap, f"{topic_name}-two", partitions=3)
        create_topic(bootstrap, f"other-{topic_name}", partitions=1)
        wanted = {f"{topic_name}-one", f"{topic_name}-two"}
        assert assigned_topics(wanted) == wanted
        assert len(consumer.assignment()) == 5
        (described,) = _describe(kip848_cluster, f"g-{topic_name}")
        assert described.assignor_name == "range"
        # librdkafka sends its '^' patterns joined in groups: "(^t-...-.*)".
        assert f"^{topic_name}-.*" in described.members[0].subscribed_topic_regex
        assert not described.members[0].subscribed_topic_names
    finally:
        consumer.close()


def test_java_consumer_protocol_across_a_broker_restart(kip848_cluster: Cluster,
                                                        topic_name: str,
                                                        tmp_path: Path) -> None:
    java = start_java("KelpJavaConsumerGroup",
                      [kip848_cluster.bootstrap, topic_name, "restart"], tmp_path)
    try:
        assert java.stdout is not None and java.stdin is not None
        lines = []
        for line in java.stdout:  # until the first wave is consumed
            lines.append(line)
            if "PHASE1-DONE" in line:
                break
        assert any("PHASE1-DONE" in line for line in lines), "".join(lines)[-3000:]
        kip848_cluster.restart_broker(hard=True)
        java.stdin.write("go\n")
        java.stdin.flush()
        out, err = java.communicate(timeout=120)
        assert java.returncode == 0, out[-3000:] + err[-5000:]
        assert "OK consumer-group restart consumed=400" in out
    finally:
        if java.poll() is None:
            java.kill()
            java.wait(10)
