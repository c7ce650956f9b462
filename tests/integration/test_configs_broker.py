"""Broker, group and logger configs as Kafka has them: DescribeConfigs with types, sources,
synonyms and documentation; dynamic broker configs (per broker and cluster-wide) and group
configs altered at run time, acting at once and surviving a restart; read-only configs
refused; the empty-list rule for cleanup.policy; session-timeout bounds from the config."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)
from kafka.admin import ConfigResource as KPConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.kafka_raw import request_once
from tests.kelp_procs import Cluster

BROKER, GROUP, LOGGER = 4, 32, 8
LONG, LIST, STRING = 5, 7, 2


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "cluster", broker_args=[
        "--config", "num.partitions=3", "--config", "group.min.session.timeout.ms=1000",
        "--group-initial-rebalance-delay-ms", "0"])
    try:
        yield running.start()
    finally:
        running.stop()


def _describe(cluster: Cluster, kind: int, name: str, keys=None, *, version: int = 4):
    request_type = load_request_schema(32, version)
    module = sys.modules[request_type.__module__]
    request = request_type(resources=(module.DescribeConfigsResource(
        resource_type=kind, resource_name=name, configuration_keys=keys),),
        include_synonyms=True, include_documentation=True)
    (result,) = request_once(cluster.bootstrap, request).results
    return result


def _alter(cluster: Cluster, kind: int, name: str, *ops: tuple[str, int, str | None],
           validate_only: bool = False):
    request_type = load_request_schema(44, 1)
    module = sys.modules[request_type.__module__]
    request = request_type(validate_only=validate_only, resources=(module.AlterConfigsResource(
        resource_type=kind, resource_name=name, configs=tuple(
            module.AlterableConfig(name=n, config_operation=op, value=v) for n, op, v in ops)),))
    (answer,) = request_once(cluster.bootstrap, request).responses
    return answer


def test_broker_configs_have_types_sources_synonyms_and_docs(configured: Cluster):
    result = _describe(configured, BROKER, "0")
    assert result.error_code == ErrorCode.none
    entries = {e.name: e for e in result.configs}
    listeners = entries["advertised.listeners"]
    assert listeners.value == f"PLAINTEXT://{configured.bootstrap}"
    assert (listeners.config_type, listeners.config_source, listeners.read_only) == (
        LIST, ConfigSource.STATIC_BROKER_CONFIG.value, True)
    assert listeners.documentation
    partitions = entries["num.partitions"]
    assert partitions.value == "3" and partitions.config_source == 4  # given at start
    retention = entries["log.retention.ms"]
    assert retention.config_type == LONG and retention.config_source == 5  # kelp's default
    assert not retention.read_only and "retention" in retention.documentation
    assert entries["log.dirs"].value == str(configured.data_dir.resolve())
    # Topic configs carry their types and, without an override, their broker synonym.
    admin = AdminClient({"bootstrap.servers": configured.bootstrap})
    admin.create_topics([NewTopic("typed", 1)])["typed"].result(30)
    topic = {e.name: e for e in _describe(configured, 2, "typed").configs}
    assert topic["cleanup.policy"].config_type == LIST
    assert [(s.name, s.source) for s in topic["retention.ms"].synonyms] == [
        ("log.retention.ms", 5)]


def test_dynamic_broker_configs_act_at_once_and_survive_a_restart(configured: Cluster):
    admin = AdminClient({"bootstrap.servers": configured.bootstrap})
    admin.create_topics([NewTopic("follows", 1)])["follows"].result(30)
    assert _alter(configured, BROKER, "", ("log.retention.ms", 0, "7200000")).error_code == 0
    assert _alter(configured, BROKER, "0", ("log.retention.ms", 0, "3600000")).error_code == 0
    for _ in range(2):
        broker = {e.name: e for e in _describe(configured, BROKER, "0").configs}
        assert broker["log.retention.ms"].value == "3600000"
        assert broker["log.retention.ms"].config_source == 2  # DYNAMIC_BROKER_CONFIG
        assert [s.source for s in broker["log.retention.ms"].synonyms] == [2, 3, 5]
        default = {e.name: e for e in _describe(configured, BROKER, "").configs}
        assert default["log.retention.ms"].value == "7200000"
        assert default["log.retention.ms"].config_source == 3
        topic = {e.name: e for e in _describe(configured, 2, "follows").configs}
        assert topic["retention.ms"].value == "3600000"  # a topic without an override follows
        assert topic["retention.ms"].config_source == 2
        configured.restart_broker(hard=True)
    # Removing the per-broker value falls back to the cluster-wide one.
    assert _alter(configured, BROKER, "0", ("log.retention.ms", 1, None)).error_code == 0
    topic = {e.name: e for e in _describe(configured, 2, "follows").configs}
    assert topic["retention.ms"].value == "7200000"


def test_read_only_and_unknown_broker_configs_are_refused(configured: Cluster):
    refused = _alter(configured, BROKER, "0", ("num.partitions", 0, "5"))
    assert refused.error_code == ErrorCode.invalid_config
    assert "Cannot update these configs dynamically" in refused.error_message
    assert _alter(configured, BROKER, "0", ("log.retention.msec", 0, "1")).error_code == \
        ErrorCode.invalid_config
    assert _alter(configured, BROKER, "7", ("log.retention.ms", 0, "1")).error_code == \
        ErrorCode.invalid_request
    assert _alter(configured, BROKER, "0", ("log.retention.ms", 0, "-5")).error_code == \
        ErrorCode.invalid_config
    # validate_only changes nothing.
    assert _alter(configured, BROKER, "0", ("log.retention.ms", 0, "1000"),
                  validate_only=True).error_code == 0
    entries = {e.name: e for e in _describe(configured, BROKER, "0").configs}
    assert entries["log.retention.ms"].config_source == 5


def test_group_configs_round_trip_and_survive_a_restart(configured: Cluster):
    answer = _alter(configured, GROUP, "g1", ("consumer.session.timeout.ms", 0, "50000"))
    assert answer.error_code == 0, answer.error_message
    too_short = _alter(configured, GROUP, "g1", ("consumer.session.timeout.ms", 0, "1000"))
    assert too_short.error_code == ErrorCode.invalid_config
    configured.restart_broker(hard=True)
    entries = {e.name: e for e in _describe(configured, GROUP, "g1").configs}
    assert entries["consumer.session.timeout.ms"].value == "50000"
    assert entries["consumer.session.timeout.ms"].config_source == ConfigSource.GROUP_CONFIG.value
    assert entries["consumer.heartbeat.interval.ms"].value == "5000"  # the broker's default
    assert entries["consumer.heartbeat.interval.ms"].config_source == 5


def test_broker_loggers_are_described_and_altered(configured: Cluster):
    loggers = {e.name: e.value for e in _describe(configured, LOGGER, "0").configs}
    assert loggers["root"] == "INFO"
    assert _alter(configured, LOGGER, "0", ("root", 0, "DEBUG")).error_code == 0
    loggers = {e.name: e.value for e in _describe(configured, LOGGER, "0").configs}
    assert loggers["root"] == "DEBUG"
    assert _alter(configured, LOGGER, "0", ("root", 0, "LOUD")).error_code == \
        ErrorCode.invalid_config


def test_the_last_cleanup_policy_value_can_be_removed(cluster: Cluster, topic_name: str):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("cleanup.policy", "delete",
                    incremental_operation=AlterConfigOpType.SUBTRACT)])
    admin.incremental_alter_configs([resource])[resource].result(30)
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic_name)])
    configs = next(iter(described.values())).result(30)
    assert configs["cleanup.policy"].value == ""
    assert configs["cleanup.policy"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # SET to "" is the same empty list.
    legacy = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        legacy.alter_configs([KPConfigResource(ConfigResourceType.TOPIC, topic_name,
                                               configs={"cleanup.policy": ""})])
    finally:
        legacy.close()


def test_session_timeout_bounds_come_from_the_broker_config(configured: Cluster):
    admin = AdminClient({"bootstrap.servers": configured.bootstrap})
    admin.create_topics([NewTopic("bounds", 1)])["bounds"].result(30)
    consumer = Consumer({"bootstrap.servers": configured.bootstrap, "group.id": "bounds",
                         "session.timeout.ms": 3000, "heartbeat.interval.ms": 1000,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe(["bounds"])
        errors = []
        for _ in range(20):
            message = consumer.poll(0.5)
            if message is not None and message.error():
                errors.append(message.error())
            if consumer.assignment():
                break
        assert consumer.assignment(), errors  # 3 s >= group.min.session.timeout.ms (1 s)
    finally:
        consumer.close()


def test_auto_created_topics_take_num_partitions(configured: Cluster):
    admin = AdminClient({"bootstrap.servers": configured.bootstrap})
    metadata = admin.list_topics("auto-made", timeout=30)  # Metadata auto-creates it
    assert len(metadata.topics["auto-made"].partitions) in (0, 3)
    metadata = admin.list_topics("auto-made", timeout=30)
    assert len(metadata.topics["auto-made"].partitions) == 3
