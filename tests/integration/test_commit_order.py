"""Pipelined commits on one connection are applied in the order sent, as Kafka serves a
connection's requests one at a time: the offset read back is the last one committed, and
the same after a restart."""

from __future__ import annotations

import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.clients.prepare import run_java
from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster

COMMITS = 50


def _commit(group: str, topic: str, offset: int) -> object:
    commit = load_request_schema(8, 8)
    module = sys.modules[commit.__module__]
    partition = module.OffsetCommitRequestPartition(
        partition_index=0, committed_offset=offset, committed_leader_epoch=-1,
        committed_metadata="")
    return commit(group_id=group, generation_id_or_member_epoch=-1, member_id="",
                  group_instance_id=None,
                  topics=(module.OffsetCommitRequestTopic(name=topic,
                                                          partitions=(partition,)),))


def _committed(client: RawClient, group: str, topic: str) -> int:
    fetch = load_request_schema(9, 8)
    module = sys.modules[fetch.__module__]
    request = fetch(groups=(module.OffsetFetchRequestGroup(
        group_id=group, topics=(module.OffsetFetchRequestTopics(
            name=topic, partition_indexes=(0,)),)),), require_stable=False)
    response = client.request(request, correlation_id=10_000)
    return response.groups[0].topics[0].partitions[0].committed_offset


def test_pipelined_commits_read_back_the_last_one(cluster: Cluster, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
    for run in range(3):
        group = f"{topic_name}-{run}"
        client = RawClient(cluster.bootstrap, timeout=30)
        try:
            for offset in range(1, COMMITS + 1):  # back to back, no waiting for answers
                client.send(_commit(group, topic_name, offset), correlation_id=offset)
            for _ in range(COMMITS):
                client.read_frame()
            assert _committed(client, group, topic_name) == COMMITS
        finally:
            client.close()


def test_a_commit_to_a_topic_that_does_not_exist_is_refused(cluster: Cluster,
                                                            topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
    client = RawClient(cluster.bootstrap, timeout=30)
    try:
        missing = client.request(_commit(topic_name, f"{topic_name}-missing", 5))
        existing = client.request(_commit(topic_name, topic_name, 5), correlation_id=2)
    finally:
        client.close()
    assert missing.topics[0].partitions[0].error_code == ErrorCode.unknown_topic_or_partition
    assert existing.topics[0].partitions[0].error_code == ErrorCode.none


def test_java_pipelined_commit_async_reads_back_the_last(cluster: Cluster, topic_name: str,
                                                         tmp_path: Path) -> None:
    run = run_java("KelpJavaSemantics", ["commits", cluster.bootstrap, topic_name], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "OK commits committed=50" in run.stdout
