"""Topic configs: Kafka's names, kelp's defaults, validation, and the LogConfig they produce.

A topic stores only the configs set on it; everything else comes from the broker's defaults
(``--config name=value`` on the command line) and then from kelp's built-in defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.log import LogConfig

# The integer configs kelp acts on, and the LogConfig field each sets.
_LOG_INT = {
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "index.interval.bytes": "index_interval_bytes",
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "flush.ms": "flush_ms",
    "flush.messages": "flush_messages",
    "max.message.bytes": "max_message_bytes",
}
INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
# Every topic config Kafka defines (its LogConfig), plus Confluent's schema-validation ones,
# with Kafka's type and range. Names kelp does not act on (min.insync.replicas,
# compression.type, ...) are still checked, stored and described, as a client expects; a name
# in none of these tables is refused with INVALID_CONFIG, as Kafka refuses it.
_INTEGERS: dict[str, tuple[int, int]] = {
    "segment.bytes": (14, INT32[1]),
    "segment.ms": (1, INT64[1]),
    "segment.jitter.ms": (0, INT64[1]),
    "segment.index.bytes": (4, INT32[1]),
    "flush.messages": (1, INT64[1]),
    "flush.ms": (0, INT64[1]),
    "retention.bytes": INT64,
    "retention.ms": (-1, INT64[1]),
    "max.message.bytes": (0, INT32[1]),
    "index.interval.bytes": (0, INT32[1]),
    "delete.retention.ms": (0, INT64[1]),
    "min.compaction.lag.ms": (0, INT64[1]),
    "max.compaction.lag.ms": (1, INT64[1]),
    "file.delete.delay.ms": (0, INT64[1]),
    "min.insync.replicas": (1, INT32[1]),
    "compression.gzip.level": (-1, 9),
    "compression.lz4.level": (1, 17),
    "compression.zstd.level": (-131072, 22),
    "message.timestamp.difference.max.ms": (0, INT64[1]),
    "message.timestamp.before.max.ms": (0, INT64[1]),
    "message.timestamp.after.max.ms": (0, INT64[1]),
    "local.retention.ms": (-2, INT64[1]),
    "local.retention.bytes": (-2, INT64[1]),
}
_BOOLEANS = {"unclean.leader.election.enable", "preallocate", "message.downconversion.enable",
             "remote.storage.enable", "remote.log.copy.disable", "remote.log.delete.on.disable",
             # Schema validation happens in the gateway; the broker only stores the switch.
             "confluent.key.schema.validation", "confluent.value.schema.validation"}
_CHOICES = {
    "message.timestamp.type": {"CreateTime", "LogAppendTime"},
    "compression.type": {"uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"},
}
_LISTS = {"cleanup.policy": {"delete", "compact"}}
_FREE_TEXT = {"message.format.version", "leader.replication.throttled.replicas",
              "follower.replication.throttled.replicas",
              "confluent.key.subject.name.strategy", "confluent.value.subject.name.strategy"}
_DOUBLES = {"min.cleanable.dirty.ratio": (0.0, 1.0)}
KNOWN = (set(_INTEGERS) | _BOOLEANS | set(_CHOICES) | set(_LISTS) | _FREE_TEXT | set(_DOUBLES))
MAX_VALUE_LENGTH = 4096

BUILTIN_DEFAULTS = {
    "cleanup.policy": "delete",
    "message.timestamp.type": "CreateTime",
    "max.message.bytes": str(1024 * 1024 + 12),
    "delete.retention.ms": str(24 * 3600 * 1000),
    "retention.ms": str(LogConfig.retention_ms),
    "retention.bytes": str(LogConfig.retention_bytes),
    "segment.bytes": str(LogConfig.segment_bytes),
    "index.interval.bytes": str(LogConfig.index_interval_bytes),
}


class InvalidConfig(ValueError):
    pass


def list_items(value: str) -> list[str]:
    """The items of a LIST config: comma-separated, blanks ignored ("" is the empty list)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def validate(configs: dict[str, str]) -> dict[str, str]:
    """Check every name is a topic config and its value has the config's type and range."""
    for name, value in configs.items():
        _check(name, value)
    return configs


def _check(name: str, value: str | None) -> None:
    if name not in KNOWN:
        raise InvalidConfig(f"unknown topic config {name!r}")
    if value is None:
        raise InvalidConfig(f"{name} needs a value")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidConfig(f"{name}: value longer than {MAX_VALUE_LENGTH} characters")
    if name in _INTEGERS:
        low, high = _INTEGERS[name]
        try:
            number = int(value.strip())
        except ValueError:
            raise InvalidConfig(f"{name} must be an integer, got {value!r}") from None
        if not low <= number <= high:
            raise InvalidConfig(f"{name} must be in [{low}, {high}], got {number}")
    elif name in _DOUBLES:
        low_f, high_f = _DOUBLES[name]
        try:
            ratio = float(value)
        except ValueError:
            raise InvalidConfig(f"{name} must be a number, got {value!r}") from None
        if not low_f <= ratio <= high_f:
            raise InvalidConfig(f"{name} must be in [{low_f}, {high_f}], got {value}")
    elif name in _BOOLEANS:
        if value.strip().lower() not in ("true", "false"):
            raise InvalidConfig(f"{name} must be true or false, got {value!r}")
    elif name in _CHOICES:
        if value not in _CHOICES[name]:
            raise InvalidConfig(f"{name} must be one of {sorted(_CHOICES[name])}, got {value!r}")
    # An empty list is allowed, as Kafka allows it (SUBTRACT of the last value, SET "").
    elif name in _LISTS and not set(list_items(value)) <= _LISTS[name]:
        raise InvalidConfig(f"{name} must be a list of {sorted(_LISTS[name])}, got {value!r}")


@dataclass(frozen=True)
class Defaults:
    """The broker's defaults for every topic config (``--config`` flags over built-ins)."""

    values: dict[str, str]
    # Broker-wide, not a topic config (Kafka's producer.id.expiration.ms).
    producer_id_expiration_ms: int = LogConfig.producer_id_expiration_ms

    @classmethod
    def from_flags(cls, pairs: list[str], *,
                   producer_id_expiration_ms: int = LogConfig.producer_id_expiration_ms
                   ) -> Defaults:
        values = dict(BUILTIN_DEFAULTS)
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep:
                raise InvalidConfig(f"--config expects name=value, got {pair!r}")
            values[name.strip()] = value.strip()
        validate(values)
        return cls(values, producer_id_expiration_ms)

    def effective(self, topic_configs: dict[str, str]) -> dict[str, str]:
        return {**self.values, **topic_configs}

    def log_config(self, topic_configs: dict[str, str]) -> LogConfig:
        merged = self.effective(topic_configs)
        fields: dict[str, int | bool] = {attr: int(merged[name])
                                         for name, attr in _LOG_INT.items()
                                         if name in merged}
        policy = list_items(merged.get("cleanup.policy", "delete"))
        fields["compacted"] = "compact" in policy
        fields["delete_by_retention"] = "delete" in policy
        fields["delete_retention_ms"] = int(merged.get("delete.retention.ms", 86_400_000))
        fields["log_append_time"] = merged.get("message.timestamp.type") == "LogAppendTime"
        fields["producer_id_expiration_ms"] = self.producer_id_expiration_ms
        return LogConfig(**fields)  # type: ignore[arg-type]
