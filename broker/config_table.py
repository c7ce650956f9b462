"""What each config is: Kafka's type (KIP-569), a line of documentation, and for broker
configs whether it can change at run time and which topic config it is the default for.

Topic configs are defined in ``broker.configs`` (names, ranges); broker configs here. A
broker config named by a topic config's synonym (``log.retention.ms`` for ``retention.ms``)
is that topic config's default for every topic without an override, as in Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from broker.configs import BUILTIN_DEFAULTS

INT64_MAX = str((1 << 63) - 1)
# The largest value of each integer config type.
INTEGER_MAX = {"INT": (1 << 31) - 1, "SHORT": (1 << 15) - 1, "LONG": (1 << 63) - 1}


class ConfigType(IntEnum):
    BOOLEAN = 1
    STRING = 2
    INT = 3
    SHORT = 4
    LONG = 5
    DOUBLE = 6
    LIST = 7
    CLASS = 8
    PASSWORD = 9


class Source(IntEnum):
    """Kafka's DescribeConfigs config source."""

    TOPIC = 1
    DYNAMIC_BROKER = 2
    DYNAMIC_DEFAULT_BROKER = 3
    STATIC_BROKER = 4
    DEFAULT = 5
    DYNAMIC_BROKER_LOGGER = 6
    GROUP = 8


_T = ConfigType
TOPIC_DOCS: dict[str, tuple[ConfigType, str]] = {
    "cleanup.policy": (_T.LIST, "How old segments are removed: delete (by retention), compact "
                       "(keep the last record per key), both, or neither (empty list)."),
    "compression.type": (_T.STRING, "The codec batches are stored with; 'producer' keeps the "
                         "producer's codec."),
    "compression.gzip.level": (_T.INT, "gzip level when compression.type is gzip."),
    "compression.lz4.level": (_T.INT, "lz4 level when compression.type is lz4."),
    "compression.zstd.level": (_T.INT, "zstd level when compression.type is zstd."),
    "delete.retention.ms": (_T.LONG, "How long compaction keeps tombstones (null values)."),
    "file.delete.delay.ms": (_T.LONG, "Delay before a deleted segment's file is removed."),
    "flush.messages": (_T.LONG, "fsync after this many records instead of before every "
                       "acknowledgement (unset: kelp syncs before acknowledging)."),
    "flush.ms": (_T.LONG, "fsync at least this often instead of before every "
                 "acknowledgement (unset: kelp syncs before acknowledging)."),
    "index.interval.bytes": (_T.INT, "Bytes between offset-index entries."),
    "local.retention.bytes": (_T.LONG, "Tiered storage: local size limit (-2: retention.bytes)."),
    "local.retention.ms": (_T.LONG, "Tiered storage: local time limit (-2: retention.ms)."),
    "max.compaction.lag.ms": (_T.LONG, "Longest a record stays uncompacted."),
    "max.message.bytes": (_T.INT, "Largest record batch a producer may append."),
    "message.downconversion.enable": (_T.BOOLEAN, "Whether old fetch versions get batches "
                                      "converted to their format."),
    "message.format.version": (_T.STRING, "Obsolete; kept for old tools."),
    "message.timestamp.after.max.ms": (_T.LONG, "How far in the future a record's timestamp "
                                       "may be."),
    "message.timestamp.before.max.ms": (_T.LONG, "How far in the past a record's timestamp "
                                        "may be."),
    "message.timestamp.difference.max.ms": (_T.LONG, "Obsolete form of the two limits above."),
    "message.timestamp.type": (_T.STRING, "CreateTime (the producer's) or LogAppendTime (the "
                               "broker's clock at append)."),
    "min.cleanable.dirty.ratio": (_T.DOUBLE, "Share of uncompacted bytes that triggers "
                                  "compaction."),
    "min.compaction.lag.ms": (_T.LONG, "Shortest a record stays uncompacted."),
    "min.insync.replicas": (_T.INT, "Replicas that must hold a record before acks=all is "
                            "answered (one broker: 1)."),
    "preallocate": (_T.BOOLEAN, "Preallocate segment files."),
    "remote.storage.enable": (_T.BOOLEAN, "Tiered storage for this topic."),
    "remote.log.copy.disable": (_T.BOOLEAN, "Tiered storage: stop copying segments."),
    "remote.log.delete.on.disable": (_T.BOOLEAN, "Tiered storage: delete remote data when "
                                     "disabled."),
    "retention.bytes": (_T.LONG, "Largest a partition may grow before old segments are "
                        "deleted (-1: no limit)."),
    "retention.ms": (_T.LONG, "How long records are kept before their segment is deleted "
                     "(-1: forever)."),
    "segment.bytes": (_T.INT, "Size at which a new segment file is started."),
    "segment.index.bytes": (_T.INT, "Size of a segment's offset index."),
    "segment.jitter.ms": (_T.LONG, "Random jitter subtracted from segment.ms."),
    "segment.ms": (_T.LONG, "Age at which a new segment file is started."),
    "unclean.leader.election.enable": (_T.BOOLEAN, "Whether an out-of-sync replica may lead "
                                       "(one broker: never needed)."),
    "leader.replication.throttled.replicas": (_T.LIST, "Replicas throttled on the leader."),
    "follower.replication.throttled.replicas": (_T.LIST, "Replicas throttled on followers."),
    "confluent.key.schema.validation": (_T.BOOLEAN, "Refuse records whose key does not carry "
                                        "a registered schema id."),
    "confluent.value.schema.validation": (_T.BOOLEAN, "Refuse records whose value does not "
                                          "carry a registered schema id."),
    "confluent.key.subject.name.strategy": (_T.STRING, "Subject naming for key validation."),
    "confluent.value.subject.name.strategy": (_T.STRING, "Subject naming for value "
                                              "validation."),
}


def topic_type(name: str) -> ConfigType:
    return TOPIC_DOCS.get(name, (ConfigType.STRING, ""))[0]


@dataclass(frozen=True)
class BrokerConfig:
    name: str
    type: ConfigType
    default: str | None
    doc: str
    dynamic: bool = False  # alterable per broker and cluster-wide, as Kafka allows
    topic: str | None = None  # the topic config this is the broker-wide default of
    minimum: int = 0  # an integer config's smallest value (its type bounds the largest)


def _log(name: str, topic: str, default: str | None = None) -> BrokerConfig:
    """A dynamic broker config that is the default of topic config ``topic``."""
    config_type, doc = TOPIC_DOCS[topic]
    value = BUILTIN_DEFAULTS.get(topic, default)
    return BrokerConfig(name, config_type, value, f"Default {topic} of topics: {doc}",
                        dynamic=True, topic=topic)


_BROKER = [
    BrokerConfig("broker.id", _T.INT, "0", "This broker's id."),
    BrokerConfig("node.id", _T.INT, "0", "This node's id (KRaft name of broker.id)."),
    BrokerConfig("log.dirs", _T.STRING, None, "The directory the broker keeps its data in."),
    BrokerConfig("log.dir", _T.STRING, None, "Same as log.dirs (kelp has one data dir)."),
    BrokerConfig("num.partitions", _T.INT, "1", "Partitions of an auto-created topic or a "
                 "CreateTopics request that asks for the default.", minimum=1),
    BrokerConfig("default.replication.factor", _T.INT, "1", "Replicas of a new topic (one "
                 "broker: 1).", minimum=1),
    BrokerConfig("offsets.topic.replication.factor", _T.SHORT, "3", "Replicas of the "
                 "coordination partition in a cluster (offsets, groups, transactions; at most "
                 "3; it is created once that many brokers are alive). A lone broker keeps one "
                 "copy.", minimum=1),
    BrokerConfig("delete.topic.enable", _T.BOOLEAN, "true", "Whether DeleteTopics is "
                 "served."),
    BrokerConfig("offsets.retention.minutes", _T.INT, str(7 * 24 * 60), "How long the "
                 "committed offsets of an empty group are kept.", minimum=1),
    BrokerConfig("group.min.session.timeout.ms", _T.INT, "6000", "Smallest session timeout "
                 "a classic group member may ask for."),
    BrokerConfig("group.max.session.timeout.ms", _T.INT, "1800000", "Largest session "
                 "timeout a classic group member may ask for."),
    BrokerConfig("group.initial.rebalance.delay.ms", _T.INT, "3000", "How long a new group "
                 "waits for more members before its first rebalance."),
    BrokerConfig("group.consumer.session.timeout.ms", _T.INT, "45000", "Session timeout of "
                 "consumer-protocol (KIP-848) group members.", minimum=1),
    BrokerConfig("group.consumer.min.session.timeout.ms", _T.INT, "45000", "Smallest "
                 "consumer.session.timeout.ms a group may be given.", minimum=1),
    BrokerConfig("group.consumer.max.session.timeout.ms", _T.INT, "60000", "Largest "
                 "consumer.session.timeout.ms a group may be given.", minimum=1),
    BrokerConfig("group.consumer.heartbeat.interval.ms", _T.INT, "5000", "Heartbeat interval "
                 "of consumer-protocol (KIP-848) group members.", minimum=1),
    BrokerConfig("group.consumer.min.heartbeat.interval.ms", _T.INT, "5000", "Smallest "
                 "consumer.heartbeat.interval.ms a group may be given.", minimum=1),
    BrokerConfig("group.consumer.max.heartbeat.interval.ms", _T.INT, "15000", "Largest "
                 "consumer.heartbeat.interval.ms a group may be given.", minimum=1),
    BrokerConfig("transaction.max.timeout.ms", _T.INT, "900000", "Largest "
                 "transaction.timeout.ms a transactional producer may ask for.", minimum=1),
    BrokerConfig("transactional.id.expiration.ms", _T.INT, "604800000", "How long a "
                 "transactional id with no transaction open is kept without use.", minimum=1),
    BrokerConfig("transaction.state.log.replication.factor", _T.SHORT, "1", "Replicas of "
                 "the transaction log.", minimum=1),
    BrokerConfig("producer.id.expiration.ms", _T.INT, "86400000", "How long an idle "
                 "producer's idempotence state is kept.", dynamic=True, minimum=1),
    _log("log.segment.bytes", "segment.bytes"),
    _log("log.roll.ms", "segment.ms", str(7 * 24 * 3600 * 1000)),
    _log("log.roll.jitter.ms", "segment.jitter.ms", "0"),
    _log("log.index.size.max.bytes", "segment.index.bytes", "10485760"),
    _log("log.index.interval.bytes", "index.interval.bytes"),
    _log("log.flush.interval.messages", "flush.messages"),
    _log("log.flush.interval.ms", "flush.ms"),
    _log("log.retention.bytes", "retention.bytes"),
    _log("log.retention.ms", "retention.ms"),
    _log("message.max.bytes", "max.message.bytes"),
    _log("log.cleaner.delete.retention.ms", "delete.retention.ms"),
    _log("log.cleaner.min.compaction.lag.ms", "min.compaction.lag.ms", "0"),
    _log("log.cleaner.max.compaction.lag.ms", "max.compaction.lag.ms", INT64_MAX),
    _log("log.segment.delete.delay.ms", "file.delete.delay.ms", "60000"),
    _log("log.cleaner.min.cleanable.ratio", "min.cleanable.dirty.ratio", "0.5"),
    _log("log.cleanup.policy", "cleanup.policy"),
    _log("unclean.leader.election.enable", "unclean.leader.election.enable", "false"),
    _log("min.insync.replicas", "min.insync.replicas", "1"),
    _log("compression.type", "compression.type", "producer"),
    _log("compression.gzip.level", "compression.gzip.level", "-1"),
    _log("compression.lz4.level", "compression.lz4.level", "9"),
    _log("compression.zstd.level", "compression.zstd.level", "3"),
    _log("log.preallocate", "preallocate", "false"),
    _log("log.message.timestamp.type", "message.timestamp.type"),
    _log("log.message.timestamp.before.max.ms", "message.timestamp.before.max.ms", INT64_MAX),
    _log("log.message.timestamp.after.max.ms", "message.timestamp.after.max.ms", INT64_MAX),
    _log("log.message.timestamp.difference.max.ms", "message.timestamp.difference.max.ms",
         INT64_MAX),
    _log("log.message.downconversion.enable", "message.downconversion.enable", "true"),
    _log("log.local.retention.ms", "local.retention.ms", "-2"),
    _log("log.local.retention.bytes", "local.retention.bytes", "-2"),
]
BROKER_CONFIGS: dict[str, BrokerConfig] = {c.name: c for c in _BROKER}
# Topic config -> the broker config that is its default.
TOPIC_SYNONYMS: dict[str, str] = {c.topic: c.name for c in _BROKER if c.topic}

# Group configs (Kafka 3.9 GroupConfig): name -> (broker default, broker min, broker max).
GROUP_CONFIGS: dict[str, tuple[str, str, str]] = {
    "consumer.session.timeout.ms": ("group.consumer.session.timeout.ms",
                                    "group.consumer.min.session.timeout.ms",
                                    "group.consumer.max.session.timeout.ms"),
    "consumer.heartbeat.interval.ms": ("group.consumer.heartbeat.interval.ms",
                                       "group.consumer.min.heartbeat.interval.ms",
                                       "group.consumer.max.heartbeat.interval.ms"),
}
GROUP_DOCS = {
    "consumer.session.timeout.ms": "Session timeout of this group's consumer-protocol members.",
    "consumer.heartbeat.interval.ms": "Heartbeat interval of this group's consumer-protocol "
                                      "members.",
}
