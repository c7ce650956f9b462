"""``kelp topic list|describe|create|delete|alter-config|add-partitions``."""

from __future__ import annotations

from typing import Any

import click
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from kelp.ops.app import TIMEOUT_S, cli, command, emit, fail, settings


@cli.group("topic")
def topic() -> None:
    """Topics: list, describe, create, delete, alter configs, add partitions."""


def admin() -> AdminClient:
    """The command's admin client, one per command: held for the command's life, as a
    collected client fails the futures it handed out."""
    current = settings()
    if current.admin is None:
        current.admin = AdminClient(current.client_config())
    return current.admin


def pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint=what)
        out[name] = setting
    return out


def wait_all(futures: dict[Any, Any]) -> None:
    """Every future's result; the first failure ends the command (exit 1)."""
    errors = []
    for key, future in futures.items():
        try:
            future.result(TIMEOUT_S)
        except KafkaException as exc:
            errors.append(f"{key}: {exc.args[0].str()}")
    if errors:
        fail("; ".join(errors))


def watermarks(names: list[str], partitions: dict[str, int]) -> dict[tuple[str, int],
                                                                     tuple[int, int]]:
    consumer = Consumer(settings().client_config(**{"group.id": "kelp-cli-watermarks"}))
    try:
        return {(name, p): consumer.get_watermark_offsets(TopicPartition(name, p),
                                                          timeout=TIMEOUT_S)
                for name in names for p in range(partitions[name])}
    finally:
        consumer.close()


@command(topic, "list")
@click.option("--internal", is_flag=True, help="include internal topics (__*)")
def list_topics(internal: bool) -> None:
    """The topics and their partition counts."""
    try:
        metadata = admin().list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        fail(f"cannot list topics: {exc.args[0].str()}")
    rows = [{"topic": name, "partitions": len(meta.partitions)}
            for name, meta in sorted(metadata.topics.items())
            if internal or not name.startswith("__")]
    emit(rows, ["topic", "partitions"])


@command(topic, "describe")
@click.argument("names", nargs=-1, required=True)
def describe(names: tuple[str, ...]) -> None:
    """Partitions (leader, offsets) and configs of topics."""
    client = admin()
    metadata = client.list_topics(timeout=TIMEOUT_S)
    missing = [n for n in names if n not in metadata.topics or metadata.topics[n].error]
    if missing:
        fail(f"unknown topic(s): {', '.join(missing)}")
    counts = {n: len(metadata.topics[n].partitions) for n in names}
    marks = watermarks(list(names), counts)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    configs = {resource.name: future.result(TIMEOUT_S)
               for resource, future in client.describe_configs(resources).items()}
    described = []
    for name in names:
        partitions = [{"topic": name, "partition": p,
                       "leader": metadata.topics[name].partitions[p].leader,
                       "start": marks[(name, p)][0], "end": marks[(name, p)][1]}
                      for p in range(counts[name])]
        described.append({"topic": name, "partitions": partitions, "configs": {
            key: entry.value for key, entry in sorted(configs[name].items())
            if not entry.is_default}})
    if settings().json:
        emit([], [], json_value=described)
        return
    for entry in described:
        emit(entry["partitions"], ["partition", "leader", "start", "end"],
             title=f"{entry['topic']}")
        if entry["configs"]:
            emit([{"config": k, "value": v} for k, v in entry["configs"].items()],
                 ["config", "value"], title=f"{entry['topic']}: configs set")


@command(topic, "create")
@click.argument("name")
@click.option("-p", "--partitions", type=click.IntRange(min=1), default=None,
              help="default: the broker's num.partitions")
@click.option("-c", "--config", "configs", multiple=True, metavar="NAME=VALUE")
def create(name: str, partitions: int | None, configs: tuple[str, ...]) -> None:
    """Create a topic."""
    new = NewTopic(name, partitions if partitions is not None else -1,
                   config=pairs(configs, "--config"))
    wait_all(admin().create_topics([new]))
    emit([{"topic": name, "created": True}], ["topic", "created"])


@command(topic, "delete")
@click.argument("names", nargs=-1, required=True)
def delete(names: tuple[str, ...]) -> None:
    """Delete topics."""
    wait_all(admin().delete_topics(list(names)))
    emit([{"topic": n, "deleted": True} for n in names], ["topic", "deleted"])


@command(topic, "alter-config")
@click.argument("name")
@click.option("--set", "to_set", multiple=True, metavar="NAME=VALUE")
@click.option("--delete", "to_delete", multiple=True, metavar="NAME",
              help="back to the default")
def alter_config(name: str, to_set: tuple[str, ...], to_delete: tuple[str, ...]) -> None:
    """Set or reset topic configs (incrementally: others stay)."""
    if not to_set and not to_delete:
        raise click.UsageError("nothing to change: give --set and/or --delete")
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
               for k, v in pairs(to_set, "--set").items()]
    entries += [ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE)
                for k in to_delete]
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
    wait_all(admin().incremental_alter_configs([resource]))
    emit([{"topic": name, "set": ",".join(to_set), "deleted": ",".join(to_delete)}],
         ["topic", "set", "deleted"])


@command(topic, "add-partitions")
@click.argument("name")
@click.option("--count", type=click.IntRange(min=1), required=True,
              help="the new total number of partitions")
def add_partitions(name: str, count: int) -> None:
    """Grow a topic to COUNT partitions."""
    wait_all(admin().create_partitions([NewPartitions(name, count)]))
    emit([{"topic": name, "partitions": count}], ["topic", "partitions"])
