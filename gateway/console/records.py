"""Record batches as the console shows them (sans-IO): each record's offset, time, key,
value and headers, values in the registry's wire format decoded with the schema the gateway's
registry holds (Avro with fastavro, JSON Schema as JSON; Protobuf shown as base64). Control
batches (transaction markers) are left out; a batch that cannot be read is one line saying
so, never an error for the page."""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import fastavro

from kelp import recordbatch, records
from registry.state import RegistryState

_WIRE = struct.Struct(">bI")
# A record's key or value is shown up to this many bytes (the rest is cut, and said so).
SHOWN_BYTES = 4096


def text(data: bytes | None) -> Any:
    if data is None:
        return None
    cut = data[:SHOWN_BYTES]
    try:
        shown: Any = cut.decode()
    except UnicodeDecodeError:
        shown = {"base64": base64.b64encode(cut).decode()}
    if len(data) > SHOWN_BYTES:
        return {"truncated": True, "bytes": len(data), "shown": shown}
    return shown


def value_of(data: bytes | None, registry: RegistryState | None) -> tuple[Any, int | None]:
    """(value for display, schema id when decoded through the registry)."""
    if data is None or registry is None or len(data) <= _WIRE.size or data[0] != 0:
        return text(data), None
    schema_id = _WIRE.unpack_from(data)[1]
    version = registry.by_id.get(schema_id)
    if version is None:
        return text(data), None
    payload = data[_WIRE.size:]
    try:
        if version.schema_type == "AVRO":
            schema = fastavro.parse_schema(json.loads(version.schema))
            return fastavro.schemaless_reader(io.BytesIO(payload), schema), schema_id
        if version.schema_type == "JSON":
            return json.loads(payload), schema_id
    except (ValueError, TypeError, EOFError, IndexError, KeyError,
            fastavro.schema.SchemaParseException):
        return text(data), None
    return {"protobuf": base64.b64encode(payload[:SHOWN_BYTES]).decode()}, schema_id


def decode(data: bytes, registry: RegistryState | None, start: int = 0
           ) -> Iterator[dict[str, Any]]:
    """The records at or after offset ``start`` in whole batches ``data``."""
    position = 0
    while position + recordbatch.HEADER_SIZE <= len(data):
        size = recordbatch.peek(data, position)[1]
        batch = data[position:position + size]
        position += size
        header = recordbatch.parse_header(batch)
        if header.attributes & recordbatch.CONTROL_BIT:
            continue
        try:
            decoded = list(records.iter_records(batch))
        except recordbatch.CorruptBatch as exc:
            yield {"offset": header.base_offset, "error": f"unreadable batch: {exc}"}
            continue
        for record in decoded:
            if record.offset < start:
                continue
            value, schema_id = value_of(record.value, registry)
            yield {"offset": record.offset, "timestamp": record.timestamp,
                   "key": text(record.key), "value": value, "schema_id": schema_id,
                   "headers": {k: text(v) for k, v in record.headers}}
