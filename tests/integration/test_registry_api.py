"""The built-in Schema Registry's REST API, as curl and confluent-kafka's client see it."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tests.kelp_procs import Cluster
from tests.registry_http import avro_record, call, ok, wait_for_leader

V1 = avro_record("User", ("name", "string"))
V2 = avro_record("User", ("name", "string"), ("age", "int"), age=0)  # backward compatible
V2_NO_DEFAULT = avro_record("User", ("name", "string"), ("age", "int"))  # not backward


@pytest.fixture
def base(cluster: Cluster) -> str:
    wait_for_leader(cluster.registry_url)
    return cluster.registry_url


def test_register_get_and_list(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    first = ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V1})
    # The same schema again (other whitespace): same id, no new version.
    again = ok(base, "POST", f"/subjects/{subject}/versions",
               {"schema": json.dumps(json.loads(V1), indent=2)})
    assert again == first
    second = ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V2})
    assert second["id"] != first["id"]
    assert ok(base, "GET", f"/subjects/{subject}/versions") == [1, 2]
    assert subject in ok(base, "GET", "/subjects")
    latest = ok(base, "GET", f"/subjects/{subject}/versions/latest")
    assert latest["version"] == 2 and latest["id"] == second["id"]
    assert json.loads(latest["schema"]) == json.loads(V2)
    assert "schemaType" not in latest  # AVRO is implied, as Confluent answers
    raw = ok(base, "GET", f"/subjects/{subject}/versions/1/schema")
    assert raw == json.loads(V1)
    by_id = ok(base, "GET", f"/schemas/ids/{first['id']}")
    assert json.loads(by_id["schema"]) == json.loads(V1)
    assert ok(base, "GET", f"/schemas/ids/{first['id']}/versions") == [
        {"subject": subject, "version": 1}]
    assert ok(base, "GET", f"/schemas/ids/{first['id']}/subjects") == [subject]
    assert sorted(ok(base, "GET", "/schemas/types")) == ["AVRO", "JSON", "PROTOBUF"]
    found = ok(base, "POST", f"/subjects/{subject}", {"schema": V1})
    assert (found["version"], found["id"]) == (1, first["id"])


def test_same_schema_under_two_subjects_shares_the_id(base: str, topic_name: str) -> None:
    schema = avro_record("Shared" + topic_name.replace("-", "_"), ("x", "long"))
    a = ok(base, "POST", f"/subjects/{topic_name}-a/versions", {"schema": schema})
    b = ok(base, "POST", f"/subjects/{topic_name}-b/versions", {"schema": schema})
    assert a == b


def test_confluent_error_codes(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    assert call(base, "GET", f"/subjects/{subject}/versions") == (
        404, {"error_code": 40401, "message": f"Subject '{subject}' not found."})
    ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V1})
    status, answer = call(base, "GET", f"/subjects/{subject}/versions/7")
    assert (status, answer["error_code"]) == (404, 40402)
    status, answer = call(base, "GET", f"/subjects/{subject}/versions/zero")
    assert (status, answer["error_code"]) == (422, 42202)
    status, answer = call(base, "GET", "/schemas/ids/987654")
    assert (status, answer["error_code"]) == (404, 40403)
    status, answer = call(base, "POST", f"/subjects/{subject}/versions",
                          {"schema": "{not json"})
    assert (status, answer["error_code"]) == (422, 42201)
    status, answer = call(base, "POST", f"/subjects/{subject}/versions",
                          {"schema": '{"type": "nonsense"}'})
    assert (status, answer["error_code"]) == (422, 42201)
    status, answer = call(base, "POST", f"/subjects/{subject}/versions",
                          {"schema": V2_NO_DEFAULT})
    assert (status, answer["error_code"]) == (409, 409)
    assert "age" in answer["message"]
    status, answer = call(base, "PUT", f"/config/{subject}", {"compatibility": "SIDEWAYS"})
    assert (status, answer["error_code"]) == (422, 42203)
    status, answer = call(base, "POST", f"/subjects/{subject}",
                          {"schema": avro_record("Other", ("q", "int"))})
    assert (status, answer["error_code"]) == (404, 40403)


def test_config_per_subject_and_compatibility_endpoint(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V1})
    assert ok(base, "GET", "/config") == {"compatibilityLevel": "BACKWARD"}
    status, answer = call(base, "GET", f"/config/{subject}")
    assert (status, answer["error_code"]) == (404, 40408)
    assert ok(base, "GET", f"/config/{subject}?defaultToGlobal=true") == {
        "compatibilityLevel": "BACKWARD"}
    verdict = ok(base, "POST", f"/compatibility/subjects/{subject}/versions/latest?verbose=true",
                 {"schema": V2_NO_DEFAULT})
    assert verdict["is_compatible"] is False and verdict["messages"]
    assert ok(base, "PUT", f"/config/{subject}", {"compatibility": "FORWARD"}) == {
        "compatibility": "FORWARD"}
    assert ok(base, "GET", f"/config/{subject}") == {"compatibilityLevel": "FORWARD"}
    # Adding a field without default is forward compatible: old readers ignore it.
    assert ok(base, "POST", f"/compatibility/subjects/{subject}/versions/1",
              {"schema": V2_NO_DEFAULT}) == {"is_compatible": True}
    ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V2_NO_DEFAULT})
    assert ok(base, "DELETE", f"/config/{subject}") == {"compatibilityLevel": "FORWARD"}
    assert ok(base, "GET", f"/config/{subject}?defaultToGlobal=true") == {
        "compatibilityLevel": "BACKWARD"}


def test_transitive_levels_check_every_version(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    ok(base, "PUT", f"/config/{subject}", {"compatibility": "NONE"})
    ok(base, "POST", f"/subjects/{subject}/versions",
       {"schema": avro_record("T", ("a", "int"))})
    ok(base, "POST", f"/subjects/{subject}/versions",
       {"schema": avro_record("T", ("a", "int"), ("b", "int"))})
    ok(base, "PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})
    # Reads v2 data (b present) but v1 data lacks b and b has no default: only BACKWARD
    # against the latest passes; BACKWARD_TRANSITIVE also checks v1 and fails.
    candidate = {"schema": avro_record("T", ("a", "int"), ("b", "int"), ("c", "int"), c=1)}
    assert ok(base, "POST", f"/compatibility/subjects/{subject}/versions",
              candidate)["is_compatible"] is True
    ok(base, "PUT", f"/config/{subject}", {"compatibility": "BACKWARD_TRANSITIVE"})
    assert ok(base, "POST", f"/compatibility/subjects/{subject}/versions",
              candidate)["is_compatible"] is False
    status, _ = call(base, "POST", f"/subjects/{subject}/versions", candidate)
    assert status == 409


def test_soft_and_hard_deletes(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V1})
    second = ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V2})
    status, answer = call(base, "DELETE", f"/subjects/{subject}/versions/2?permanent=true")
    assert (status, answer["error_code"]) == (404, 40407)
    assert ok(base, "DELETE", f"/subjects/{subject}/versions/2") == 2
    assert ok(base, "GET", f"/subjects/{subject}/versions") == [1]
    assert ok(base, "GET", f"/subjects/{subject}/versions?deleted=true") == [1, 2]
    status, answer = call(base, "DELETE", f"/subjects/{subject}/versions/2")
    assert (status, answer["error_code"]) == (404, 40406)
    # A soft-deleted schema still answers by id (consumers of old data need it).
    assert ok(base, "GET", f"/schemas/ids/{second['id']}")["schema"]
    assert ok(base, "DELETE", f"/subjects/{subject}/versions/2?permanent=true") == 2
    assert ok(base, "GET", f"/subjects/{subject}/versions?deleted=true") == [1]
    status, answer = call(base, "DELETE", f"/subjects/{subject}?permanent=true")
    assert (status, answer["error_code"]) == (404, 40405)
    assert ok(base, "DELETE", f"/subjects/{subject}") == [1]
    assert subject not in ok(base, "GET", "/subjects")
    assert subject in ok(base, "GET", "/subjects?deleted=true")
    status, answer = call(base, "DELETE", f"/subjects/{subject}")
    assert (status, answer["error_code"]) == (404, 40404)
    assert ok(base, "DELETE", f"/subjects/{subject}?permanent=true") == [1]
    assert subject not in ok(base, "GET", "/subjects?deleted=true")
    # The versions start again after a hard delete, the id of the same schema is new or
    # reused, but never another schema's id.
    again = ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V1})
    assert ok(base, "GET", f"/schemas/ids/{again['id']}")["schema"] == ok(
        base, "GET", f"/subjects/{subject}/versions/1")["schema"]


def test_mode_read_only_refuses_writes(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    assert ok(base, "GET", "/mode") == {"mode": "READWRITE"}
    assert ok(base, "PUT", f"/mode/{subject}", {"mode": "READONLY"}) == {"mode": "READONLY"}
    status, answer = call(base, "POST", f"/subjects/{subject}/versions", {"schema": V1})
    assert (status, answer["error_code"]) == (422, 42205)
    status, answer = call(base, "PUT", f"/mode/{subject}", {"mode": "SIDEWAYS"})
    assert (status, answer["error_code"]) == (422, 42204)
    assert ok(base, "DELETE", f"/mode/{subject}") == {"mode": "READONLY"}
    ok(base, "POST", f"/subjects/{subject}/versions", {"schema": V1})


def test_references_resolve_and_block_deletion(base: str, topic_name: str) -> None:
    address = json.dumps({"type": "record", "name": "Address", "namespace": "kelp.test",
                          "fields": [{"name": "city", "type": "string"}]})
    ok(base, "POST", f"/subjects/{topic_name}-address/versions", {"schema": address})
    person = json.dumps({"type": "record", "name": "Person", "namespace": "kelp.test",
                         "fields": [{"name": "home", "type": "kelp.test.Address"}]})
    refs = [{"name": "kelp.test.Address", "subject": f"{topic_name}-address", "version": 1}]
    registered = ok(base, "POST", f"/subjects/{topic_name}-person/versions",
                    {"schema": person, "references": refs})
    got = ok(base, "GET", f"/schemas/ids/{registered['id']}")
    assert got["references"] == refs
    assert ok(base, "GET", f"/subjects/{topic_name}-address/versions/1/referencedby") == [
        registered["id"]]
    status, answer = call(base, "DELETE", f"/subjects/{topic_name}-address/versions/1")
    assert (status, answer["error_code"]) == (422, 42206)
    # Without the reference the type is unknown: an invalid schema, not a crash.
    status, answer = call(base, "POST", f"/subjects/{topic_name}-orphan/versions",
                          {"schema": person})
    assert (status, answer["error_code"]) == (422, 42201)


def test_confluent_client_drives_the_api(base: str, topic_name: str) -> None:
    client = SchemaRegistryClient({"url": base})
    subject = f"{topic_name}-value"
    schema_id = client.register_schema(subject, Schema(V1, "AVRO"))
    assert client.get_schema(schema_id).schema_str
    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert client.test_compatibility(subject, Schema(V2, "AVRO")) is True
    assert client.test_compatibility(subject, Schema(V2_NO_DEFAULT, "AVRO")) is False
    client.set_compatibility(subject, "FULL")
    assert client.get_compatibility(subject) == "FULL"
    assert client.lookup_schema(subject, Schema(V1, "AVRO")).version == 1
    json_subject = f"{topic_name}-json"
    json_schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}})
    json_id = client.register_schema(json_subject, Schema(json_schema, "JSON"))
    assert client.get_schema(json_id).schema_type == "JSON"
    ref_id = client.register_schema(
        f"{topic_name}-with-ref",
        Schema(json.dumps({"$ref": "n.json"}), "JSON",
               [SchemaReference("n.json", json_subject, 1)]))
    assert client.get_schema(ref_id).references[0].subject == json_subject
    assert sorted(client.delete_subject(subject)) == [1]
    fresh = SchemaRegistryClient({"url": base})  # the first client caches what it saw
    with pytest.raises(SchemaRegistryError) as failure:
        fresh.get_latest_version(subject)
    assert failure.value.error_code == 40401


def test_data_contract_fields_are_kept(base: str, topic_name: str) -> None:
    subject = f"{topic_name}-value"
    metadata = {"properties": {"owner": "team-a"}}
    rules = {"domainRules": [{"name": "checkName", "kind": "CONDITION", "mode": "WRITE",
                              "type": "CEL", "expr": "message.name != ''"}]}
    first = ok(base, "POST", f"/subjects/{subject}/versions",
               {"schema": V1, "metadata": metadata, "ruleSet": rules})
    got = ok(base, "GET", f"/subjects/{subject}/versions/1")
    assert (got["metadata"], got["ruleSet"]) == (metadata, rules)
    assert ok(base, "GET", f"/schemas/ids/{first['id']}")["metadata"] == metadata
    # The same schema text with other metadata is another schema: a new version and id.
    second = ok(base, "POST", f"/subjects/{subject}/versions",
                {"schema": V1, "metadata": {"properties": {"owner": "team-b"}}})
    assert second["id"] != first["id"]
    assert ok(base, "GET", f"/subjects/{subject}/versions") == [1, 2]
