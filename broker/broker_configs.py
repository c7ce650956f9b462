"""Broker, group and logger configs: their values, where each value comes from, and the
dynamic ones altered at run time (sans-IO but for one durable file).

A broker config's value is, in Kafka's order of precedence: set dynamically for this broker
(resource BROKER "0"), set dynamically as the cluster-wide default (BROKER ""), given at start
(``--config name=value``), or kelp's default. Broker configs that are topic-config synonyms
(``log.retention.ms`` for ``retention.ms``) are the defaults of every topic without an
override, so altering one changes those topics at once. Dynamic values and group configs are
kept in ``<data>/broker-configs.json``, replaced atomically, so they survive a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kio.schema.errors import ErrorCode

from broker import quotas
from broker.config_table import (
    BROKER_CONFIGS,
    GROUP_CONFIGS,
    GROUP_DOCS,
    INTEGER_MAX,
    TOPIC_DOCS,
    TOPIC_SYNONYMS,
    ConfigType,
    Source,
    topic_type,
)
from broker.configs import KNOWN as TOPIC_CONFIGS
from broker.configs import InvalidConfig, list_items
from broker.configs import _check as check_topic_value
from kelp.files import replace_file

log = logging.getLogger("kelp.broker.configs")

THIS_BROKER, CLUSTER_DEFAULT = "0", ""
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = range(4)
MAX_GROUP_CONFIG_SETS = 100_000  # group configs are durable state: bounded like everything
_KAFKA_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
                 "WARN": logging.WARNING, "ERROR": logging.ERROR, "FATAL": logging.CRITICAL,
                 "OFF": logging.CRITICAL + 10}


class ConfigError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Op:
    name: str
    value: str | None
    op: int


@dataclass(frozen=True)
class Entry:
    name: str
    value: str | None
    source: Source
    read_only: bool
    type: ConfigType
    doc: str
    synonyms: tuple[tuple[str, str | None, Source], ...] = ()


def apply_ops(current: dict[str, str], ops: Iterable[Op], defaults: dict[str, str]) -> None:
    """IncrementalAlterConfigs operations on ``current``; list values are comma-separated."""
    for op in ops:
        if op.op == OP_SET:
            if op.value is None:
                raise ConfigError(ErrorCode.invalid_config, f"{op.name}: SET needs a value")
            current[op.name] = op.value
        elif op.op == OP_DELETE:
            current.pop(op.name, None)
        elif op.op in (OP_APPEND, OP_SUBTRACT):
            items = list_items(current.get(op.name, defaults.get(op.name) or ""))
            change = list_items(op.value or "")
            if op.op == OP_APPEND:
                items += [item for item in change if item not in items]
            else:
                items = [item for item in items if item not in change]
            current[op.name] = ",".join(items)  # may be "": Kafka allows an empty list
        else:
            raise ConfigError(ErrorCode.invalid_request, f"unknown config operation {op.op}")


def check_broker_value(name: str, value: str) -> None:
    config = BROKER_CONFIGS.get(name)
    if config is None:
        raise InvalidConfig(f"unknown broker config {name!r}")
    if config.topic is not None:
        check_topic_value(config.topic, value)
    elif config.type in (ConfigType.INT, ConfigType.LONG, ConfigType.SHORT):
        try:
            number = int(value)
        except ValueError:
            raise InvalidConfig(f"{name} must be an integer, got {value!r}") from None
        highest = INTEGER_MAX[config.type.name]
        if not config.minimum <= number <= highest:
            raise InvalidConfig(f"{name} must be in [{config.minimum}, {highest}], "
                                f"got {number}")
    elif config.type is ConfigType.BOOLEAN and value.lower() not in ("true", "false"):
        raise InvalidConfig(f"{name} must be true or false, got {value!r}")


def check_broker_name(resource_name: str) -> None:
    """A BROKER (or BROKER_LOGGER) resource names this broker, or "" for the cluster."""
    if resource_name not in (THIS_BROKER, CLUSTER_DEFAULT):
        raise ConfigError(ErrorCode.invalid_request,
                          f"Unexpected broker id, expected {THIS_BROKER} or empty string, "
                          f"but received {resource_name}")


@dataclass
class BrokerConfigs:
    path: Path | None  # None: nothing is kept (tests that build a broker in memory)
    static: dict[str, str] = field(default_factory=dict)  # broker configs given at start
    topic_static: dict[str, str] = field(default_factory=dict)  # topic defaults w/o synonym
    per_broker: dict[str, str] = field(default_factory=dict)
    cluster_default: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, str]] = field(default_factory=dict)
    # Client quotas (``broker.quotas``): kept with the other dynamic configs, as in Kafka.
    quotas: dict[quotas.Entity, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, pairs: Sequence[str], path: Path | None = None,
                   **given: str) -> BrokerConfigs:
        """``--config name=value`` pairs (broker names, or topic names meaning their
        broker-wide default) and values the broker's own flags set (``given``)."""
        configs = cls(path)
        for pair in pairs:
            name, sep, value = pair.partition("=")
            name, value = name.strip(), value.strip()
            if not sep:
                raise InvalidConfig(f"--config expects name=value, got {pair!r}")
            if name in TOPIC_SYNONYMS:
                name = TOPIC_SYNONYMS[name]
            elif name in TOPIC_CONFIGS:
                check_topic_value(name, value)
                configs.topic_static[name] = value
                continue
            check_broker_value(name, value)
            configs.static[name] = value
        for name, value in given.items():
            check_broker_value(name, value)
            configs.static.setdefault(name, value)
        return configs

    # -- durable state ------------------------------------------------------------------

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        state = json.loads(self.path.read_text())  # a corrupt file stops the broker, loudly
        self.per_broker = dict(state.get("broker", {}))
        self.cluster_default = dict(state.get("default", {}))
        self.groups = {g: dict(c) for g, c in state.get("groups", {}).items()}
        self.quotas = quotas.from_json(state.get("quotas", []))

    def save(self) -> None:
        """Write the dynamic state durably (call it off the event loop)."""
        if self.path is not None:
            replace_file(self.path, json.dumps({
                "broker": self.per_broker, "default": self.cluster_default,
                "groups": self.groups, "quotas": quotas.to_json(self.quotas)},
                indent=1, sort_keys=True), durable=True)

    # -- values ---------------------------------------------------------------------------

    def levels(self, name: str) -> list[tuple[str | None, Source]]:
        """Every value ``name`` has, most to least precedent."""
        found: list[tuple[str | None, Source]] = []
        for values, source in ((self.per_broker, Source.DYNAMIC_BROKER),
                               (self.cluster_default, Source.DYNAMIC_DEFAULT_BROKER),
                               (self.static, Source.STATIC_BROKER)):
            if name in values:
                found.append((values[name], source))
        config = BROKER_CONFIGS.get(name)
        if config is not None and config.default is not None:
            found.append((config.default, Source.DEFAULT))
        return found

    def value(self, name: str) -> str | None:
        levels = self.levels(name)
        return levels[0][0] if levels else None

    def int_value(self, name: str) -> int:
        value = self.value(name)
        assert value is not None, name
        return int(value)

    def topic_defaults(self) -> dict[str, str]:
        """Every topic config's broker-wide default (what a topic without an override has)."""
        defaults = dict(self.topic_static)
        for topic, broker in TOPIC_SYNONYMS.items():
            value = self.value(broker)
            if value is not None:
                defaults[topic] = value
        return defaults

    # -- describe -------------------------------------------------------------------------

    def describe_broker(self, resource_name: str) -> list[Entry]:
        check_broker_name(resource_name)
        if resource_name == CLUSTER_DEFAULT:  # Kafka shows only the dynamic defaults here
            return [self._broker_entry(name, [(value, Source.DYNAMIC_DEFAULT_BROKER)])
                    for name, value in sorted(self.cluster_default.items())]
        return [self._broker_entry(name, self.levels(name)) for name in sorted(BROKER_CONFIGS)]

    def _broker_entry(self, name: str, levels: list[tuple[str | None, Source]]) -> Entry:
        config = BROKER_CONFIGS[name]
        value, source = levels[0] if levels else (None, Source.DEFAULT)
        return Entry(name, value, source, not config.dynamic, config.type, config.doc,
                     tuple((name, v, s) for v, s in levels))

    def describe_topic(self, overrides: dict[str, str]) -> list[Entry]:
        entries = []
        for name in sorted(TOPIC_CONFIGS):
            config_type, doc = topic_type(name), TOPIC_DOCS.get(name, (None, ""))[1]
            synonyms: list[tuple[str, str | None, Source]] = []
            if name in overrides:
                synonyms.append((name, overrides[name], Source.TOPIC))
            broker = TOPIC_SYNONYMS.get(name)
            if broker is not None:
                synonyms += [(broker, v, s) for v, s in self.levels(broker)]
            elif name in self.topic_static:
                synonyms.append((name, self.topic_static[name], Source.STATIC_BROKER))
            if not synonyms:
                continue  # no value anywhere (e.g. flush.ms: kelp syncs before acks)
            _, value, source = synonyms[0]
            entries.append(Entry(name, value, source, False, config_type, doc,
                                 tuple(synonyms)))
        return entries

    def describe_group(self, group_id: str) -> list[Entry]:
        overrides = self.groups.get(group_id, {})
        entries = []
        for name, (default_name, _low, _high) in GROUP_CONFIGS.items():
            levels: list[tuple[str | None, Source]] = []
            if name in overrides:
                levels.append((overrides[name], Source.GROUP))
            levels.append((self.value(default_name), Source.DEFAULT))
            value, source = levels[0]
            entries.append(Entry(name, value, source, False, ConfigType.INT, GROUP_DOCS[name],
                                 tuple((name, v, s) for v, s in levels)))
        return entries

    def group_value(self, group_id: str, name: str) -> int:
        """A group config's value for ``group_id`` (its override, else the broker's)."""
        override = self.groups.get(group_id, {}).get(name)
        return int(override) if override is not None else self.int_value(
            GROUP_CONFIGS[name][0])

    # -- alter ----------------------------------------------------------------------------

    def plan_broker(self, resource_name: str, ops: Sequence[Op],
                    replace_all: bool) -> dict[str, str]:
        """The new dynamic values of a BROKER resource, validated; nothing changes yet."""
        check_broker_name(resource_name)
        current = self.per_broker if resource_name == THIS_BROKER else self.cluster_default
        planned = {} if replace_all else dict(current)
        apply_ops(planned, ops, {n: self.value(n) or "" for n in (o.name for o in ops)})
        fixed = sorted(n for n in planned if n in BROKER_CONFIGS
                       and not BROKER_CONFIGS[n].dynamic)
        if fixed:
            raise ConfigError(ErrorCode.invalid_config,
                              f"Cannot update these configs dynamically: {fixed}")
        try:
            for name, value in planned.items():
                check_broker_value(name, value)
        except InvalidConfig as exc:
            raise ConfigError(ErrorCode.invalid_config, str(exc)) from None
        return planned

    def commit_broker(self, resource_name: str, planned: dict[str, str]) -> None:
        if resource_name == THIS_BROKER:
            self.per_broker = planned
        else:
            self.cluster_default = planned

    def plan_group(self, group_id: str, ops: Sequence[Op], replace_all: bool) -> dict[str, str]:
        if not group_id:
            raise ConfigError(ErrorCode.invalid_request, "a group config needs a group id")
        if group_id not in self.groups and len(self.groups) >= MAX_GROUP_CONFIG_SETS:
            raise ConfigError(ErrorCode.policy_violation,
                              f"more than {MAX_GROUP_CONFIG_SETS} groups have configs")
        planned = {} if replace_all else dict(self.groups.get(group_id, {}))
        apply_ops(planned, ops, {})
        for name, value in planned.items():
            if name not in GROUP_CONFIGS:
                raise ConfigError(ErrorCode.invalid_config, f"unknown group config {name!r}")
            _default, low_name, high_name = GROUP_CONFIGS[name]
            try:
                number = int(value)
            except ValueError:
                raise ConfigError(ErrorCode.invalid_config,
                                  f"{name} must be an integer, got {value!r}") from None
            low, high = self.int_value(low_name), self.int_value(high_name)
            if not low <= number <= high:
                raise ConfigError(ErrorCode.invalid_config,
                                  f"{name} must be between {low_name} ({low}) and "
                                  f"{high_name} ({high}), got {number}")
        return planned

    def commit_group(self, group_id: str, planned: dict[str, str]) -> None:
        if planned:
            self.groups[group_id] = planned
        else:
            self.groups.pop(group_id, None)



# -- broker loggers (BROKER_LOGGER): Python's loggers under Kafka's level names ------------

def describe_loggers() -> list[Entry]:
    names = ["root", *sorted(n for n in logging.root.manager.loggerDict if n.startswith("kelp"))]
    return [Entry(name, _kafka_level(logging.getLogger(None if name == "root" else name)),
                  Source.DYNAMIC_BROKER_LOGGER, False, ConfigType.STRING, "")
            for name in names]


def _kafka_level(logger: logging.Logger) -> str:
    level = logger.getEffectiveLevel()
    for name, number in _KAFKA_LEVELS.items():
        if number >= level and name != "TRACE":
            return name
    return "OFF"


def alter_loggers(ops: Sequence[Op], validate_only: bool) -> None:
    """SET a logger's level or DELETE it back to its parent's; not durable, as in Kafka."""
    changes = []
    for op in ops:
        if op.name != "root" and op.name not in logging.root.manager.loggerDict:
            raise ConfigError(ErrorCode.invalid_config, f"Logger {op.name} does not exist!")
        if op.op == OP_SET:
            level = _KAFKA_LEVELS.get((op.value or "").upper())
            if level is None:
                raise ConfigError(ErrorCode.invalid_config,
                                  f"Cannot set the log level of {op.name} to {op.value}: "
                                  f"valid levels are {sorted(_KAFKA_LEVELS)}")
        elif op.op == OP_DELETE:
            if op.name == "root":
                raise ConfigError(ErrorCode.invalid_request,
                                  "Removing the log level of the root logger is not allowed")
            level = logging.NOTSET
        else:
            raise ConfigError(ErrorCode.invalid_request,
                              "only SET and DELETE apply to broker loggers")
        changes.append((op.name, level))
    if not validate_only:
        for name, level in changes:
            logging.getLogger(None if name == "root" else name).setLevel(level)
