"""Topic configs and names, validated as Kafka validates them."""

from __future__ import annotations

import pytest

from broker.configs import Defaults, InvalidConfig, validate
from broker.topics import TopicError, check_topic_name


@pytest.mark.parametrize("configs", [
    {"dummy.doesntexist": "1"},
    {"retention.ms": "-2"},
    {"retention.ms": "soon"},
    {"segment.bytes": str(1 << 40)},  # an INT in Kafka
    {"min.insync.replicas": "0"},
    {"cleanup.policy": "compact,forever"},
    {"unclean.leader.election.enable": "yes"},
    {"compression.type": "brotli"},
    {"min.cleanable.dirty.ratio": "1.5"},
    {"message.timestamp.type": "WallClock"},
])
def test_unknown_names_and_bad_values_are_refused(configs):
    with pytest.raises(InvalidConfig):
        validate(configs)


def test_kafka_configs_kelp_does_not_act_on_are_accepted_and_kept():
    configs = {"min.insync.replicas": "2", "compression.type": "zstd", "preallocate": "true",
               "max.compaction.lag.ms": "1000", "cleanup.policy": "compact, delete",
               "confluent.value.schema.validation": "true",
               "confluent.value.subject.name.strategy":
                   "io.confluent.kafka.serializers.subject.RecordNameStrategy"}
    assert validate(dict(configs)) == configs
    log_config = Defaults.from_flags([]).log_config(configs)
    assert log_config.compacted and log_config.delete_by_retention


def test_broker_defaults_refuse_unknown_names():
    with pytest.raises(InvalidConfig):
        Defaults.from_flags(["retention.msec=1"])


@pytest.mark.parametrize("name", ["abc\n", "", ".", "..", "a" * 250, "a b", "a/b", "é"])
def test_illegal_topic_names(name):
    with pytest.raises(TopicError):
        check_topic_name(name)


@pytest.mark.parametrize("name", ["a", "a" * 249, "my.topic_1-x", "_schemas"])
def test_legal_topic_names(name):
    check_topic_name(name)
