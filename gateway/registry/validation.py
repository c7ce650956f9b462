"""Server-side schema validation of produced records (Confluent's broker-side validation).

A topic opts in with ``confluent.value.schema.validation=true`` (and/or the ``key`` variant).
Every record of such a topic must then carry Confluent's wire format — magic byte 0 and a
4-byte big-endian schema id — with an id the registry knows; with the default
TopicNameStrategy the id must also be registered under the topic's subject (``<topic>-value``
or ``<topic>-key``). A batch with one bad record is rejected whole (INVALID_RECORD), naming
the record, so nothing of it is stored. Null keys and values (tombstones) pass.

:func:`check_records` is sans-IO; :class:`TopicSettings` caches each topic's settings for a
couple of seconds so the produce path asks the broker at most that often.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import trio

from gateway.broker_client import BrokerClient, BrokerFailed, BrokerUnavailable
from kelp import recordbatch, records
from kelp.rpc.broker import v1 as pb

KEY_CONFIG = "confluent.key.schema.validation"
VALUE_CONFIG = "confluent.value.schema.validation"
KEY_STRATEGY = "confluent.key.subject.name.strategy"
VALUE_STRATEGY = "confluent.value.subject.name.strategy"
CONFIG_NAMES = (KEY_CONFIG, VALUE_CONFIG, KEY_STRATEGY, VALUE_STRATEGY)
TOPIC_NAME_STRATEGY = "io.confluent.kafka.serializers.subject.TopicNameStrategy"
SETTINGS_TTL_S = 2.0
MAX_ERRORS = 20  # per batch, in the response; the first one is what people read


@dataclass(frozen=True)
class Settings:
    validate_key: bool = False
    validate_value: bool = False
    key_strategy: str = TOPIC_NAME_STRATEGY
    value_strategy: str = TOPIC_NAME_STRATEGY

    @property
    def enabled(self) -> bool:
        return self.validate_key or self.validate_value


NO_VALIDATION = Settings()

# Does the registry know this id, and (when a subject is given) under that subject?
IdCheck = Callable[[int, str | None], bool]


def check_records(topic: str, data: bytes, settings: Settings,
                  known: IdCheck) -> list[tuple[int, str]]:
    """(record index within its batch, reason) for every record that fails validation."""
    failures: list[tuple[int, str]] = []
    try:
        for position, header in recordbatch.iter_batches(data):
            batch = memoryview(data)[position:position + header.size]
            for index, record in enumerate(records.iter_records(batch)):
                for part, payload, on, strategy in (
                        ("key", record.key, settings.validate_key, settings.key_strategy),
                        ("value", record.value, settings.validate_value,
                         settings.value_strategy)):
                    reason = _check(topic, part, payload, strategy, known) if on else None
                    if reason is not None and len(failures) < MAX_ERRORS:
                        failures.append((index, reason))
    except recordbatch.CorruptBatch as exc:
        failures.append((0, f"cannot read the batch to validate it: {exc}"))
    return failures


def _check(topic: str, part: str, payload: bytes | None, strategy: str,
           known: IdCheck) -> str | None:
    if payload is None:
        return None
    if len(payload) < 5 or payload[0] != 0:
        return (f"{part} does not start with the schema registry wire format (magic byte 0 "
                "and a 4-byte schema id)")
    (schema_id,) = struct.unpack_from(">i", payload, 1)
    subject = f"{topic}-{part}" if strategy == TOPIC_NAME_STRATEGY else None
    if known(schema_id, subject):
        return None
    if subject is not None and known(schema_id, None):
        return f"{part} schema id {schema_id} is not registered under subject {subject!r}"
    return f"{part} schema id {schema_id} is unknown to the schema registry"


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


MAX_CACHED_TOPICS = 10_000


class TopicSettings:
    """Each topic's validation settings, asked of the broker at most every few seconds."""

    def __init__(self, broker: BrokerClient, ttl: float = SETTINGS_TTL_S) -> None:
        self.broker = broker
        self.ttl = ttl
        self._cached: dict[str, tuple[float, Settings]] = {}

    def get(self, topic: str) -> Settings | None:
        """The cached settings, or None when they must be fetched first."""
        entry = self._cached.get(topic)
        if entry is None or trio.current_time() - entry[0] > self.ttl:
            return None
        return entry[1]

    def _bound(self, now: float) -> None:
        """Keep at most ``MAX_CACHED_TOPICS`` names: produce requests may name any number of
        topics (most of them made up, by a hostile client); expired ones go first, then the
        oldest (insertion order)."""
        if len(self._cached) < MAX_CACHED_TOPICS:
            return
        for name in [n for n, (at, _s) in self._cached.items() if now - at > self.ttl]:
            del self._cached[name]
        while len(self._cached) >= MAX_CACHED_TOPICS // 2:
            del self._cached[next(iter(self._cached))]

    def forget(self, topic: str) -> None:
        """Called when this gateway alters a topic's configs: the next produce asks again."""
        self._cached.pop(topic, None)

    async def refresh(self, topics: list[str]) -> None:
        """Fetch settings for ``topics``. If the broker cannot say, the old setting stays;
        a topic never seen stays unknown and the produce fails retriably."""
        request = pb.DescribeConfigsRequest(resources=[
            pb.DescribeConfigsRequestResource(type=2, name=t, keys=list(CONFIG_NAMES))
            for t in topics])
        try:
            reply = await self.broker.call("DescribeConfigs", request, pb.DescribeConfigsReply)
        except (BrokerUnavailable, BrokerFailed):
            return
        now = trio.current_time()
        self._bound(now)
        for resource in reply.resources:
            if resource.error_code:
                # Unknown topic: nothing to validate yet (auto-creation comes with defaults).
                self._cached[resource.name] = (now, NO_VALIDATION)
                continue
            values = {e.name: e.value for e in resource.entries}
            self._cached[resource.name] = (now, Settings(
                validate_key=_true(values.get(KEY_CONFIG)),
                validate_value=_true(values.get(VALUE_CONFIG)),
                key_strategy=values.get(KEY_STRATEGY) or TOPIC_NAME_STRATEGY,
                value_strategy=values.get(VALUE_STRATEGY) or TOPIC_NAME_STRATEGY))
