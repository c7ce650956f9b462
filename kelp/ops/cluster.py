"""``kelp cluster info|health``."""

from __future__ import annotations

import time

import click
from confluent_kafka import KafkaException

from kelp.ops.app import TIMEOUT_S, cli, command, emit, fail, settings
from kelp.ops.serde import Registry, RegistryError
from kelp.ops.topics import admin


@cli.group("cluster")
def cluster() -> None:
    """The cluster: its id, nodes and controller; whether it answers."""


@command(cluster, "info")
def info() -> None:
    """Cluster id, controller, nodes, topic and partition counts."""
    try:
        described = admin().describe_cluster().result(TIMEOUT_S)
        metadata = admin().list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        fail(exc.args[0].str())
    nodes = [{"node": n.id, "host": n.host, "port": n.port, "rack": n.rack,
              "controller": described.controller is not None
              and n.id == described.controller.id} for n in described.nodes]
    summary = {"cluster_id": described.cluster_id, "nodes": nodes,
               "topics": len(metadata.topics),
               "partitions": sum(len(t.partitions) for t in metadata.topics.values())}
    emit(nodes, ["node", "host", "port", "rack", "controller"],
         title=f"cluster {described.cluster_id}: {summary['topics']} topics, "
               f"{summary['partitions']} partitions", json_value=summary)


@command(cluster, "health")
@click.option("--no-registry", is_flag=True, help="do not check the Schema Registry")
def health(no_registry: bool) -> None:
    """Round trips to the Kafka listener and the registry; exit 1 if one fails."""
    checks = []
    started = time.perf_counter()
    try:
        admin().list_topics(timeout=TIMEOUT_S)
        checks.append({"check": "kafka", "ok": True,
                       "ms": round((time.perf_counter() - started) * 1000, 1), "error": None})
    except KafkaException as exc:
        checks.append({"check": "kafka", "ok": False, "ms": None, "error": exc.args[0].str()})
    if not no_registry:
        started = time.perf_counter()
        try:
            Registry(settings().registry, settings().properties()).call("GET", "/subjects")
            checks.append({"check": "registry", "ok": True, "ms": round(
                (time.perf_counter() - started) * 1000, 1), "error": None})
        except RegistryError as exc:
            checks.append({"check": "registry", "ok": False, "ms": None, "error": str(exc)})
    emit(checks, ["check", "ok", "ms", "error"])
    if not all(c["ok"] for c in checks):
        raise SystemExit(1)
