"""``kelp group list|describe|reset-offsets|delete``."""

from __future__ import annotations

from typing import Any

import click
from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)

from kelp.ops.app import TIMEOUT_S, cli, command, emit, fail, settings
from kelp.ops.topics import admin, wait_all, watermarks


@cli.group("group")
def group() -> None:
    """Consumer groups: list, describe (members, assignment, lag), reset offsets, delete."""


@command(group, "list")
def list_groups() -> None:
    """Every group, with its state and type."""
    try:
        result = admin().list_consumer_groups().result(TIMEOUT_S)
    except KafkaException as exc:
        fail(exc.args[0].str())
    rows = [{"group": g.group_id, "state": g.state.name if g.state else None,
             "type": getattr(getattr(g, "type", None), "name", None),
             "simple": g.is_simple_consumer_group}
            for g in sorted(result.valid, key=lambda g: g.group_id)]
    emit(rows, ["group", "state", "type"])


def committed(group_id: str) -> dict[tuple[str, int], int]:
    futures = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id)])
    try:
        result = futures[group_id].result(TIMEOUT_S)
    except KafkaException as exc:
        fail(exc.args[0].str())
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions
            if tp.offset >= 0}


@command(group, "describe")
@click.argument("group_id")
def describe(group_id: str) -> None:
    """Members and their partitions, and each partition's committed offset and lag."""
    try:
        described = admin().describe_consumer_groups([group_id])[group_id].result(TIMEOUT_S)
    except KafkaException as exc:
        fail(exc.args[0].str())
    owners = {}
    members = []
    for member in described.members:
        assigned = [(tp.topic, tp.partition) for tp in member.assignment.topic_partitions]
        members.append({"member": member.member_id, "client": member.client_id,
                        "host": member.host, "partitions": len(assigned)})
        owners.update(dict.fromkeys(assigned, member.member_id))
    offsets = committed(group_id)
    topics = sorted({t for t, _ in offsets} | {t for t, _ in owners})
    counts = {t: 1 + max(p for tt, p in [*offsets, *owners] if tt == t) for t in topics}
    ends = watermarks(topics, counts) if topics else {}
    lag = []
    for (topic, partition), (_start, end) in sorted(ends.items()):
        commit = offsets.get((topic, partition))
        lag.append({"topic": topic, "partition": partition, "committed": commit, "end": end,
                    "lag": None if commit is None else max(end - commit, 0),
                    "member": owners.get((topic, partition))})
    state = described.state.name if described.state else None
    if settings().json:
        emit([], [], json_value={"group": group_id, "state": state, "members": members,
                                 "partitions": lag,
                                 "lag": sum(row["lag"] or 0 for row in lag)})
        return
    emit(members, ["member", "client", "host", "partitions"],
         title=f"{group_id}: {state}, {len(members)} member(s)")
    emit(lag, ["topic", "partition", "committed", "end", "lag", "member"],
         title=f"{group_id}: lag {sum(row['lag'] or 0 for row in lag)}")


@command(group, "reset-offsets")
@click.argument("group_id")
@click.option("-t", "--topic", required=True)
@click.option("--to-earliest", "target", flag_value="earliest")
@click.option("--to-latest", "target", flag_value="latest")
@click.option("--to-offset", type=int, default=None)
@click.option("--execute", is_flag=True, help="apply (default: show what would be done)")
def reset_offsets(group_id: str, topic: str, target: str | None, to_offset: int | None,
                  execute: bool) -> None:
    """Move a group's committed offsets on a topic (the group must have no members)."""
    if (target is None) == (to_offset is None):
        raise click.UsageError("give exactly one of --to-earliest, --to-latest, --to-offset")
    client = admin()
    metadata = client.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None:
        fail(f"unknown topic {topic}")
    counts = {topic: len(metadata.partitions)}
    ends = watermarks([topic], counts)
    plan: list[dict[str, Any]] = []
    for partition in range(counts[topic]):
        start, end = ends[(topic, partition)]
        new = (start if target == "earliest" else end if target == "latest"
               else min(max(to_offset or 0, start), end))
        plan.append({"topic": topic, "partition": partition, "offset": new})
    if execute:
        request = ConsumerGroupTopicPartitions(group_id, [
            TopicPartition(row["topic"], row["partition"], row["offset"]) for row in plan])
        wait_all(client.alter_consumer_group_offsets([request]))
    emit(plan, ["topic", "partition", "offset"],
         title=f"{group_id}: {'reset' if execute else 'would reset (add --execute)'}")


@command(group, "delete")
@click.argument("group_ids", nargs=-1, required=True)
def delete(group_ids: tuple[str, ...]) -> None:
    """Delete groups (and their committed offsets); they must have no members."""
    wait_all(admin().delete_consumer_groups(list(group_ids)))
    emit([{"group": g, "deleted": True} for g in group_ids], ["group", "deleted"])
