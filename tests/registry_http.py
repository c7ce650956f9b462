"""A few lines of HTTP for talking to a schema registry the way curl would."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def call(base: str, method: str, path: str, body: Any = None,
         timeout: float = 30) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": CONTENT_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def ok(base: str, method: str, path: str, body: Any = None) -> Any:
    status, answer = call(base, method, path, body)
    assert status == 200, (method, path, status, answer)
    return answer


def wait_for_leader(base: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until this gateway's registry has read its log and knows a leader."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(base + "/health", timeout=5) as response:
            registry = json.loads(response.read())["registry"]
        if registry["ready"] and registry["leader"]:
            return registry
        assert time.monotonic() < deadline, f"registry not ready: {registry}"
        time.sleep(0.05)


def avro_record(name: str, *fields: tuple[str, Any], **extra: Any) -> str:
    return json.dumps({"type": "record", "name": name, "fields": [
        {"name": n, "type": t, **({"default": extra[n]} if n in extra else {})}
        for n, t in fields]})
