"""DescribeConfigs and AlterConfigs for every resource Kafka has configs for: topics (2),
the broker and the cluster-wide default (4), the broker's loggers (8) and groups (32); and
Describe/AlterClientQuotas, whose quotas are kept with the dynamic configs.

Part of ``BrokerService`` (see ``broker.service``): the values and their rules are in
``broker.broker_configs``; here they are applied and made durable. A dynamic broker config
that is a topic default reaches every topic without an override at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from kio.schema.errors import ErrorCode

from broker import broker_configs, quotas
from broker.broker_configs import BrokerConfigs, ConfigError, Entry, Op
from broker.configs import Defaults
from broker.topics import TopicError, TopicRegistry
from kelp.rpc.broker import v1 as pb

if TYPE_CHECKING:
    from broker.cluster_topics import ClusterTopics

TOPIC_RESOURCE, BROKER_RESOURCE, LOGGER_RESOURCE, GROUP_RESOURCE = 2, 4, 8, 32


def defaults_of(configs: BrokerConfigs) -> Defaults:
    """The topic defaults the partition logs are built from."""
    return Defaults(configs.topic_defaults(),
                    configs.int_value("producer.id.expiration.ms"))


def _entry(entry: Entry) -> pb.ConfigEntry:
    return pb.ConfigEntry(
        name=entry.name, value=entry.value, source=entry.source, read_only=entry.read_only,
        config_type=entry.type, documentation=entry.doc,
        synonyms=[pb.ConfigSynonym(name=n, value=v, source=s) for n, v, s in entry.synonyms])


class ConfigCalls:
    registry: TopicRegistry
    broker_configs: BrokerConfigs
    _config_lock: trio.Lock
    cluster_topics: ClusterTopics | None  # in a cluster, topic configs live in etcd

    async def describe_configs(self, request: pb.DescribeConfigsRequest
                               ) -> pb.DescribeConfigsReply:
        resources = []
        for wanted in request.resources:
            out = pb.DescribeConfigsReplyResource(type=wanted.type, name=wanted.name)
            resources.append(out)
            try:
                entries = self._describe(wanted.type, wanted.name)
            except (ConfigError, TopicError) as exc:
                out.error_code, out.error_message = exc.code, str(exc)
                continue
            keys = set(wanted.keys)
            out.entries = [_entry(e) for e in entries if not keys or e.name in keys]
        return pb.DescribeConfigsReply(resources=resources)

    def _describe(self, kind: int, name: str) -> list[Entry]:
        if kind == TOPIC_RESOURCE:
            topic = self.registry.get(name)
            if topic is None:
                raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
            return self.broker_configs.describe_topic(topic.configs)
        if kind == BROKER_RESOURCE:
            return self.broker_configs.describe_broker(name)
        if kind == LOGGER_RESOURCE:
            broker_configs.check_broker_name(name or "0")
            return broker_configs.describe_loggers()
        if kind == GROUP_RESOURCE:
            return self.broker_configs.describe_group(name)
        raise ConfigError(ErrorCode.invalid_request, f"unsupported config resource type {kind}")

    async def alter_configs(self, request: pb.AlterConfigsRequest) -> pb.AlterConfigsReply:
        resources = []
        for wanted in request.resources:
            out = pb.AlterConfigsReplyResource(type=wanted.type, name=wanted.name)
            resources.append(out)
            ops = [Op(o.name, o.value, o.op) for o in wanted.ops]
            try:
                # One alteration at a time: each plans from the state the last one left.
                async with self._config_lock:
                    await self._alter(wanted.type, wanted.name, ops, wanted.replace_all,
                                      request.validate_only)
            except (ConfigError, TopicError) as exc:
                out.error_code, out.error_message = exc.code, str(exc)
        return pb.AlterConfigsReply(resources=resources)

    async def _alter(self, kind: int, name: str, ops: list[Op], replace_all: bool,
                     validate_only: bool) -> None:
        configs = self.broker_configs
        if kind == TOPIC_RESOURCE:
            topic = self.registry.get(name)
            if topic is None:
                raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
            planned = {} if replace_all else dict(topic.configs)
            broker_configs.apply_ops(planned, ops, self.registry.defaults.values)
            if self.cluster_topics is not None:  # in etcd, for every broker
                await self.cluster_topics.alter_configs(name, planned,
                                                        validate_only=validate_only)
            else:
                await self.registry.alter_configs(name, planned, validate_only=validate_only)
        elif kind == BROKER_RESOURCE:
            planned = configs.plan_broker(name, ops, replace_all)
            if not validate_only:
                before = dict(configs.per_broker), dict(configs.cluster_default)
                configs.commit_broker(name, planned)
                await self._save_configs(lambda: _restore_broker(configs, *before))
                self.registry.reconfigure(defaults_of(configs))
        elif kind == LOGGER_RESOURCE:
            broker_configs.check_broker_name(name or "0")
            broker_configs.alter_loggers(ops, validate_only)
        elif kind == GROUP_RESOURCE:
            planned = configs.plan_group(name, ops, replace_all)
            if not validate_only:
                previous = configs.groups.get(name)
                configs.commit_group(name, planned)
                await self._save_configs(lambda: configs.commit_group(name, previous or {}))
        else:
            raise ConfigError(ErrorCode.invalid_request,
                              f"unsupported config resource type {kind}")

    async def _save_configs(self, undo) -> None:  # type: ignore[no-untyped-def]
        """Make the change durable; if that fails, memory goes back to what the disk has.

        Shielded like the topic catalogue: a caller that gives up must not leave memory and
        disk disagreeing about a change already made in memory."""
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self.broker_configs.save)
            except BaseException:
                undo()
                raise


def _restore_broker(configs: BrokerConfigs, per_broker: dict[str, str],
                    cluster_default: dict[str, str]) -> None:
    configs.per_broker, configs.cluster_default = per_broker, cluster_default


def _parts(entity: quotas.Entity) -> list[pb.QuotaEntityPart]:
    return [pb.QuotaEntityPart(type=kind, name=name) for kind, name in entity]


MAX_QUOTA_WAIT_MS = 30_000  # the longest a DescribeClientQuotas long poll is held


class QuotaCalls:
    """DescribeClientQuotas and AlterClientQuotas: the quotas live with the dynamic configs
    (saved through ``ConfigCalls._save_configs``, the other half of the same service)."""

    broker_configs: BrokerConfigs
    _config_lock: trio.Lock
    _quotas_version: int
    _quotas_changed: trio.Event

    async def describe_client_quotas(self, request: pb.DescribeClientQuotasRequest
                                     ) -> pb.DescribeClientQuotasReply:
        filters = [quotas.Filter(f.entity_type, f.match_type, f.match)
                   for f in request.components]
        try:
            quotas.check_filters(filters)
        except quotas.QuotaError as exc:
            return pb.DescribeClientQuotasReply(error_code=exc.code, error_message=str(exc))
        if request.known_version == self._quotas_version and request.wait_ms:
            with trio.move_on_after(min(request.wait_ms, MAX_QUOTA_WAIT_MS) / 1000):
                await self._quotas_changed.wait()
        return pb.DescribeClientQuotasReply(version=self._quotas_version, entries=[
            pb.QuotaEntry(entity=_parts(entity), values=[
                pb.QuotaValue(key=k, value=v) for k, v in sorted(values.items())])
            for entity, values in self.broker_configs.quotas.items()
            if quotas.matches(entity, filters, request.strict)])

    async def alter_client_quotas(self, request: pb.AlterClientQuotasRequest
                                  ) -> pb.AlterClientQuotasReply:
        results = []
        store = self.broker_configs.quotas
        for entry in request.entries:
            out = pb.AlterClientQuotasReplyResult(entity=list(entry.entity))
            results.append(out)
            try:
                entity = quotas.entity_of((p.type, p.name) for p in entry.entity)
                ops = [quotas.QuotaOp(o.key, o.value, o.remove) for o in entry.ops]
                async with self._config_lock:
                    values = quotas.alter(store, entity, ops)
                    if request.validate_only:
                        continue
                    previous = store.get(entity)
                    if values:
                        store[entity] = values
                    else:
                        store.pop(entity, None)
                    await self._save_configs(
                        lambda e=entity, p=previous: _restore_quota(store, e, p))
            except quotas.QuotaError as exc:
                out.error_code, out.error_message = exc.code, str(exc)
        if not request.validate_only:  # answer the long polls (a failed change is harmless)
            self._quotas_version += 1
            self._quotas_changed.set()
            self._quotas_changed = trio.Event()
        return pb.AlterClientQuotasReply(results=results)


def _restore_quota(store: dict[quotas.Entity, dict[str, float]], entity: quotas.Entity,
                   previous: dict[str, float] | None) -> None:
    if previous is None:
        store.pop(entity, None)
    else:
        store[entity] = previous
