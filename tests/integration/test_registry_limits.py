"""What a hostile or oversized request costs the registry, against a real gateway: bodies and
schemas beyond the limits are refused with 422 before anything expensive happens, work that is
within the limits but takes too long stops at its budget, the gateway keeps serving and its
memory stays small meanwhile, and SIGINT stops it promptly whatever is in flight."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
import urllib.parse
from typing import Any

import pytest

from registry import limits
from tests.kelp_procs import Cluster
from tests.registry_http import CONTENT_TYPE, avro_record, call, ok, wait_for_leader

pytestmark = pytest.mark.timeout(180)

RSS_LIMIT_KB = 300 * 1024


@pytest.fixture
def base(cluster: Cluster) -> str:
    wait_for_leader(cluster.registry_url)
    return cluster.registry_url


def _post(base: str, path: str, body: bytes, timeout: float = 60) -> tuple[int, Any, float]:
    """POST raw bytes (as a client that sends everything before reading, like urllib); returns
    (status, decoded answer, seconds taken)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("POST", path, body=body, headers={"content-type": CONTENT_TYPE})
        reply = conn.getresponse()
        raw = reply.read()
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    try:
        return reply.status, json.loads(raw), elapsed
    except ValueError:
        return reply.status, raw.decode(errors="replace"), elapsed


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _wide_avro(fields: int) -> str:
    return json.dumps({"type": "record", "name": "Wide", "fields": [
        {"name": f"f{i}", "type": "string"} for i in range(fields)]})


def _exponential_defaults(levels: int = 12, width: int = 10) -> str:
    """Small (6 KB, nesting 39) yet checking its defaults takes width**levels steps: every
    record's fields default to {} and fall back to their own records' defaults."""
    record: dict[str, Any] = {"type": "record", "name": "T0", "fields": [
        {"name": "x", "type": "int", "default": 0}]}
    for level in range(1, levels + 1):
        fields = [{"name": "f0", "type": record, "default": {}}]
        fields += [{"name": f"f{j}", "type": f"T{level - 1}", "default": {}}
                   for j in range(1, width)]
        record = {"type": "record", "name": f"T{level}", "fields": fields}
    return json.dumps(record)


def _health_seconds(base: str) -> float:
    started = time.monotonic()
    status, _ = call(base, "GET", "/health", timeout=10)
    assert status == 200
    return time.monotonic() - started


def _still_serving(base: str, subject: str) -> None:
    assert _health_seconds(base) < 2
    answer = ok(base, "POST", f"/subjects/{subject}/versions",
                {"schema": avro_record("Fine", ("a", "int"))})
    assert answer["id"] > 0


def test_deeply_nested_body_is_refused_quickly(base: str, topic_name: str) -> None:
    depth = 100_000
    body = b"[" * depth + b"]" * depth
    status, answer, elapsed = _post(base, f"/subjects/{topic_name}/versions", body)
    assert status == 422, answer
    assert answer["error_code"] == 422
    assert "nested" in answer["message"] and str(limits.MAX_DEPTH) in answer["message"]
    assert elapsed < 2
    # The same inside a JSON object, and on the other endpoints that read a body.
    deep_refs = b'{"schema": "\\"int\\"", "references": ' + body + b"}"
    for path in (f"/subjects/{topic_name}", f"/compatibility/subjects/{topic_name}/versions",
                 f"/subjects/{topic_name}/versions"):
        status, answer, elapsed = _post(base, path, deep_refs)
        assert (status, answer["error_code"]) == (422, 422), (path, answer)
        assert elapsed < 2
    _still_serving(base, topic_name)


def test_deeply_nested_schema_is_invalid(base: str, topic_name: str) -> None:
    depth = 100_000
    for schema_type, text in (("AVRO", "[" * depth + "]" * depth),
                              ("JSON", '{"not":' * depth + "{}" + "}" * depth),
                              ("PROTOBUF", 'syntax = "proto3";\n' + "message M {" * depth)):
        body = json.dumps({"schema": text, "schemaType": schema_type}).encode()
        status, answer, elapsed = _post(base, f"/subjects/{topic_name}/versions", body)
        assert (status, answer["error_code"]) == (422, 42201), (schema_type, answer)
        assert "nested" in answer["message"], answer
        assert elapsed < 2
    _still_serving(base, topic_name)


def test_huge_avro_schema_is_refused_quickly_and_memory_stays_small(
        cluster: Cluster, base: str, topic_name: str) -> None:
    """The issue's case: 12 MB, 300 000 fields."""
    assert cluster.gateway.popen is not None
    pid = cluster.gateway.popen.pid
    body = json.dumps({"schema": _wide_avro(300_000)}).encode()
    assert len(body) > 12_000_000
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_kb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for path in (f"/subjects/{topic_name}/versions", f"/subjects/{topic_name}",
                     f"/compatibility/subjects/{topic_name}/versions"):
            status, answer, elapsed = _post(base, path, body)
            assert (status, answer["error_code"]) == (422, limits.TOO_LARGE), answer
            assert "too large" in answer["message"]
            assert elapsed < 1, (path, elapsed)
    finally:
        done.set()
        sampler.join()
    assert peak < RSS_LIMIT_KB, f"gateway RSS reached {peak // 1024} MB"
    _still_serving(base, topic_name)


def test_schemas_over_the_size_and_element_limits(base: str, topic_name: str) -> None:
    # Under the body limit, over the schema text limit.
    text = _wide_avro(70_000)
    assert limits.MAX_SCHEMA_BYTES < len(text) < limits.MAX_BODY_BYTES - 1000
    status, answer, elapsed = _post(base, f"/subjects/{topic_name}/versions",
                                    json.dumps({"schema": text}).encode())
    assert (status, answer["error_code"]) == (422, limits.TOO_LARGE), answer
    assert str(limits.MAX_SCHEMA_BYTES) in answer["message"]
    assert elapsed < 1
    # Under the byte limits, over the element count: nullable fields with one-letter names.
    text = json.dumps({"type": "record", "name": "R", "fields": [
        {"name": f"f{i}", "type": ["null", "int"]} for i in range(45_000)]},
        separators=(",", ":"))
    assert len(text) < limits.MAX_SCHEMA_BYTES
    status, answer, elapsed = _post(base, f"/subjects/{topic_name}/versions",
                                    json.dumps({"schema": text}).encode())
    assert (status, answer["error_code"]) == (422, limits.TOO_LARGE), answer
    assert "elements" in answer["message"]
    assert elapsed < 2
    _still_serving(base, topic_name)


def test_large_schema_within_the_limits_registers(base: str, topic_name: str) -> None:
    text = _wide_avro(20_000)  # 750 KB: fits a _schemas record
    first = ok(base, "POST", f"/subjects/{topic_name}/versions", {"schema": text})
    found = ok(base, "POST", f"/subjects/{topic_name}", {"schema": text})
    assert (found["id"], found["version"]) == (first["id"], 1)
    # Too large for one record of _schemas: refused as Confluent refuses it.
    text = _wide_avro(40_000)
    assert len(text) < limits.MAX_SCHEMA_BYTES
    status, answer = call(base, "POST", f"/subjects/{topic_name}-big/versions",
                          {"schema": text})
    assert (status, answer["error_code"]) == (422, limits.TOO_LARGE), answer


def test_costly_schema_within_the_limits_stops_at_its_budget(base: str,
                                                              topic_name: str) -> None:
    body = json.dumps({"schema": _exponential_defaults()}).encode()
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(
        answer=_post(base, f"/subjects/{topic_name}/versions", body)))
    worker.start()
    try:
        time.sleep(0.5)
        # The event loop keeps answering while a worker parses.
        slowest = max(_health_seconds(base) for _ in range(10))
        assert slowest < 0.5
        ok(base, "GET", "/subjects")
    finally:
        worker.join(90)
    status, answer, elapsed = result["answer"]
    assert (status, answer["error_code"]) == (422, limits.TOO_LARGE), answer
    assert "did not finish" in answer["message"]
    assert limits.WORK_TIMEOUT_S - 1 < elapsed < limits.WORK_TIMEOUT_S + 5
    _still_serving(base, topic_name)


@pytest.mark.parametrize("schema_type, text", [
    ("AVRO", avro_record("Plain", ("a", "int"), ("b", "string"))),
    ("JSON", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})),
    ("PROTOBUF", 'syntax = "proto3";\npackage kelp.limits;\nmessage Plain { int32 a = 1; }\n'),
])
def test_ordinary_schemas_still_register(base: str, topic_name: str, schema_type: str,
                                         text: str) -> None:
    subject = f"{topic_name}-{schema_type.lower()}"
    body = {"schema": text, "schemaType": schema_type}
    first = ok(base, "POST", f"/subjects/{subject}/versions", body)
    assert ok(base, "POST", f"/subjects/{subject}/versions", body) == first
    assert ok(base, "POST", f"/subjects/{subject}", body)["id"] == first["id"]
    verdict = ok(base, "POST", f"/compatibility/subjects/{subject}/versions/latest", body)
    assert verdict == {"is_compatible": True}


def test_sigint_stops_the_gateway_with_costly_requests_in_flight(own_cluster: Cluster) -> None:
    base = own_cluster.registry_url
    wait_for_leader(base)
    gateway = own_cluster.gateway
    assert gateway.popen is not None
    costly = json.dumps({"schema": _exponential_defaults()}).encode()
    huge = json.dumps({"schema": _wide_avro(300_000)}).encode()
    outcomes: list[object] = []

    def request(path: str, body: bytes) -> None:
        try:
            outcomes.append(_post(base, path, body, timeout=30))
        except OSError as exc:  # the gateway went away mid-request: expected here
            outcomes.append(exc)

    def slow_upload() -> None:  # a huge body still arriving when the signal comes
        try:
            conn = http.client.HTTPConnection("127.0.0.1", own_cluster.gateway_http_port,
                                              timeout=30)
            conn.putrequest("POST", "/subjects/slow/versions")
            conn.putheader("content-type", CONTENT_TYPE)
            conn.putheader("content-length", str(len(huge)))
            conn.endheaders()
            for start in range(0, len(huge), 64 * 1024):
                conn.send(huge[start:start + 64 * 1024])
                time.sleep(0.05)
        except OSError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=request, args=(f"/subjects/s{i}/versions", costly))
               for i in range(3)]
    threads.append(threading.Thread(target=slow_upload))
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # the parses are running, the upload is arriving
    assert _rss_kb(gateway.popen.pid) < RSS_LIMIT_KB
    started = time.monotonic()
    gateway.signal(signal.SIGINT)
    try:
        gateway.popen.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gateway still running 10 s after SIGINT:\n{gateway.log_text()[-3000:]}")
    stopped_in = time.monotonic() - started
    for thread in threads:
        thread.join(30)
    assert stopped_in < 10
    assert "Traceback" not in gateway.log_text()
