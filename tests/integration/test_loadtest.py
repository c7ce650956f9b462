"""``kelp loadtest`` against real kelp processes: the ``quick`` and ``standard`` profiles, with
shortened durations and modest rates, must end with nothing lost, nothing duplicated, Avro values
that really went through the built-in registry, and CPU/RSS figures for the kelp processes.

The tool runs as a subprocess (``python -m kelp.loadtest``), as a user would run it; its JSON
result file is what the assertions read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.kelp_procs import REPO, Cluster
from tests.registry_http import ok, wait_for_leader

pytestmark = pytest.mark.timeout(150)

DURATION_S = "8"
RUN_TIMEOUT_S = 120


def _loadtest(cluster: Cluster, tmp_path: Path, profile: str, *flags: str) -> dict[str, Any]:
    """Run the tool to the end; returns its JSON result (and shows its output on failure)."""
    wait_for_leader(cluster.registry_url)
    out = tmp_path / f"{profile}.json"
    done = subprocess.run(
        [sys.executable, "-m", "kelp.loadtest", profile, "--bootstrap", cluster.bootstrap,
         "--registry", cluster.registry_url, "--duration", DURATION_S, "--json-out", str(out),
         "--no-live", "--interval", "2", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    print(done.stdout[-6000:], done.stderr[-6000:], sep="\n")
    assert done.returncode == 0, f"exit {done.returncode}"
    assert "PASS" in done.stdout
    return json.loads(out.read_text())


def _check_common(result: dict[str, Any], cluster: Cluster, producers: int) -> None:
    verification = result["verification"]
    assert result["ok"] is True and result["exit_code"] == 0 and result["failures"] == []
    assert verification["ok"] is True
    assert verification["lost"] == 0 and verification["duplicated"] == 0
    assert verification["unacked_consumed"] == 0 and verification["failed"] == 0
    produced, consumed = result["produced"], result["consumed"]
    assert produced["acked"] > 0 and produced["acked"] == produced["sent"]
    assert consumed["unique"] == produced["acked"] == verification["acked"]
    assert consumed["records"] == consumed["unique"]
    assert verification["producers"] == producers
    assert result["errors"]["total"] == 0
    assert consumed["decode_errors"] == 0 and consumed["header_mismatches"] == 0
    throughput = result["throughput"]
    assert throughput["produce_records_per_s"] > 0 and throughput["produce_mb_per_s"] > 0
    assert throughput["consume_records_per_s"] > 0
    for kind in ("produce", "end_to_end"):
        latency = result["latency_ms"][kind]
        assert latency["count"] == produced["acked"]
        assert 0 <= latency["p50"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    # The kelp processes were found by their command lines, and sampled.
    for name, proc in (("broker", cluster.broker), ("gateway", cluster.gateway)):
        assert proc.popen is not None
        figures = result["resources"][name]
        assert figures["pids"] == [proc.popen.pid]
        assert figures["sampled"] is True
        assert figures["cpu_percent_avg"] is not None and figures["cpu_percent_avg"] > 0
        assert figures["rss_mb_end"] > 10 and figures["rss_mb_max"] >= figures["rss_mb_end"]
        assert "rss_growth_mb" in figures
    assert result["resources"]["sidecar"] is None   # the test cluster runs none
    assert result["timeline"] and {"t", "acked_per_s", "e2e_p99_ms", "rss_mb"} <= set(
        result["timeline"][-1])


def _check_registry(result: dict[str, Any], cluster: Cluster) -> None:
    """Schema first: every topic's subject exists in kelp's registry with the id the values
    carried."""
    registry = result["registry"]
    assert registry["url"] == cluster.registry_url
    subjects = set(ok(cluster.registry_url, "GET", "/subjects"))
    wanted = {f"{topic}-value" for topic in result["run"]["topics"]}
    assert wanted <= subjects
    ids = {ok(cluster.registry_url, "GET", f"/subjects/{subject}/versions/latest")["id"]
           for subject in wanted}
    assert ids == set(registry["schema_ids"]) == set(result["consumed"]["schema_ids"])


def test_quick_profile_avro(group_cluster: Cluster, tmp_path: Path) -> None:
    plot = tmp_path / "quick.png"
    result = _loadtest(group_cluster, tmp_path, "quick", "--rate", "400", "--keep-topics",
                       "--plot", str(plot))
    profile = result["profile"]
    assert (profile["name"], profile["producers"], profile["consumers"]) == ("quick", 1, 1)
    assert profile["value"] == "avro" and profile["duration"] == float(DURATION_S)
    _check_common(result, group_cluster, producers=1)
    _check_registry(result, group_cluster)
    assert result["throughput"]["target_records_per_s"] == 400
    assert result["produced"]["acked"] >= 400 * 4   # at least half the target
    if result["plot"]["written"]:
        assert plot.stat().st_size > 10_000
    else:
        assert "matplotlib" in result["plot"]["note"]

    # Independently of the tool: the records on the topic decode with the registry's schema and
    # carry this run's identity.
    topic = result["run"]["topics"][0]
    registry = SchemaRegistryClient({"url": group_cluster.registry_url})
    deserialize = AvroDeserializer(registry)
    consumer = Consumer({"bootstrap.servers": group_cluster.bootstrap, "group.id": "verify",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                     for p in range(profile["partitions"])])
    try:
        decoded = []
        while len(decoded) < 50:
            message = consumer.poll(10)
            assert message is not None, f"only {len(decoded)} records read back"
            assert message.error() is None, message.error()
            decoded.append(deserialize(message.value(),
                                       SerializationContext(topic, MessageField.VALUE)))
    finally:
        consumer.close()
    assert all(record["run"] == int(result["run"]["id"], 16) for record in decoded)
    assert all(record["producer"] == 0 and len(record["payload"]) > 900 for record in decoded)


def test_standard_profile_avro(group_cluster: Cluster, tmp_path: Path) -> None:
    result = _loadtest(group_cluster, tmp_path, "standard", "--rate", "300")
    profile = result["profile"]
    assert (profile["producers"], profile["consumers"]) == (2, 2)
    assert (profile["topics"], profile["partitions"]) == (5, 3)
    _check_common(result, group_cluster, producers=2)
    _check_registry(result, group_cluster)
    assert len(result["run"]["topics"]) == 5
    assert result["verification"]["out_of_order"] == 0   # idempotent producers keep order
    # Topics are deleted after the run unless --keep-topics.
    assert not set(result["run"]["topics"]) & set(_topics(group_cluster))


def _topics(cluster: Cluster) -> list[str]:
    from confluent_kafka.admin import AdminClient

    return list(AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(
        timeout=10).topics)


def test_transactional_profile(group_cluster: Cluster, tmp_path: Path) -> None:
    """Transactional producers (every 10th transaction aborted on purpose) and read_committed
    consumers: every committed record exactly once, no record of an aborted one."""
    result = _loadtest(group_cluster, tmp_path, "transactional", "--rate", "500",
                       "--transaction-records", "100", "--abort-every", "4")
    profile, verification = result["profile"], result["verification"]
    assert (profile["transaction_records"], profile["abort_every"]) == (100, 4)
    assert result["ok"] is True and result["errors"]["total"] == 0
    assert verification["lost"] == 0 and verification["duplicated"] == 0
    assert verification["aborted"] >= 100 and verification["aborted_consumed"] == 0
    assert result["produced"]["failure_reasons"] == {"aborted": verification["aborted"]}
    assert result["consumed"]["unique"] == result["produced"]["acked"] > 0
    assert verification["out_of_order"] == 0
