"""Schema identity as Confluent's registry has it: a schema is the same one whatever its JSON
key order or formatting, including one another registry wrote to ``_schemas`` with its own key
order; "latest" means the latest live version; content negotiation and the error codes of the
compatibility check."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from tests.kelp_procs import Cluster
from tests.registry_http import call, ok, wait_for_leader


@pytest.fixture
def base(cluster: Cluster) -> str:
    wait_for_leader(cluster.registry_url)
    return cluster.registry_url


def _avro(name: str) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "kelp.test", "fields": [
        {"name": "id", "type": "long"},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []}]}


def _reversed_keys(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order (arrays untouched)."""
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


@pytest.mark.parametrize("schema_type", ["AVRO", "JSON"])
def test_key_order_never_changes_the_id(base: str, topic_name: str, schema_type: str) -> None:
    name = "R" + topic_name.replace("-", "_")
    schema = _avro(name) if schema_type == "AVRO" else {
        "type": "object", "title": name,
        "properties": {"id": {"type": "integer"}, "tags": {"type": "array"}},
        "required": ["id"]}
    client = SchemaRegistryClient({"url": base})
    subject = f"{topic_name}-value"
    first = client.register_schema(subject, Schema(json.dumps(schema), schema_type))
    again = client.register_schema(subject, Schema(json.dumps(_reversed_keys(schema)),
                                                   schema_type))
    sorted_keys = client.register_schema(subject, Schema(json.dumps(schema, sort_keys=True),
                                                         schema_type))
    assert first == again == sorted_keys
    assert ok(base, "GET", f"/subjects/{subject}/versions") == [1]
    found = client.lookup_schema(subject, Schema(json.dumps(_reversed_keys(schema)),
                                                 schema_type))
    assert (found.schema_id, found.version) == (first, 1)


def test_a_schema_another_registry_wrote_with_sorted_keys_is_found(
        cluster: Cluster, base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    schema = _avro("Foreign" + topic_name.replace("-", "_"))
    foreign_id = max([0, *(s["id"] for s in ok(base, "GET", "/schemas"))]) + 500
    key = json.dumps({"keytype": "SCHEMA", "subject": subject, "version": 1, "magic": 1},
                     separators=(",", ":")).encode()
    value = json.dumps({"subject": subject, "version": 1, "id": foreign_id,
                        "schema": json.dumps(schema, sort_keys=True, separators=(",", ":")),
                        "deleted": False}).encode()
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    producer.produce("_schemas", key=key, value=value, partition=0)
    assert producer.flush(30) == 0
    ok(base, "PUT", f"/config/{topic_name}-sync", {"compatibility": "FULL"})  # caught up
    # Looked up and registered in the writer's key order: the foreign record, not a new one.
    found = ok(base, "POST", f"/subjects/{subject}", {"schema": json.dumps(schema)})
    assert (found["id"], found["version"]) == (foreign_id, 1)
    registered = ok(base, "POST", f"/subjects/{subject}/versions",
                    {"schema": json.dumps(schema)})
    assert registered["id"] == foreign_id
    assert ok(base, "GET", f"/subjects/{subject}/versions") == [1]
    elsewhere = ok(base, "POST", f"/subjects/{topic_name}-other/versions",
                   {"schema": json.dumps(_reversed_keys(schema))})
    assert elsewhere["id"] == foreign_id  # the same schema under another subject


def test_latest_is_the_latest_live_version(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    ok(base, "PUT", f"/config/{subject}", {"compatibility": "NONE"})
    for index in range(3):
        ok(base, "POST", f"/subjects/{subject}/versions",
           {"schema": json.dumps(_avro(f"V{index}{topic_name.replace('-', '_')}"))})
    assert ok(base, "DELETE", f"/subjects/{subject}/versions/latest") == 3
    assert ok(base, "GET", f"/subjects/{subject}/versions/latest")["version"] == 2
    assert ok(base, "DELETE", f"/subjects/{subject}/versions/latest") == 2  # not 40406
    assert ok(base, "GET", f"/subjects/{subject}/versions/latest")["version"] == 1


def _get(url: str, accept: str | None) -> tuple[int, str]:
    headers = {"accept": accept} if accept is not None else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["content-type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"]


@pytest.mark.parametrize(("accept", "status", "media"), [
    (None, 200, "application/vnd.schemaregistry.v1+json"),
    ("*/*", 200, "application/vnd.schemaregistry.v1+json"),
    ("application/json", 200, "application/json"),
    ("application/vnd.schemaregistry+json", 200, "application/vnd.schemaregistry+json"),
    ("application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, "
     "application/json", 200, "application/vnd.schemaregistry.v1+json"),
    ("text/html", 406, "application/vnd.schemaregistry.v1+json"),
])
def test_content_negotiation(base: str, accept: str | None, status: int, media: str) -> None:
    assert _get(base + "/subjects", accept) == (status, media)


def test_compatibility_against_a_missing_version_is_40402(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    schema = {"schema": json.dumps(_avro("C" + topic_name.replace("-", "_")))}
    assert call(base, "POST", f"/compatibility/subjects/{subject}/versions/3", schema)[1][
        "error_code"] == 40402  # no such subject either: still the version, as Confluent
    assert ok(base, "POST", f"/compatibility/subjects/{subject}/versions/latest",
              schema) == {"is_compatible": True}  # nothing to be incompatible with
    ok(base, "POST", f"/subjects/{subject}/versions", schema)
    assert call(base, "POST", f"/compatibility/subjects/{subject}/versions/7", schema)[1][
        "error_code"] == 40402
    assert call(base, "POST", f"/compatibility/subjects/{subject}/versions/0", schema)[1][
        "error_code"] == 42202
