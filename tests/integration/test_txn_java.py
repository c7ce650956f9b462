"""Transactions with the Java client (kafka-clients 3.9) against kelp, proved end to end:
a commit/abort loop (flushed before each abort, so aborted records are really in the log) that
a read_committed consumer sees as exactly the 100 committed records, per partition in produce
order, and a read_uncommitted consumer as all 200; zombie fencing (a second producer with the
same transactional.id aborts the first one's open transaction and fences its commit); and a
consume-transform-produce loop with sendOffsetsToTransaction (its first transaction aborted and
reprocessed) whose output holds each input record exactly once and whose group offsets end at
the input's log end."""

from __future__ import annotations

from pathlib import Path

from tests.clients.prepare import run_java
from tests.kelp_procs import Cluster


def test_java_transactions_end_to_end(cluster: Cluster, topic_name: str,
                                      tmp_path: Path) -> None:
    run = run_java("KelpJavaTxn", [cluster.bootstrap, topic_name, f"txn-{topic_name}"],
                   tmp_path, timeout=180)
    tails = f"\n--- stdout ---\n{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-5000:]}"
    assert run.returncode == 0, f"exit {run.returncode}{tails}"
    assert "OK java-txn committed=100 aborted=100" in run.stdout, tails
