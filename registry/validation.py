"""Server-side schema validation of produced records (Confluent's broker-side validation).

A topic opts in with ``confluent.value.schema.validation=true`` (and/or the ``key`` variant).
Every record of such a topic must then carry Confluent's wire format — magic byte 0 and a
4-byte big-endian schema id — with an id the registry knows; with the default
TopicNameStrategy the id must also be registered under the topic's subject (``<topic>-value``
or ``<topic>-key``). A batch with one bad record is rejected whole (INVALID_RECORD), naming
the record, so nothing of it is stored. Null keys and values (tombstones) pass.

:func:`check_records` is sans-IO, and so is :func:`settings_from_configs`; the gateway asks the
broker for a topic's configs (``gateway/validation_settings.py``) and caches what they say.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kelp import recordbatch, records

KEY_CONFIG = "confluent.key.schema.validation"
VALUE_CONFIG = "confluent.value.schema.validation"
KEY_STRATEGY = "confluent.key.subject.name.strategy"
VALUE_STRATEGY = "confluent.value.subject.name.strategy"
CONFIG_NAMES = (KEY_CONFIG, VALUE_CONFIG, KEY_STRATEGY, VALUE_STRATEGY)
TOPIC_NAME_STRATEGY = "io.confluent.kafka.serializers.subject.TopicNameStrategy"
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


def settings_from_configs(values: Mapping[str, str]) -> Settings:
    """A topic's validation settings from its configs (only ``CONFIG_NAMES`` matter)."""
    return Settings(
        validate_key=_true(values.get(KEY_CONFIG)),
        validate_value=_true(values.get(VALUE_CONFIG)),
        key_strategy=values.get(KEY_STRATEGY) or TOPIC_NAME_STRATEGY,
        value_strategy=values.get(VALUE_STRATEGY) or TOPIC_NAME_STRATEGY)
