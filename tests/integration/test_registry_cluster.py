"""The registry across processes: two gateways elect one leader and agree on ids, a write
sent to the follower is forwarded, and everything survives a restart of every process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.group_scenarios import running_group_cluster
from tests.kelp_procs import Cluster, Proc
from tests.registry_http import avro_record, call, ok, wait_for_leader


@pytest.fixture
def two_gateways(tmp_path: Path,
                 request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Proc, str]]:
    """A cluster plus a second gateway on the same broker; yields (cluster, second, url)."""
    for cluster in running_group_cluster(tmp_path / "cluster", request):
        second, _, http_port = cluster.extra_gateway("gateway2")
        try:
            second.start()
            yield cluster, second, f"http://127.0.0.1:{http_port}"
        finally:
            second.stop()


def _leaders(*urls: str) -> list[str]:
    """Every gateway's view of the leader, once they all have one and it is the same."""
    views = [wait_for_leader(url) for url in urls]
    return [view["leader"] for view in views]


def _elected(first: str, second: str) -> tuple[str, str]:
    """(leader url, follower url) once both gateways see the same leader."""
    for _ in range(100):
        leaders = _leaders(first, second)
        if leaders[0] == leaders[1] and leaders[0] in (first, second):
            leader = leaders[0]
            return leader, (second if leader == first else first)
        time.sleep(0.1)
    raise AssertionError(f"gateways disagree on the leader: {_leaders(first, second)}")


def test_two_gateways_agree_and_forward(two_gateways: tuple[Cluster, Proc, str]) -> None:
    cluster, _, second_url = two_gateways
    leader, follower = _elected(cluster.registry_url, second_url)
    schema = avro_record("Fwd", ("a", "int"))
    # Written on the follower: forwarded to the leader, answered with the leader's id.
    via_follower = ok(follower, "POST", "/subjects/fwd-value/versions", {"schema": schema})
    via_leader = ok(leader, "POST", "/subjects/fwd-value/versions", {"schema": schema})
    assert via_follower == via_leader
    other = ok(follower, "POST", "/subjects/other-value/versions",
               {"schema": avro_record("Other", ("b", "string"))})
    assert other["id"] != via_leader["id"]
    ok(follower, "PUT", "/config/fwd-value", {"compatibility": "FULL"})
    # Both gateways read the same topic and answer the same (the follower after catching up).
    for url in (leader, follower):
        for _ in range(100):
            status, answer = call(url, "GET", "/subjects/other-value/versions/1")
            if status == 200:
                break
        assert answer["id"] == other["id"]
        assert ok(url, "GET", "/config/fwd-value") == {"compatibilityLevel": "FULL"}
    # Errors come back through the forwarding unchanged.
    status, answer = call(follower, "POST", "/subjects/fwd-value/versions",
                          {"schema": avro_record("Fwd", ("a", "string"))})
    assert (status, answer["error_code"]) == (409, 409)


def test_leader_gateway_stopping_moves_the_leadership(
        two_gateways: tuple[Cluster, Proc, str]) -> None:
    cluster, second, second_url = two_gateways
    leader, follower = _elected(cluster.registry_url, second_url)
    first = ok(leader, "POST", "/subjects/move-value/versions",
               {"schema": avro_record("Move", ("a", "int"))})
    (second if leader == second_url else cluster.gateway).stop()
    for _ in range(200):
        if wait_for_leader(follower)["leader"] == follower:
            break
        time.sleep(0.1)
    assert wait_for_leader(follower)["is_leader"]
    after = ok(follower, "POST", "/subjects/move-value/versions",
               {"schema": avro_record("Move", ("a", "int"), ("b", "int"), b=0)})
    assert after["id"] > first["id"]


def test_registry_survives_restart_of_every_process(group_cluster: Cluster) -> None:
    base = group_cluster.registry_url
    wait_for_leader(base)
    ids = {}
    for i in range(20):
        ids[i] = ok(base, "POST", f"/subjects/keep-{i}-value/versions",
                    {"schema": avro_record(f"Keep{i}", ("a", "int"))})["id"]
    ok(base, "PUT", "/config", {"compatibility": "FULL_TRANSITIVE"})
    ok(base, "DELETE", "/subjects/keep-3-value")
    json_id = ok(base, "POST", "/subjects/keep-json/versions", {
        "schemaType": "JSON", "schema": json.dumps({"type": "object"})})["id"]
    group_cluster.gateway.kill()  # SIGKILL: nothing may depend on a clean shutdown
    group_cluster.restart_broker(hard=True)
    group_cluster.gateway.start()
    wait_for_leader(base)
    for i in range(20):
        if i == 3:
            continue
        got = ok(base, "GET", f"/subjects/keep-{i}-value/versions/1")
        assert got["id"] == ids[i]
    assert "keep-3-value" not in ok(base, "GET", "/subjects")
    assert ok(base, "GET", "/subjects/keep-3-value/versions?deleted=true") == [1]
    assert ok(base, "GET", "/config") == {"compatibilityLevel": "FULL_TRANSITIVE"}
    assert ok(base, "GET", f"/schemas/ids/{json_id}")["schemaType"] == "JSON"
    fresh = ok(base, "POST", "/subjects/keep-new-value/versions",
               {"schema": avro_record("KeepNew", ("a", "int"))})
    assert fresh["id"] > max([*ids.values(), json_id])


def test_a_schemas_topic_unfit_for_the_registry_is_refused(group_cluster: Cluster) -> None:
    admin = AdminClient({"bootstrap.servers": group_cluster.bootstrap})
    admin.create_topics([NewTopic("wrong-schemas", 3, 1)])["wrong-schemas"].result(10)
    gateway, _, http_port = group_cluster.extra_gateway(
        "gateway-wrong", "--schemas-topic", "wrong-schemas", "--registry-group", "wrong")
    try:
        gateway.start()
        base = f"http://127.0.0.1:{http_port}"
        for _ in range(100):
            status, answer = call(base, "GET", "/subjects")
            if status != 200:
                break
            time.sleep(0.05)
        assert (status, answer["error_code"]) == (500, 50001)
        assert "3 partitions and cleanup.policy=delete" in answer["message"]
        status, answer = call(base, "POST", "/subjects/x/versions",
                              {"schema": avro_record("X", ("a", "int"))})
        assert (status, answer["error_code"]) == (500, 50001)
    finally:
        gateway.stop()
