"""Kafka's max.connections: past the limit a new connection waits to be accepted, served as
soon as another closes; a flood of idle connections cannot take every file descriptor."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kio.index import load_request_schema

from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster

API_VERSIONS = load_request_schema(18, 3)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "c", gateway_args=["--max-connections", "2"])
    try:
        yield running.start()
    finally:
        running.stop()


def _api_versions(client: RawClient) -> int:
    request = API_VERSIONS(client_software_name="t", client_software_version="1")
    return len(client.request(request).api_keys)


def test_connections_past_the_limit_wait_until_one_closes(cluster: Cluster) -> None:
    first, second = RawClient(cluster.bootstrap), RawClient(cluster.bootstrap)
    assert _api_versions(first) > 10 and _api_versions(second) > 10
    third = RawClient(cluster.bootstrap, timeout=1.5)  # completes in the kernel's backlog
    third.send(API_VERSIONS(client_software_name="t", client_software_version="1"))
    with pytest.raises(socket.timeout):
        third.read_frame()  # not accepted: nobody reads it
    first.close()
    third.sock.settimeout(10)
    assert len(third.read_frame()) > 100  # accepted and answered once a slot freed
    health_url = f"http://127.0.0.1:{cluster.gateway_http_port}/health"
    with urllib.request.urlopen(health_url, timeout=10) as reply:
        health = json.load(reply)
    assert health["max_connections"] == 2 and health["connections"] == 2
    second.close()
    third.close()
    assert "Traceback" not in cluster.gateway.log_text()


@pytest.fixture
def small_pool(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "p", gateway_args=["--queued-max-request-bytes", str(2 << 20)])
    try:
        yield running.start()
    finally:
        running.stop()


def _connections(cluster: Cluster) -> int:
    health_url = f"http://127.0.0.1:{cluster.gateway_http_port}/health"
    with urllib.request.urlopen(health_url, timeout=10) as reply:
        return int(json.load(reply)["connections"])


def test_a_client_leaving_while_its_connection_waits_is_noticed(small_pool: Cluster) -> None:
    """A connection waiting for room is not read, yet its client leaving must close it at
    once (within a second or two), not after the 30 s request timeout: abandoned connections
    must not pile up."""
    import struct
    import time

    holder = RawClient(small_pool.bootstrap)
    holder.send_bytes(struct.pack(">i", 3 << 19) + b"\x00" * 1024)  # 1.5 MiB promised: reserved
    waiter = RawClient(small_pool.bootstrap)
    waiter.send_bytes(struct.pack(">i", 3 << 19) + b"\x00" * 1024)  # waits for pool room
    deadline = time.monotonic() + 10
    while _connections(small_pool) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _connections(small_pool) == 2
    waiter.close()
    started = time.monotonic()
    while _connections(small_pool) > 1 and time.monotonic() - started < 10:
        time.sleep(0.1)
    assert _connections(small_pool) == 1
    assert time.monotonic() - started < 5
    holder.close()
    assert "Traceback" not in small_pool.gateway.log_text()
