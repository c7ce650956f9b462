"""Seeds for the (API, version) pairs no real client sent, from kio's encoder.

Every field gets a plausible value: the schema's default when it has one, a topic/group name
the run pre-creates for names, one element in every array (so each nested struct and its
lengths exist to be mutated), a valid record batch for record sets, and small sensible numbers
where a zero would be refused before anything interesting runs (a timeout, a partition count).
Produce v0-v2 have no kio schema: they are v3's layout without ``transactional_id``.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import uuid
from typing import Any

from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as HeaderV1
from kio.schema.request_header.v2.header import RequestHeader as HeaderV2
from kio.serial import entity_writer

from gateway.kafka import apis, messages, schema
from gateway.kafka.schema import Kind
from kelp.fuzz import batches
from kelp.fuzz.corpus import SYNTHESIZED, Seed

TOPIC = "fuzz-0"
GROUP = "fuzz-group"
CLIENT_ID = "kelp-fuzz-synth"
_WHEN = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
# Integer fields by name: values a broker acts on rather than refuses outright.
_INTS = {
    "acks": 1, "replication_factor": 1, "num_partitions": 1, "count": 2, "resource_type": 2,
    "timestamp": -1, "producer_id": -1, "producer_epoch": -1, "replica_id": -1,
    "generation_id": -1, "current_leader_epoch": -1, "leader_epoch": -1, "max_bytes": 1 << 20,
    "partition_max_bytes": 1 << 20, "min_bytes": 1, "max_num_offsets": 1,
    "config_operation": 0, "key_type": 0, "isolation_level": 0, "session_id": 0,
    "session_epoch": -1, "epoch": -1, "offset": 0, "committed_offset": 0,
}


def synthesize(api_key: int, version: int, correlation_id: int = 1) -> Seed:
    body_type = messages.request_type(api_key, version)
    body = build(body_type)
    legacy = apis.is_legacy(api_key, version)
    header_type = HeaderV2 if apis.request_header_version(api_key, version) >= 2 else HeaderV1
    header = header_type(request_api_key=api_key, request_api_version=version,
                         correlation_id=correlation_id, client_id=CLIENT_ID)
    buffer = io.BytesIO()
    entity_writer(header_type)(buffer, header)
    start = buffer.tell()
    entity_writer(body_type)(buffer, body)
    payload = buffer.getvalue()
    if legacy:  # drop v3's transactional_id (a null string: int16 -1) from the front
        assert payload[start : start + 2] == b"\xff\xff"
        payload = payload[:start] + payload[start + 2 :]
    return Seed(api_key, version, SYNTHESIZED, payload)


def build(entity_type: type) -> Any:
    values = {}
    for f in schema.fields(entity_type):
        if f.tag is not None and f.default is not dataclasses.MISSING:
            continue  # tagged fields with defaults are left out of the encoding
        values[f.name] = _value(entity_type, f)
    return entity_type(**values)


def _value(owner: type, f: schema.Field) -> Any:
    if f.entity is not None:
        element = build(f.entity)
        return (element,) if f.kind is Kind.ENTITY_ARRAY else element
    kafka_type = f.kafka_type or ""
    if f.kind is Kind.PRIMITIVE_ARRAY:
        return (_primitive(owner, f.name, kafka_type),)
    if f.default is not dataclasses.MISSING and kafka_type not in ("records", "string"):
        return f.default
    if kafka_type == "string" and f.optional and f.name not in _STRINGS and \
            "topic" not in f.name and "group" not in f.name:
        return None
    return _primitive(owner, f.name, kafka_type)


_STRINGS = {"name": TOPIC, "topic": TOPIC, "resource_name": TOPIC, "key": GROUP,
            "group_id": GROUP, "protocol_type": "consumer", "member_id": "",
            "value": "3600000", "client_software_name": "kelp-fuzz",
            "client_software_version": "1"}


def _primitive(owner: type, name: str, kafka_type: str) -> Any:
    if kafka_type == "string":
        if "Config" in owner.__name__ and name == "name":
            return "retention.ms"
        if name in _STRINGS:
            return _STRINGS[name]
        return GROUP if "group" in name else TOPIC if "topic" in name else "fuzz"
    if kafka_type == "bytes":
        return b"\x00\x01fuzz"
    if kafka_type == "records":
        return batches.build_batch([(b"k", b"v"), (None, b"value-2")])
    if kafka_type == "bool":
        return False
    if kafka_type == "uuid":
        return uuid.UUID(int=0)
    if kafka_type == "float64":
        return 0.0
    if kafka_type == "error_code":
        return ErrorCode.none
    if kafka_type in ("timedelta_i32", "timedelta_i64"):
        return datetime.timedelta(milliseconds=1000)
    if kafka_type == "datetime_i64":
        return _WHEN
    return _INTS.get(name, 0)
