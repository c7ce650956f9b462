"""Every advertised version of every API answers in a shape kio (Kafka's schemas) decodes.

Clients pick different versions (Java Fetch 17, librdkafka Fetch 16, kcat Fetch 11, aiokafka
Fetch 11...); this walks each advertised range so none is left to chance.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import uuid

import pytest
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from gateway.kafka.apis import SUPPORTED, ApiKey
from tests.batches import make_batch, read_batches
from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster


def mk(entity_type: type, **fields):
    names = {f.name for f in dataclasses.fields(entity_type)}
    return entity_type(**{k: v for k, v in fields.items() if k in names})


def nested(entity_type: type, name: str) -> type:
    return getattr(sys.modules[entity_type.__module__], name)


def versions(api: ApiKey, floor: int = 0) -> list[int]:
    low, high = SUPPORTED[api]
    return list(range(max(low, floor), high + 1))


def ensure_topic(client: RawClient, name: str) -> None:
    """Metadata auto-creates a topic, as Kafka does; Produce alone does not."""
    meta_type = load_request_schema(ApiKey.METADATA, 9)
    client.request(mk(meta_type, topics=(mk(nested(meta_type, "MetadataRequestTopic"),
                                            name=name),),
                      allow_auto_topic_creation=True, include_topic_authorized_operations=False,
                      include_cluster_authorized_operations=False))


@pytest.fixture(scope="module")
def client(cluster: Cluster):
    raw = RawClient(cluster.bootstrap)
    yield raw
    raw.close()


@pytest.mark.parametrize("version", versions(ApiKey.METADATA))
def test_metadata(client: RawClient, topic_name: str, version: int) -> None:
    request_type = load_request_schema(ApiKey.METADATA, version)
    topic_type = nested(request_type, "MetadataRequestTopic")
    request = mk(request_type, topics=(mk(topic_type, name=topic_name, topic_id=None),),
                 allow_auto_topic_creation=True, include_cluster_authorized_operations=False,
                 include_topic_authorized_operations=False)
    response = client.request(request)
    (topic,) = response.topics
    assert topic.name == topic_name and topic.error_code == ErrorCode.none
    assert [p.partition_index for p in topic.partitions] == [0]
    assert response.brokers[0].node_id == 0
    if version >= 10:
        assert topic.topic_id != uuid.UUID(int=0)


@pytest.mark.parametrize("version", versions(ApiKey.PRODUCE, floor=3))
def test_produce_then_fetch_every_version(client: RawClient, topic_name: str,
                                          version: int) -> None:
    ensure_topic(client, topic_name)
    batch = make_batch([(b"k", f"v{version}".encode())], headers=[(b"h", b"1")])
    request_type = load_request_schema(ApiKey.PRODUCE, version)
    topic_data = nested(request_type, "TopicProduceData")
    partition_data = nested(request_type, "PartitionProduceData")
    response = client.request(mk(
        request_type, transactional_id=None, acks=-1,
        timeout=datetime.timedelta(seconds=5),
        topic_data=(mk(topic_data, name=topic_name, partition_data=(
            mk(partition_data, index=0, records=batch),)),)))
    (part,) = response.responses[0].partition_responses
    assert part.error_code == ErrorCode.none and part.base_offset == 0

    for fetch_version in versions(ApiKey.FETCH):
        assert _fetch(client, topic_name, fetch_version) == [(b"k", f"v{version}".encode())]


def _fetch(client: RawClient, topic_name: str, version: int) -> list:
    topic_id = None
    if version >= 13:
        meta_type = load_request_schema(ApiKey.METADATA, 12)
        meta = client.request(mk(meta_type, topics=(mk(
            nested(meta_type, "MetadataRequestTopic"), name=topic_name, topic_id=None),),
            allow_auto_topic_creation=False, include_topic_authorized_operations=False))
        topic_id = meta.topics[0].topic_id
    request_type = load_request_schema(ApiKey.FETCH, version)
    fetch_topic = nested(request_type, "FetchTopic")
    fetch_partition = nested(request_type, "FetchPartition")
    request = mk(request_type, replica_id=-1, max_wait=datetime.timedelta(milliseconds=100),
                 min_bytes=1, max_bytes=1 << 20, isolation_level=0, session_id=0,
                 session_epoch=-1, forgotten_topics_data=(), rack_id="",
                 topics=(mk(fetch_topic, topic=topic_name, topic_id=topic_id, partitions=(
                     mk(fetch_partition, partition=0, fetch_offset=0,
                        partition_max_bytes=1 << 20),)),))
    response = client.request(request)
    (topic,) = response.responses
    (part,) = topic.partitions
    assert part.error_code == ErrorCode.none, (version, part.error_code)
    assert part.high_watermark == 1
    return [(r.key, r.value) for b in read_batches(part.records) for r in b.records]


@pytest.mark.parametrize("version", versions(ApiKey.FETCH, floor=13))
def test_fetch_by_unknown_topic_id(client: RawClient, version: int) -> None:
    request_type = load_request_schema(ApiKey.FETCH, version)
    request = mk(request_type, max_wait=datetime.timedelta(milliseconds=10), min_bytes=1,
                 forgotten_topics_data=(), topics=(mk(
                     nested(request_type, "FetchTopic"), topic_id=uuid.uuid4(), partitions=(
                         mk(nested(request_type, "FetchPartition"), partition=0, fetch_offset=0,
                            partition_max_bytes=1000),)),))
    (topic,) = client.request(request).responses
    assert topic.partitions[0].error_code == ErrorCode.unknown_topic_id


@pytest.mark.parametrize("version", versions(ApiKey.LIST_OFFSETS))
def test_list_offsets(client: RawClient, topic_name: str, version: int) -> None:
    ensure_topic(client, topic_name)
    client.request(mk(load_request_schema(ApiKey.PRODUCE, 9), acks=1, transactional_id=None,
                      timeout=datetime.timedelta(seconds=5), topic_data=(
        mk(nested(load_request_schema(ApiKey.PRODUCE, 9), "TopicProduceData"), name=topic_name,
           partition_data=(mk(nested(load_request_schema(ApiKey.PRODUCE, 9),
                                     "PartitionProduceData"), index=0,
                              records=make_batch([(b"a", b"1"), (b"b", b"2")])),)),)))
    request_type = load_request_schema(ApiKey.LIST_OFFSETS, version)
    topic_type = nested(request_type, "ListOffsetsTopic")
    partition_type = nested(request_type, "ListOffsetsPartition")
    answers = {}
    specials = [-2, -1] + ([-4] if version >= 8 else []) + ([-5] if version >= 9 else [])
    for timestamp in specials:
        response = client.request(mk(request_type, replica_id=-1, isolation_level=0,
                                     timeout=datetime.timedelta(seconds=5), topics=(
            mk(topic_type, name=topic_name, partitions=(
                mk(partition_type, partition_index=0, timestamp=timestamp),)),)))
        part = response.topics[0].partitions[0]
        assert part.error_code == ErrorCode.none
        answers[timestamp] = part.offset
    expected = {-2: 0, -1: 2, -4: 0, -5: -1}  # earliest, latest, earliest-local, tiered
    assert answers == {t: expected[t] for t in specials}


@pytest.mark.parametrize("version", versions(ApiKey.CREATE_TOPICS))
def test_create_topics(client: RawClient, topic_name: str, version: int) -> None:
    request_type = load_request_schema(ApiKey.CREATE_TOPICS, version)
    topic_type = nested(request_type, "CreatableTopic")

    def create(name: str, partitions: int, replication: int):
        response = client.request(mk(
            request_type, timeout=datetime.timedelta(seconds=5), validate_only=False,
            topics=(mk(topic_type, name=name, num_partitions=partitions,
                       replication_factor=replication, assignments=(), configs=()),)))
        return response.topics[0]

    assert create(topic_name, 3, 1).error_code == ErrorCode.none
    assert create(topic_name, 3, 1).error_code == ErrorCode.topic_already_exists
    assert create(topic_name + "-x", 1, 3).error_code == ErrorCode.invalid_replication_factor
    assert create("bad/name", 1, 1).error_code == ErrorCode.invalid_topic_exception
    assert create(topic_name + "-y", 0, 1).error_code == ErrorCode.invalid_partitions


@pytest.mark.parametrize("version", versions(ApiKey.FIND_COORDINATOR))
def test_find_coordinator(client: RawClient, cluster: Cluster, version: int) -> None:
    request_type = load_request_schema(ApiKey.FIND_COORDINATOR, version)
    response = client.request(mk(request_type, key="g", key_type=0, coordinator_keys=("g",)))
    found = response.coordinators[0] if version >= 4 else response
    assert found.error_code == ErrorCode.none
    assert (found.node_id, found.port) == (0, cluster.kafka_port)


@pytest.mark.parametrize("version", versions(ApiKey.API_VERSIONS))
def test_api_versions(client: RawClient, version: int) -> None:
    request_type = load_request_schema(ApiKey.API_VERSIONS, version)
    response = client.request(mk(request_type, client_software_name="matrix",
                                 client_software_version="1"))
    assert response.error_code == ErrorCode.none
    assert {k.api_key for k in response.api_keys} == set(SUPPORTED)


@pytest.mark.parametrize("version", versions(ApiKey.INIT_PRODUCER_ID))
def test_init_producer_id(client: RawClient, version: int) -> None:
    request_type = load_request_schema(ApiKey.INIT_PRODUCER_ID, version)

    def init(producer_id: int = -1, epoch: int = -1):
        return client.request(mk(request_type, transactional_id=None,
                                 transaction_timeout=datetime.timedelta(seconds=60),
                                 producer_id=producer_id, producer_epoch=epoch))

    first, second = init(), init()
    assert first.error_code == second.error_code == ErrorCode.none
    assert first.producer_id >= 0 and second.producer_id != first.producer_id
    assert first.producer_epoch == 0
    if version >= 3:  # KIP-360: an existing producer gets its epoch bumped
        bumped = init(first.producer_id, first.producer_epoch)
        assert (bumped.producer_id, bumped.producer_epoch) == (first.producer_id, 1)


@pytest.mark.parametrize("version", versions(ApiKey.JOIN_GROUP))
def test_group_lifecycle_at_every_version(client: RawClient, topic_name: str,
                                          version: int) -> None:
    """Join (MEMBER_ID_REQUIRED first from v4), sync, heartbeat, commit, fetch, leave."""
    group = f"{topic_name}-g{version}"
    ensure_topic(client, topic_name)  # commits name an existing partition, as Kafka requires
    join_type = load_request_schema(ApiKey.JOIN_GROUP, version)
    protocol = nested(join_type, "JoinGroupRequestProtocol")(name="range", metadata=b"\x00meta")

    def join(member_id: str):
        return client.request(mk(join_type, group_id=group,
                                 session_timeout=datetime.timedelta(seconds=10),
                                 rebalance_timeout=datetime.timedelta(seconds=10),
                                 member_id=member_id, group_instance_id=None,
                                 protocol_type="consumer", protocols=(protocol,), reason=None))

    joined = join("")
    if version >= 4:
        assert joined.error_code == ErrorCode.member_id_required and joined.member_id
        joined = join(joined.member_id)
    assert joined.error_code == ErrorCode.none, joined
    member = joined.member_id
    assert joined.leader == member and joined.generation_id >= 1
    assert [(m.member_id, m.metadata) for m in joined.members] == [(member, b"\x00meta")]

    sync_version = min(version, SUPPORTED[ApiKey.SYNC_GROUP][1])
    sync_type = load_request_schema(ApiKey.SYNC_GROUP, sync_version)
    synced = client.request(mk(sync_type, group_id=group, generation_id=joined.generation_id,
                               member_id=member, protocol_type="consumer",
                               protocol_name="range", assignments=(
                                   nested(sync_type, "SyncGroupRequestAssignment")(
                                       member_id=member, assignment=b"\x01plan"),)))
    assert synced.error_code == ErrorCode.none and synced.assignment == b"\x01plan"

    heartbeat_type = load_request_schema(ApiKey.HEARTBEAT,
                                         min(version, SUPPORTED[ApiKey.HEARTBEAT][1]))
    beat = client.request(mk(heartbeat_type, group_id=group,
                             generation_id=joined.generation_id, member_id=member))
    assert beat.error_code == ErrorCode.none
    stale = client.request(mk(heartbeat_type, group_id=group,
                              generation_id=joined.generation_id + 5, member_id=member))
    assert stale.error_code == ErrorCode.illegal_generation

    commit_version = min(max(version, SUPPORTED[ApiKey.OFFSET_COMMIT][0]),
                         SUPPORTED[ApiKey.OFFSET_COMMIT][1])
    commit_type = load_request_schema(ApiKey.OFFSET_COMMIT, commit_version)
    committed = client.request(mk(
        commit_type, group_id=group, generation_id_or_member_epoch=joined.generation_id,
        member_id=member, topics=(mk(nested(commit_type, "OffsetCommitRequestTopic"),
                                     name=topic_name, partitions=(
            mk(nested(commit_type, "OffsetCommitRequestPartition"), partition_index=0,
               committed_offset=42, committed_metadata="note"),)),)))
    assert committed.topics[0].partitions[0].error_code == ErrorCode.none

    fetch_version = min(max(version, SUPPORTED[ApiKey.OFFSET_FETCH][0]),
                        SUPPORTED[ApiKey.OFFSET_FETCH][1])
    fetch_type = load_request_schema(ApiKey.OFFSET_FETCH, fetch_version)
    if fetch_version >= 8:
        wanted = mk(nested(fetch_type, "OffsetFetchRequestGroup"), group_id=group,
                    topics=(mk(nested(fetch_type, "OffsetFetchRequestTopics"),
                               name=topic_name, partition_indexes=(0, 1)),))
        fetched = client.request(mk(fetch_type, groups=(wanted,))).groups[0]
    else:
        fetched = client.request(mk(fetch_type, group_id=group, topics=(
            mk(nested(fetch_type, "OffsetFetchRequestTopic"), name=topic_name,
               partition_indexes=(0, 1)),)))
    offsets = {p.partition_index: (p.committed_offset, p.metadata)
               for p in fetched.topics[0].partitions}
    assert offsets == {0: (42, "note"), 1: (-1, "")}

    leave_type = load_request_schema(ApiKey.LEAVE_GROUP,
                                     min(version, SUPPORTED[ApiKey.LEAVE_GROUP][1]))
    left = client.request(mk(leave_type, group_id=group, member_id=member, members=(
        mk(nested(leave_type, "MemberIdentity"), member_id=member),) if version >= 3 else ()))
    assert left.error_code == ErrorCode.none


@pytest.mark.parametrize("version", versions(ApiKey.OFFSET_FOR_LEADER_EPOCH))
def test_offset_for_leader_epoch(client: RawClient, topic_name: str, version: int) -> None:
    ensure_topic(client, topic_name)
    request_type = load_request_schema(ApiKey.OFFSET_FOR_LEADER_EPOCH, version)
    response = client.request(mk(request_type, replica_id=-1, topics=(mk(
        nested(request_type, "OffsetForLeaderTopic"), topic=topic_name, partitions=(
            mk(nested(request_type, "OffsetForLeaderPartition"), partition=0,
               current_leader_epoch=0, leader_epoch=0),
            mk(nested(request_type, "OffsetForLeaderPartition"), partition=9,
               current_leader_epoch=0, leader_epoch=0))),)))
    found, missing = response.topics[0].partitions
    assert (found.error_code, found.leader_epoch, found.end_offset) == (ErrorCode.none, 0, 0)
    assert missing.error_code == ErrorCode.unknown_topic_or_partition


@pytest.mark.parametrize("version", versions(ApiKey.DESCRIBE_LOG_DIRS))
def test_describe_log_dirs(client: RawClient, topic_name: str, version: int) -> None:
    ensure_topic(client, topic_name)
    request_type = load_request_schema(ApiKey.DESCRIBE_LOG_DIRS, version)
    response = client.request(mk(request_type, topics=(mk(
        nested(request_type, "DescribableLogDirTopic"), topic=topic_name, partitions=(0,)),)))
    (result,) = response.results
    assert result.error_code == ErrorCode.none
    (topic,) = result.topics
    assert topic.name == topic_name and topic.partitions[0].partition_index == 0


def test_describe_producers_shows_an_idempotent_producer(client: RawClient,
                                                         topic_name: str) -> None:
    ensure_topic(client, topic_name)
    init_type = load_request_schema(ApiKey.INIT_PRODUCER_ID, 4)
    producer = client.request(mk(init_type, transactional_id=None,
                                 transaction_timeout=datetime.timedelta(seconds=60)))
    produce_type = load_request_schema(ApiKey.PRODUCE, 9)
    batch = make_batch([(b"k", b"v")] * 3,
                       producer=(producer.producer_id, producer.producer_epoch, 0))
    produced = client.request(mk(produce_type, acks=-1, transactional_id=None,
                                 timeout=datetime.timedelta(seconds=5), topic_data=(
        mk(nested(produce_type, "TopicProduceData"), name=topic_name, partition_data=(
            mk(nested(produce_type, "PartitionProduceData"), index=0, records=batch),)),)))
    assert produced.responses[0].partition_responses[0].error_code == ErrorCode.none
    request_type = load_request_schema(ApiKey.DESCRIBE_PRODUCERS, 0)
    response = client.request(mk(request_type, topics=(mk(
        nested(request_type, "TopicRequest"), name=topic_name, partition_indexes=(0,)),)))
    (state,) = response.topics[0].partitions[0].active_producers
    assert (state.producer_id, state.producer_epoch, state.last_sequence) == (
        producer.producer_id, producer.producer_epoch, 2)
