"""The gateway against raw and misbehaving Kafka clients."""

from __future__ import annotations

import datetime
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kio.schema.api_versions.v0 import ApiVersionsRequest as ApiVersionsV0
from kio.schema.api_versions.v3 import ApiVersionsRequest as ApiVersionsV3
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v4.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v1 import MetadataRequest
from kio.schema.metadata.v1.request import MetadataRequestTopic

from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_api_versions_advertises_low_floors(cluster: Cluster) -> None:
    client = RawClient(cluster.bootstrap)
    response = client.request(ApiVersionsV3(client_software_name="t",
                                            client_software_version="1"))
    ranges = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert response.error_code == ErrorCode.none
    assert ranges[0][0] <= 3 <= ranges[0][1]  # Produce 3: librdkafka 2.0's v2 batches
    assert ranges[1][0] <= 4 <= ranges[1][1]  # Fetch 4
    assert ranges[18] == (0, 4)
    client.close()


def test_api_versions_too_new_gets_v0_unsupported_version(cluster: Cluster) -> None:
    client = RawClient(cluster.bootstrap)
    # ApiVersions v9 does not exist: the answer is v0-shaped with error 35 and our ranges.
    frame = struct.pack(">hhih", 18, 9, 77, 1) + b"x" + b"\x00\x00\x00"
    client.send_bytes(struct.pack(">i", len(frame)) + frame)
    reply = client.read_frame()
    correlation, error, count = struct.unpack_from(">ihi", reply)
    assert correlation == 77 and error == ErrorCode.unsupported_version and count > 0
    # The connection stays usable for the retry at a lower version.
    assert client.request(ApiVersionsV0(), correlation_id=78).error_code == ErrorCode.none
    client.close()


def test_responses_come_back_in_request_order(cluster: Cluster, topic_name: str) -> None:
    client = RawClient(cluster.bootstrap)
    # A long-poll fetch first, then a quick metadata request: the metadata answer must wait.
    client.request(MetadataRequest(topics=(MetadataRequestTopic(name=topic_name),)))
    fetch = FetchRequest(max_wait=datetime.timedelta(milliseconds=500), min_bytes=1,
                         topics=(FetchTopic(topic=topic_name, partitions=(
                             FetchPartition(partition=0, fetch_offset=0,
                                            partition_max_bytes=1 << 20),)),))
    client.send(fetch, correlation_id=10)
    client.send(MetadataRequest(topics=None), correlation_id=11)
    first, second = client.read_frame(), client.read_frame()
    assert struct.unpack_from(">i", first)[0] == 10
    assert struct.unpack_from(">i", second)[0] == 11
    client.close()


def _assert_closed_and_logged(cluster: Cluster, client: RawClient, needle: str) -> None:
    assert client.is_closed_by_peer(), "gateway kept a connection that broke the protocol"
    assert wait_until(lambda: needle in cluster.gateway.log_text()), needle
    client.close()
    # Other clients are still served.
    other = RawClient(cluster.bootstrap)
    assert other.request(ApiVersionsV0()).error_code == ErrorCode.none
    other.close()


def test_oversized_frame_is_refused(cluster: Cluster) -> None:
    client = RawClient(cluster.bootstrap)
    client.send_bytes(struct.pack(">i", 500 * 1024 * 1024) + b"\x00" * 100)
    _assert_closed_and_logged(cluster, client, "exceeds the limit")


def test_garbage_frame_is_refused(cluster: Cluster) -> None:
    client = RawClient(cluster.bootstrap)
    garbage = struct.pack(">hhi", 3, 1, 5) + b"\xff\xff\xff\x7f garbage"
    client.send_bytes(struct.pack(">i", len(garbage)) + garbage)
    _assert_closed_and_logged(cluster, client, "malformed METADATA v1 request")


def test_unknown_api_key_is_refused(cluster: Cluster) -> None:
    client = RawClient(cluster.bootstrap)
    frame = struct.pack(">hhih", 999, 0, 1, -1)
    client.send_bytes(struct.pack(">i", len(frame)) + frame)
    _assert_closed_and_logged(cluster, client, "unsupported API api_key_999")


@pytest.fixture
def quiet_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with nothing else fetching: the registry's own reader of _schemas (a
    long-poll fetch) would blur the counts of pending fetches and tasks."""
    running = Cluster(tmp_path / "quiet", gateway_args=["--no-registry"])
    try:
        yield running.start()
    finally:
        running.stop()


def test_disconnect_mid_fetch_leaves_no_task_behind(quiet_cluster: Cluster,
                                                    topic_name: str) -> None:
    cluster = quiet_cluster
    client = RawClient(cluster.bootstrap)
    client.request(MetadataRequest(topics=(MetadataRequestTopic(name=topic_name),)))
    baseline_gateway = cluster.gateway_health()["tasks"]
    baseline_broker = cluster.broker_health()["tasks"]
    clients = []
    for _ in range(5):
        parked = RawClient(cluster.bootstrap)
        parked.send(FetchRequest(max_wait=datetime.timedelta(seconds=25), min_bytes=1,
                                 topics=(FetchTopic(topic=topic_name, partitions=(
                                     FetchPartition(partition=0, fetch_offset=0,
                                                    partition_max_bytes=1 << 20),)),)))
        clients.append(parked)
    assert wait_until(lambda: cluster.broker_health()["pending_fetches"] == 5)
    assert cluster.gateway_health()["inflight"] == 5
    for parked in clients:
        parked.close()
    # Everything those fetches started is gone within moments, not after max_wait (25 s).
    assert wait_until(lambda: cluster.broker_health()["pending_fetches"] == 0, timeout=3)
    assert wait_until(lambda: cluster.gateway_health()["inflight"] == 0, timeout=3)
    assert wait_until(lambda: cluster.gateway_health()["tasks"] <= baseline_gateway, timeout=3)
    assert wait_until(lambda: cluster.broker_health()["tasks"] <= baseline_broker, timeout=3)
    client.close()


def test_produce_v0_with_an_old_message_set_gets_a_clear_error(cluster: Cluster,
                                                              topic_name: str) -> None:
    client = RawClient(cluster.bootstrap)
    client.request(MetadataRequest(topics=(MetadataRequestTopic(name=topic_name),)))
    # A magic-1 message (what a pre-0.11 client sends with Produce v2).
    message = struct.pack(">bbq", 1, 0, 0) + struct.pack(">i", -1) + struct.pack(">i", 1) + b"v"
    message = struct.pack(">I", 0) + message
    entry = struct.pack(">qi", 0, len(message)) + message
    name = topic_name.encode()
    body = (struct.pack(">hi", 1, 5000) + struct.pack(">ih", 1, len(name)) + name
            + struct.pack(">iii", 1, 0, len(entry)) + entry)
    payload = struct.pack(">hhih", 0, 2, 5, 1) + b"x" + body
    client.send_bytes(struct.pack(">i", len(payload)) + payload)
    reply = client.read_frame()
    correlation, _topics, _len = struct.unpack_from(">iih", reply)
    position = 4 + 4 + 2 + len(name) + 4
    partition, error, offset = struct.unpack_from(">ihq", reply, position)
    assert (correlation, partition, offset) == (5, 0, -1)
    assert error == ErrorCode.unsupported_for_message_format
    client.close()
