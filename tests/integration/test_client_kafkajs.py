"""KafkaJS 2.2.4 (Node 20): admin, producer, group consumer with commits against kelp."""

from __future__ import annotations

import subprocess

from tests.clients.preferred import assert_preferred_versions
from tests.clients.prepare import JS_DIR, prepare_js
from tests.cluster_procs import single_and_replicated  # noqa: F401 (the cluster fixture)
from tests.kelp_procs import Cluster


def test_kafkajs_end_to_end(cluster: Cluster, topic_name: str) -> None:
    prepare_js()  # a no-op when `just test` already installed it
    client_id = f"kafkajs-{topic_name}"
    run = subprocess.run(["node", "kelp-kafkajs.js", cluster.bootstrap, topic_name, "3000",
                          client_id], cwd=JS_DIR, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "OK kafkajs produced=3000 consumed=3000 committed=3000" in run.stdout
    assert_preferred_versions(cluster, client_id, "kafkajs", {
        "API_VERSIONS", "METADATA", "CREATE_TOPICS", "PRODUCE", "FIND_COORDINATOR",
        "JOIN_GROUP", "SYNC_GROUP", "OFFSET_FETCH", "FETCH"})
