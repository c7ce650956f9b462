"""Request and response bodies through kio (Kafka's JSON schemas as Python types).

kio's decoder is native and fast; its encoder is pure Python, fine for everything whose cost
is per partition rather than per record (record batches travel as opaque bytes).

Handlers build responses with ``build`` so one handler serves every version: fields a version
does not have are dropped, and nested types are looked up in the response's own module.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import io
import sys
import typing
import uuid
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from gateway.kafka import apis, legacy


@functools.cache
def request_type(api_key: int, version: int) -> type:
    """kio's request type; a legacy version shares kio's first (see ``apis.kio_version``)."""
    return load_request_schema(api_key, apis.kio_version(api_key, version))


@functools.cache
def response_type(api_key: int, version: int) -> type:
    return load_response_schema(api_key, apis.kio_version(api_key, version))


@functools.cache
def _reader(entity_type: type) -> Any:
    return entity_reader(entity_type)


@functools.cache
def _writer(entity_type: type) -> Any:
    return entity_writer(entity_type)


@functools.cache
def _field_names(entity_type: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(entity_type))


def decode_request(api_key: int, version: int, frame: bytes, offset: int) -> Any:
    """Decode the body at ``offset``; raises on malformed bytes."""
    if apis.is_legacy(api_key, version):
        return legacy.CODECS[api_key].decode(frame, offset)
    entity, _size = _reader(request_type(api_key, version))(frame, offset)
    return entity


def encode_response(api_key: int, version: int, entity: Any) -> bytes:
    if apis.is_legacy(api_key, version):
        return legacy.CODECS[api_key].encode(version, entity)
    return encode(entity)


def response_header_version(entity: Any) -> int:
    """0, or 1 (with tagged fields), as kio declares for the entity's API version; ApiVersions
    is always 0, so a client that does not yet know our versions can read it."""
    return int(type(entity).__header_schema__.__version__)


def encode(entity: Any) -> bytes:
    buffer = io.BytesIO()
    _writer(type(entity))(buffer, entity)
    return buffer.getvalue()


def build(entity_type: type, **fields: Any) -> Any:
    """Construct ``entity_type`` from whichever of ``fields`` this version has."""
    names = _field_names(entity_type)
    return entity_type(**{k: v for k, v in fields.items() if k in names})


def nested(entity_type: type, name: str) -> type:
    """The nested type ``name`` of the same API version as ``entity_type``."""
    return getattr(sys.modules[entity_type.__module__], name)


def has_field(entity_type: type, name: str) -> bool:
    return name in _field_names(entity_type)


def error_response(response_type: type, code: Any, message: str) -> Any:
    """A response of ``response_type`` that carries ``code`` wherever it has an error code
    and is otherwise empty (no topics, no partitions): the answer to a request kelp could not
    serve because of a fault on its side, instead of a dropped connection."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(response_type):
        kafka_type = f.metadata.get("kafka_type")
        origin = typing.get_origin(f.type)
        if f.name == "error_code":
            values[f.name] = code
        elif f.name == "error_message":
            values[f.name] = message
        elif f.default is not dataclasses.MISSING or (
                f.default_factory is not dataclasses.MISSING):
            continue
        elif origin is tuple:
            values[f.name] = ()
        elif kafka_type in ("timedelta_i32", "timedelta_i64"):
            values[f.name] = datetime.timedelta(0)
        elif kafka_type == "string":
            values[f.name] = None if _nullable(f.type) else ""
        elif kafka_type in ("bytes", "records"):
            values[f.name] = None if _nullable(f.type) else b""
        elif kafka_type == "bool":
            values[f.name] = False
        elif kafka_type == "uuid":
            values[f.name] = None if _nullable(f.type) else uuid.UUID(int=0)
        elif kafka_type == "error_code":
            values[f.name] = code
        elif kafka_type == "datetime_i64":
            values[f.name] = None
        elif kafka_type is not None:
            values[f.name] = -1
        elif _nullable(f.type):
            values[f.name] = None
        else:
            values[f.name] = error_response(f.type, code, message)
    return response_type(**values)


def _nullable(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)
