"""Broker configs: precedence of values, topic defaults from broker synonyms, dynamic
alteration rules, group config bounds, the empty-list rule, durability of the dynamic state."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.broker_configs import (
    OP_APPEND,
    OP_DELETE,
    OP_SET,
    OP_SUBTRACT,
    BrokerConfigs,
    ConfigError,
    Op,
    apply_ops,
)
from broker.config_table import BROKER_CONFIGS, TOPIC_DOCS, Source
from broker.configs import KNOWN, Defaults, InvalidConfig


def test_every_topic_config_has_a_type_and_documentation():
    assert set(TOPIC_DOCS) == KNOWN
    assert all(doc for _type, doc in TOPIC_DOCS.values())
    assert all(config.doc for config in BROKER_CONFIGS.values())


def test_topic_names_given_at_start_mean_their_broker_synonym():
    configs = BrokerConfigs.from_flags(["retention.ms=1000", "num.partitions=4",
                                        "confluent.value.schema.validation=true"])
    assert configs.static == {"log.retention.ms": "1000", "num.partitions": "4"}
    assert configs.topic_defaults()["retention.ms"] == "1000"
    assert configs.topic_defaults()["confluent.value.schema.validation"] == "true"
    with pytest.raises(InvalidConfig):
        BrokerConfigs.from_flags(["log.retention.msec=1"])
    with pytest.raises(InvalidConfig):
        BrokerConfigs.from_flags(["log.retention.ms=soon"])


def test_per_broker_beats_cluster_default_beats_static_beats_default():
    configs = BrokerConfigs.from_flags(["log.retention.ms=3"])
    assert configs.levels("log.retention.ms")[0] == ("3", Source.STATIC_BROKER)
    configs.commit_broker("", configs.plan_broker("", [Op("log.retention.ms", "2", OP_SET)],
                                                  False))
    configs.commit_broker("0", configs.plan_broker("0", [Op("log.retention.ms", "1", OP_SET)],
                                                   False))
    assert [s for _v, s in configs.levels("log.retention.ms")] == [
        Source.DYNAMIC_BROKER, Source.DYNAMIC_DEFAULT_BROKER, Source.STATIC_BROKER,
        Source.DEFAULT]
    assert configs.topic_defaults()["retention.ms"] == "1"
    assert Defaults(configs.topic_defaults()).log_config({}).retention_ms == 1


def test_read_only_unknown_and_malformed_values_are_refused():
    configs = BrokerConfigs.from_flags([])
    for ops in ([Op("num.partitions", "3", OP_SET)], [Op("nope", "1", OP_SET)],
                [Op("log.retention.ms", "x", OP_SET)]):
        with pytest.raises(ConfigError):
            configs.plan_broker("0", ops, False)
    with pytest.raises(ConfigError, match="Unexpected broker id"):
        configs.plan_broker("3", [], False)


def test_group_configs_stay_within_the_broker_bounds():
    configs = BrokerConfigs.from_flags([])
    planned = configs.plan_group("g", [Op("consumer.session.timeout.ms", "50000", OP_SET)],
                                 False)
    configs.commit_group("g", planned)
    assert configs.group_value("g", "consumer.session.timeout.ms") == 50_000
    assert configs.group_value("other", "consumer.session.timeout.ms") == 45_000
    with pytest.raises(ConfigError, match=r"group\.consumer\.max\.session\.timeout\.ms"):
        configs.plan_group("g", [Op("consumer.session.timeout.ms", "70000", OP_SET)], False)
    with pytest.raises(ConfigError):
        configs.plan_group("g", [Op("session.timeout.ms", "1", OP_SET)], False)


def test_list_operations_may_leave_an_empty_list():
    configs = {"cleanup.policy": "compact,delete"}
    apply_ops(configs, [Op("cleanup.policy", "compact", OP_SUBTRACT)], {})
    assert configs["cleanup.policy"] == "delete"
    apply_ops(configs, [Op("cleanup.policy", "delete", OP_SUBTRACT)], {})
    assert configs["cleanup.policy"] == ""
    log_config = Defaults({}).log_config(configs)
    assert not log_config.compacted and not log_config.delete_by_retention
    apply_ops(configs, [Op("cleanup.policy", "compact", OP_APPEND)], {})
    assert configs["cleanup.policy"] == "compact"
    apply_ops(configs, [Op("cleanup.policy", None, OP_DELETE)], {})
    assert "cleanup.policy" not in configs


def test_dynamic_state_survives_a_reload(tmp_path: Path):
    path = tmp_path / "broker-configs.json"
    configs = BrokerConfigs.from_flags([], path)
    configs.commit_broker("", {"log.segment.bytes": "100000"})
    configs.commit_group("g", {"consumer.heartbeat.interval.ms": "6000"})
    configs.save()
    again = BrokerConfigs.from_flags([], path)
    again.load()
    assert again.cluster_default == {"log.segment.bytes": "100000"}
    assert again.group_value("g", "consumer.heartbeat.interval.ms") == 6000


@pytest.mark.parametrize("pair", ["num.partitions=0", "producer.id.expiration.ms=-1",
                                  "group.min.session.timeout.ms=-5",
                                  "offsets.topic.replication.factor=40000",
                                  "producer.id.expiration.ms=" + "9" * 30])
def test_integer_broker_configs_stay_in_their_range(pair):
    with pytest.raises(InvalidConfig):
        BrokerConfigs.from_flags([pair])
    name, _, value = pair.partition("=")
    if BROKER_CONFIGS[name].dynamic:  # and altering it at run time is refused too
        with pytest.raises(ConfigError):
            BrokerConfigs.from_flags([]).plan_broker("0", [Op(name, value, OP_SET)], False)
