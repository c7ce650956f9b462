"""Group administration through real admin clients: ListGroups, DescribeGroups, DeleteGroups,
OffsetFetch (single and multi-group), OffsetCommit with metadata, OffsetDelete."""

from __future__ import annotations

from confluent_kafka import (
    ConsumerGroupState,
    KafkaError,
    KafkaException,
)
from confluent_kafka.admin import AdminClient

from tests.group_ledger import Ledger
from tests.group_members import ConfluentMember, stop_all
from tests.group_scenarios import (
    PARTITIONS,
    committed_offsets,
    create_topic,
    produce_wave,
    wait_consumed,
    wait_stable,
    wait_until,
)
from tests.kelp_procs import Cluster

TIMEOUT = 15




def listed(admin: AdminClient) -> dict[str, object]:
    result = admin.list_consumer_groups(request_timeout=TIMEOUT).result(TIMEOUT + 5)
    assert not result.errors, result.errors
    return {g.group_id: g for g in result.valid}


def described(admin: AdminClient, group: str) -> object:  # a ConsumerGroupDescription
    return admin.describe_consumer_groups([group], request_timeout=TIMEOUT)[group].result(
        TIMEOUT + 5)


def delete_error(admin: AdminClient, group: str) -> int | None:
    """None if DeleteGroups succeeded, else the Kafka error code it failed with."""
    future = admin.delete_consumer_groups([group], request_timeout=TIMEOUT)[group]
    try:
        future.result(TIMEOUT + 5)
    except KafkaException as exc:
        return exc.args[0].code()
    return None


def test_list_describe_delete_and_offsets(group_cluster: Cluster, topic_name: str) -> None:
    bootstrap = group_cluster.bootstrap
    create_topic(bootstrap, topic_name)
    group = f"g-{topic_name}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ledger = Ledger(cluster=group_cluster)
    # Both members share one client.id (librdkafka's default does too).
    members = [ConfluentMember(f"m{i}", ledger, bootstrap, group, topic_name,
                               **{"client.id": "same-client"}).start() for i in range(2)]
    try:
        owned = wait_stable(ledger, members)
        produced = produce_wave(bootstrap, topic_name, "a", 10)
        wait_consumed(ledger, produced)
        expected = {p: 10 for p in range(PARTITIONS)}
        wait_until(lambda: committed_offsets(bootstrap, group, topic_name) == expected,
                   f"commits to reach {expected}", ledger)

        # ListGroups
        listing = listed(admin)
        assert group in listing, sorted(listing)
        assert listing[group].state == ConsumerGroupState.STABLE
        assert not listing[group].is_simple_consumer_group

        # DescribeGroups: both members, each with its own id and its own assignment
        description = described(admin, group)
        assert description.state == ConsumerGroupState.STABLE
        assert not description.is_simple_consumer_group
        assert description.partition_assignor in ("range", "roundrobin"), \
            description.partition_assignor
        by_id = {m.member_id: m for m in description.members}
        assert len(by_id) == 2, description.members
        expected_ids = {member.member_id: member.name for member in members}
        assert set(by_id) == set(expected_ids), (by_id.keys(), expected_ids)
        for member_id, info in by_id.items():
            assert info.client_id == "same-client"
            assert info.host, "DescribeGroups should report each member's host"
            assigned = {(tp.topic, tp.partition) for tp in info.assignment.topic_partitions}
            assert assigned == {(topic_name, p) for p in owned[expected_ids[member_id]]}

        # The same through kafka-python's admin client (other request versions).
        kafka_python_view = kafka_python_describe(bootstrap, group, topic_name)
        assert kafka_python_view == {m.member_id: set(owned[m.name]) for m in members}, \
            kafka_python_view

        # DeleteGroups refuses a group that has members
        assert delete_error(admin, group) == KafkaError.NON_EMPTY_GROUP
        assert described(admin, group).state == ConsumerGroupState.STABLE
    finally:
        stop_all(members)
    ledger.fail_fast()

    # Once everyone left: Empty, no members, offsets kept
    wait_until(lambda: described(admin, group).state == ConsumerGroupState.EMPTY,
               "the group to become Empty after its members left")
    assert described(admin, group).members == []
    assert listed(admin)[group].state == ConsumerGroupState.EMPTY
    assert committed_offsets(bootstrap, group, topic_name) == expected

    # DeleteGroups now deletes it, with its offsets
    assert delete_error(admin, group) is None
    assert group not in listed(admin)
    assert all(off < 0 for off in committed_offsets(bootstrap, group, topic_name).values())
    assert delete_error(admin, group) == KafkaError.GROUP_ID_NOT_FOUND


def kafka_python_describe(bootstrap: str, group: str, topic_name: str) -> dict[str, set[int]]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        result = admin.describe_groups([group])[group]
    finally:
        admin.close()
    assert result["error"] is None, result
    assert result["group_state"] == "Stable", result
    assert result["protocol_type"] == "consumer", result
    view = {}
    for member in result["members"]:
        assignment = member["member_assignment"]
        partitions: set[int] = set()
        for topic, parts in _assigned_partitions(assignment):
            assert topic == topic_name, topic
            partitions |= set(parts)
        view[member["member_id"]] = partitions
    return view


def _assigned_partitions(assignment: object) -> list[tuple[str, list[int]]]:
    """kafka-python decodes a consumer assignment; accept its object or dict form."""
    if isinstance(assignment, dict):
        topics = assignment.get("assigned_partitions") or assignment.get("partitions") or []
    else:
        topics = getattr(assignment, "assigned_partitions", None) or getattr(
            assignment, "partitions", [])
    pairs = []
    for entry in topics:
        if isinstance(entry, dict):
            pairs.append((entry["topic"], list(entry["partitions"])))
        elif hasattr(entry, "topic"):
            pairs.append((entry.topic, list(entry.partitions)))
        else:
            pairs.append((entry[0], list(entry[1])))
    return pairs


def test_offset_commit_with_metadata_fetch_many_groups_and_delete_offsets(
        group_cluster: Cluster, topic_name: str) -> None:
    """Standalone commits (generation -1) with metadata; OffsetFetch of two groups in one
    request (v8+); OffsetDelete; DeleteGroups of groups that only hold offsets."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTopicPartition
    from kafka.errors import NoError
    from kafka.structs import OffsetAndMetadata

    bootstrap = group_cluster.bootstrap
    create_topic(bootstrap, topic_name)
    first, second = f"g1-{topic_name}", f"g2-{topic_name}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        for group, base in ((first, 10), (second, 20)):
            errors = admin.alter_group_offsets(group, {
                KTopicPartition(topic_name, p): OffsetAndMetadata(base + p, f"meta-{group}-{p}", -1)
                for p in range(3)})
            assert all(err is NoError for err in errors.values()), errors

        both = admin.list_group_offsets({first: None, second: None})
        for group, base in ((first, 10), (second, 20)):
            assert {tp.partition: (om.offset, om.metadata) for tp, om in both[group].items()} == {
                p: (base + p, f"meta-{group}-{p}") for p in range(3)}, both[group]

        # (not read back with confluent-kafka: it converts the metadata, which librdkafka does
        # not NUL-terminate, as a C string and yields stray bytes or UnicodeDecodeError —
        # librdkafka#4649; kafka-python above reads it exactly)

        # OffsetDelete removes one partition's offset and keeps the rest
        deleted = admin.delete_group_offsets(first, [KTopicPartition(topic_name, 0)])
        assert all(err is NoError for err in deleted.values()), deleted
        after = admin.list_group_offsets({first: None})[first]
        assert {tp.partition: om.offset for tp, om in after.items()} == {1: 11, 2: 12}

        # Groups that only hold offsets are listed, and deletable (they have no members)
        names = {g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()}
        assert {first, second} <= names, names
        assert dict(admin.delete_groups([first, second])) == {first: "OK", second: "OK"}
        assert not admin.list_group_offsets({second: None})[second]
    finally:
        admin.close()
