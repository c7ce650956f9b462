"""Values in the Confluent wire format (magic byte 0, a 4-byte schema id, the payload) through
the Schema Registry's REST API: Avro (fastavro) and JSON Schema; Protobuf payloads are shown
as they are (base64), named by their schema id."""

from __future__ import annotations

import base64
import io
import json
import ssl
import struct
from typing import Any

import fastavro
import httpx

from kelp.ops.app import TIMEOUT_S, fail

_PREFIX = struct.Struct(">bI")


class RegistryError(Exception):
    """The registry refused or could not be reached."""


class Registry:
    """A small REST client, with the schemas it has read by id cached."""

    def __init__(self, url: str, properties: dict[str, str] | None = None) -> None:
        """``properties``: the command config (``basic.auth.user.info``,
        ``schema.registry.ssl.ca.location`` or ``ssl.ca.location``)."""
        self.url = url.rstrip("/")
        self._by_id: dict[int, tuple[str, Any]] = {}
        properties = properties or {}
        user, sep, password = properties.get("basic.auth.user.info", "").partition(":")
        ca = properties.get("schema.registry.ssl.ca.location",
                            properties.get("ssl.ca.location"))
        self.http = httpx.Client(timeout=TIMEOUT_S, auth=(user, password) if sep else None,
                                 verify=ssl.create_default_context(cafile=ca) if ca else True)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            reply = self.http.request(method, self.url + path, json=body, headers={
                "Content-Type": "application/vnd.schemaregistry.v1+json"})
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry {self.url} unreachable: {exc}") from None
        if reply.status_code >= 400:
            try:
                detail = reply.json()
                message = f"{detail.get('error_code')}: {detail.get('message')}"
            except ValueError:
                message = reply.text[:200]
            raise RegistryError(f"registry answered {reply.status_code} ({message})")
        return reply.json()

    def checked(self, method: str, path: str, body: Any = None) -> Any:
        """``call``, ending the command (exit 1) on a refusal."""
        try:
            return self.call(method, path, body)
        except RegistryError as exc:
            fail(str(exc))

    def schema(self, schema_id: int) -> tuple[str, Any]:
        """(type, parsed schema) of a schema id."""
        if schema_id not in self._by_id:
            found = self.call("GET", f"/schemas/ids/{schema_id}")
            kind = found.get("schemaType", "AVRO")
            parsed: Any = found["schema"]
            if kind == "AVRO":
                parsed = fastavro.parse_schema(json.loads(parsed))
            self._by_id[schema_id] = (kind, parsed)
        return self._by_id[schema_id]

    def register(self, subject: str, schema: str, kind: str) -> int:
        body: dict[str, Any] = {"schema": schema}
        if kind != "AVRO":
            body["schemaType"] = kind
        return int(self.checked("POST", f"/subjects/{subject}/versions", body)["id"])


def encode(registry: Registry, schema_id: int, kind: str, schema: Any, text: str) -> bytes:
    """A JSON text as a wire-format value of the schema."""
    document = json.loads(text)
    if kind == "AVRO":
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, document)
        payload = out.getvalue()
    else:
        payload = json.dumps(document, separators=(",", ":")).encode()
    return _PREFIX.pack(0, schema_id) + payload


def decode(registry: Registry, value: bytes) -> Any:
    """The value decoded if it is in the wire format of a schema the registry knows; else the
    text (or base64 when it is not UTF-8)."""
    if len(value) > _PREFIX.size and value[0] == 0:
        schema_id = _PREFIX.unpack_from(value)[1]
        try:
            kind, schema = registry.schema(schema_id)
        except RegistryError:
            return plain(value)  # not a schema the registry knows: not the wire format
        payload = value[_PREFIX.size:]
        if kind == "AVRO":
            try:
                return fastavro.schemaless_reader(io.BytesIO(payload), schema)
            except (EOFError, ValueError, TypeError, IndexError):
                return plain(value)
        if kind == "JSON":
            try:
                return json.loads(payload)
            except ValueError:
                return plain(value)
        return {"schema_id": schema_id, "protobuf": base64.b64encode(payload).decode()}
    return plain(value)


def plain(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}
