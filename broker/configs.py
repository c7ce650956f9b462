"""Topic configs: Kafka's names, kelp's defaults, validation, and the LogConfig they produce.

A topic stores only the configs set on it; everything else comes from the broker's defaults
(``--config name=value`` on the command line) and then from kelp's built-in defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.log import LogConfig

_LOG_INT = {
    "segment.bytes": ("segment_bytes", 14),
    "segment.ms": ("segment_ms", 1),
    "index.interval.bytes": ("index_interval_bytes", 0),
    "retention.ms": ("retention_ms", -1),
    "retention.bytes": ("retention_bytes", -1),
    "flush.ms": ("flush_ms", 0),
    "flush.messages": ("flush_messages", 1),
    "max.message.bytes": ("max_message_bytes", 0),
}
_CHOICES = {
    "cleanup.policy": {"delete", "compact", "compact,delete", "delete,compact"},
    "message.timestamp.type": {"CreateTime", "LogAppendTime"},
    # Schema validation happens in the gateway; the broker only stores the switch.
    "confluent.key.schema.validation": {"true", "false"},
    "confluent.value.schema.validation": {"true", "false"},
}
_OTHER_INT = {"delete.retention.ms": 0, "min.compaction.lag.ms": 0,
              "min.insync.replicas": 1}
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


def validate(configs: dict[str, str]) -> dict[str, str]:
    """Check known names' values; unknown names pass through (clients set many)."""
    for name, value in configs.items():
        minimum = _LOG_INT.get(name, (None, None))[1]
        if minimum is None:
            minimum = _OTHER_INT.get(name)
        if minimum is not None:
            try:
                number = int(value)
            except ValueError:
                raise InvalidConfig(f"{name} must be an integer, got {value!r}") from None
            if number < minimum:
                raise InvalidConfig(f"{name} must be >= {minimum}, got {number}")
        elif name in _CHOICES and value not in _CHOICES[name]:
            raise InvalidConfig(f"{name} must be one of {sorted(_CHOICES[name])}, got {value!r}")
    return configs


@dataclass(frozen=True)
class Defaults:
    """The broker's defaults for every topic config (``--config`` flags over built-ins)."""

    values: dict[str, str]

    @classmethod
    def from_flags(cls, pairs: list[str]) -> Defaults:
        values = dict(BUILTIN_DEFAULTS)
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep:
                raise InvalidConfig(f"--config expects name=value, got {pair!r}")
            values[name.strip()] = value.strip()
        validate(values)
        return cls(values)

    def effective(self, topic_configs: dict[str, str]) -> dict[str, str]:
        return {**self.values, **topic_configs}

    def log_config(self, topic_configs: dict[str, str]) -> LogConfig:
        merged = self.effective(topic_configs)
        fields: dict[str, int | bool] = {attr: int(merged[name])
                                         for name, (attr, _) in _LOG_INT.items()
                                         if name in merged}
        policy = set(merged.get("cleanup.policy", "delete").split(","))
        fields["compacted"] = "compact" in policy
        fields["compact_and_delete"] = policy == {"compact", "delete"}
        fields["delete_retention_ms"] = int(merged.get("delete.retention.ms", 86_400_000))
        fields["log_append_time"] = merged.get("message.timestamp.type") == "LogAppendTime"
        return LogConfig(**fields)  # type: ignore[arg-type]
