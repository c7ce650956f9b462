"""Transactions with the Java client (kafka-clients 3.9) and KafkaJS 2.2.4: a commit/abort loop
read by read_committed and read_uncommitted consumers (exactly the committed records, in
order), zombie fencing with two producers sharing a transactional id, and a
consume-transform-produce loop whose output holds every input record exactly once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.clients.prepare import JS_DIR, prepare_js, run_java
from tests.kelp_procs import Cluster


def test_java_transactions(cluster: Cluster, topic_name: str, tmp_path: Path) -> None:
    run = run_java("KelpJavaTransactions", [cluster.bootstrap, topic_name, f"{topic_name}-j"],
                   tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "OK java transactions committed=100 aborted=100" in run.stdout
    assert "fenced=true" in run.stdout


def test_kafkajs_transactions(cluster: Cluster, topic_name: str) -> None:
    prepare_js()  # a no-op when `just test` already installed it
    run = subprocess.run(["node", "kelp-kafkajs-transactions.js", cluster.bootstrap, topic_name,
                          f"{topic_name}-js"], cwd=JS_DIR, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "OK kafkajs transactions committed=100 aborted=100" in run.stdout
