"""Schema Registry latency: register (a durable append to ``_schemas`` read back before the
answer) and lookup, over one keep-alive HTTP connection as clients use it, against the same
gateway's trivial ``/health`` round trip measured in the same run (the HTTP floor)."""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.kelp_procs import Cluster
from tests.registry_http import wait_for_leader

CONTENT_TYPE = {"content-type": "application/vnd.schemaregistry.v1+json"}


def _timed(conn: http.client.HTTPConnection, method: str, path: str,
           body: dict | None = None) -> float:
    data = None if body is None else json.dumps(body)
    started = time.perf_counter()
    conn.request(method, path, body=data, headers=CONTENT_TYPE)
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
    return elapsed


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def _schema(i: int) -> str:
    return json.dumps({"type": "record", "name": f"Bench{i}", "namespace": "kelp.bench",
                       "fields": [{"name": "id", "type": "long"},
                                  {"name": f"field{i}", "type": "string", "default": ""}]})


def run(count: int) -> list[tuple[str, str, str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), broker_args=["--group-initial-rebalance-delay-ms", "100"])
        cluster.start()
        try:
            wait_for_leader(cluster.registry_url)
            conn = http.client.HTTPConnection("127.0.0.1", cluster.gateway_http_port,
                                              timeout=30)
            floor = [_timed(conn, "GET", "/health") for _ in range(count)]
            # Each schema under its own subject: a new id and a durable write every time.
            register = [_timed(conn, "POST", f"/subjects/bench-{i}-value/versions",
                               {"schema": _schema(i)}) for i in range(count)]
            lookup = [_timed(conn, "POST", f"/subjects/bench-{i}-value",
                             {"schema": _schema(i)}) for i in range(count)]
            by_id = [_timed(conn, "GET", f"/schemas/ids/{i + 1}") for i in range(count)]
            conn.close()
        finally:
            cluster.stop()
    floor_p50, floor_p99 = _percentiles(floor)
    rows = []
    for name, samples in (("register (new id, fsync'd)", register),
                          ("lookup (POST /subjects/{s})", lookup),
                          ("get by id", by_id)):
        p50, p99 = _percentiles(samples)
        print(f"registry {name}: p50 {p50:.2f} ms p99 {p99:.2f} ms | "
              f"HTTP floor (/health) p50 {floor_p50:.2f} ms p99 {floor_p99:.2f} ms")
        rows.append((f"registry {name}", f"p50 {p50:.2f} ms p99 {p99:.2f} ms",
                     f"p50 {floor_p50:.2f} ms", floor_p50 / p50))  # speed, as elsewhere
    return rows
