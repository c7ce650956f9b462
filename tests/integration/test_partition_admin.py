"""Partition-placement admin APIs as Kafka answers them on a one-broker cluster, through
kafka-python's admin client (which calls each API directly) and confluent-kafka's:
manual assignments naming broker 0, DescribeTopicPartitions with its cursor, ElectLeaders,
partition reassignments, AlterReplicaLogDirs, DescribeQuorum, authorized operations."""

from __future__ import annotations

from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka.admin import AclOperation, AdminClient, NewPartitions, NewTopic
from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import (
    InvalidReplicationAssignmentError,
    LogDirNotFoundError,
    NoError,
    NoReassignmentInProgressError,
)

from tests.clients.prepare import run_java
from tests.kelp_procs import Cluster


@pytest.fixture
def admin(cluster: Cluster):
    client = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=30_000)
    try:
        yield client
    finally:
        client.close()


def test_manual_assignments_naming_broker_0_are_accepted(cluster: Cluster, topic_name: str):
    KafkaAdminClient(bootstrap_servers=cluster.bootstrap).create_topics(
        {topic_name: {"assignments": {0: [0], 1: [0]}}})
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_partitions([NewPartitions(topic_name, 4, replica_assignment=[[0], [0]])])[
        topic_name].result(30)
    assert len(admin.list_topics(topic_name, timeout=30).topics[topic_name].partitions) == 4


def test_manual_assignments_naming_other_brokers_are_refused(cluster: Cluster, topic_name: str,
                                                            admin: KafkaAdminClient):
    with pytest.raises(InvalidReplicationAssignmentError, match="broker 1"):
        admin.create_topics({topic_name: {"assignments": {0: [0], 1: [1]}}})
    admin.create_topics({topic_name: {"assignments": {0: [0]}}})
    with pytest.raises(InvalidReplicationAssignmentError, match="more than once"):
        admin.create_partitions({topic_name: {"count": 2, "assignments": [[0, 0]]}})
    with pytest.raises(InvalidReplicationAssignmentError, match="only 1 assignment"):
        admin.create_partitions({topic_name: {"count": 3, "assignments": [[0]]}})
    admin.create_partitions({topic_name: {"count": 2, "assignments": [[0]]}})


def test_describe_topic_partitions_pages_with_its_cursor(cluster: Cluster, topic_name: str,
                                                         admin: KafkaAdminClient):
    admin.create_topics({topic_name: {"num_partitions": 5}})
    first = admin.describe_topic_partitions([topic_name], response_partition_limit=3)
    (topic,) = first["topics"]
    assert [p["partition_index"] for p in topic["partitions"]] == [0, 1, 2]
    assert all(p["leader_id"] == 0 and p["isr_nodes"] == [0] for p in topic["partitions"])
    assert first["next_cursor"] == {"topic_name": topic_name, "partition_index": 3}
    rest = admin.describe_topic_partitions([topic_name], cursor=first["next_cursor"])
    assert [p["partition_index"] for p in rest["topics"][0]["partitions"]] == [3, 4]
    assert rest["next_cursor"] is None
    missing = admin.describe_topic_partitions([f"{topic_name}-missing"])["topics"][0]
    assert missing["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION


def test_leader_election_is_never_needed(cluster: Cluster, topic_name: str,
                                         admin: KafkaAdminClient):
    admin.create_topics({topic_name: {"num_partitions": 2}})
    result = admin.elect_leaders(0, {topic_name: [0, 1, 7]}, raise_errors=False)
    codes = {p.partition_id: p.error_code
             for t in result.replica_election_results for p in t.partition_result}
    assert codes == {0: 84, 1: 84, 7: 3}  # ELECTION_NOT_NEEDED, UNKNOWN_TOPIC_OR_PARTITION


def test_reassignments_and_log_dirs(cluster: Cluster, topic_name: str,
                                    admin: KafkaAdminClient):
    admin.create_topics({topic_name: {"num_partitions": 1}})
    assert admin.list_partition_reassignments() == {}
    partition = TopicPartition(topic_name, 0)
    result = admin.alter_partition_reassignments({partition: [0]})
    assert result == {partition: None}
    cancelled = admin.alter_partition_reassignments({partition: None})
    assert cancelled == {partition: NoReassignmentInProgressError}
    elsewhere = admin.alter_partition_reassignments({partition: [3]})
    assert elsewhere == {partition: InvalidReplicationAssignmentError}
    # "kelp" is the one log dir DescribeLogDirs reports: the replica is already there.
    moved = admin.alter_replica_log_dirs({(topic_name, 0, 0): "kelp"})
    assert list(moved.values()) == [NoError]
    elsewhere = admin.alter_replica_log_dirs({(topic_name, 0, 0): "/elsewhere"})
    assert list(elsewhere.values()) == [LogDirNotFoundError]


def test_metadata_quorum_is_this_broker(admin: KafkaAdminClient):
    quorum = admin.describe_metadata_quorum()
    partition = quorum["topics"][0]["partitions"][0]
    assert partition["leader_id"] == 0
    assert [v["replica_id"] for v in partition["current_voters"]] == [0]


def test_authorized_operations_are_all_when_asked(cluster: Cluster, topic_name: str):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
    cluster_info = admin.describe_cluster(include_authorized_operations=True).result(30)
    assert {AclOperation.DESCRIBE, AclOperation.ALTER, AclOperation.IDEMPOTENT_WRITE} <= set(
        cluster_info.authorized_operations)
    topics = admin.describe_topics(confluent_kafka.TopicCollection([topic_name]),
                                   include_authorized_operations=True)
    described = topics[topic_name].result(30)
    assert set(described.authorized_operations) == {
        AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE,
        AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS}
    plain = admin.describe_topics(confluent_kafka.TopicCollection([topic_name]))
    assert not plain[topic_name].result(30).authorized_operations


def test_java_admin_client(cluster: Cluster, topic_name: str, tmp_path: Path) -> None:
    run = run_java("KelpJavaAdmin", [cluster.bootstrap, topic_name], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "OK admin" in run.stdout
