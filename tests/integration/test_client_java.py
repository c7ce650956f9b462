"""The Java client (kafka-clients 3.9: Fetch 17, Produce 11, Metadata 12, idempotent by
default) runs admin, produce, group-consume, commit and list-offsets against kelp."""

from __future__ import annotations

from pathlib import Path

from tests.clients.preferred import assert_preferred_versions
from tests.clients.prepare import run_java
from tests.cluster_procs import single_and_replicated  # noqa: F401 (the cluster fixture)
from tests.kelp_procs import Cluster


def test_java_client_end_to_end(cluster: Cluster, topic_name: str, tmp_path: Path) -> None:
    client_id = f"java-{topic_name}"
    run = run_java("KelpJavaClient", [cluster.bootstrap, topic_name, "3000", client_id],
                   tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "OK java produced=3000 consumed=3000" in run.stdout
    assert_preferred_versions(cluster, client_id, "java", {
        "API_VERSIONS", "METADATA", "CREATE_TOPICS", "INIT_PRODUCER_ID", "PRODUCE",
        "FIND_COORDINATOR", "JOIN_GROUP", "SYNC_GROUP", "OFFSET_FETCH", "OFFSET_COMMIT",
        "LIST_OFFSETS", "FETCH"})
