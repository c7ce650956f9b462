"""Transactions with KafkaJS 2.2.4 (Node 20) against kelp, proved end to end: a commit/abort
loop (each abort after its sends were acknowledged, so aborted records are really in the log)
that a read_committed consumer (readUncommitted: false) sees as exactly the 100 committed
records, per partition in produce order, and a read_uncommitted consumer as all 200; zombie
fencing (a second producer with the same transactionalId aborts the first one's open
transaction, and the first one's commit fails with PRODUCER_FENCED or INVALID_PRODUCER_EPOCH);
and a consume-transform-produce loop with transaction.sendOffsets (its first transaction
aborted and reprocessed) whose output holds each input record exactly once and whose group
offsets end at the input's log end."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.clients.prepare import JS_DIR, prepare_js
from tests.kelp_procs import Cluster


def test_kafkajs_transactions_end_to_end(cluster: Cluster, topic_name: str,
                                         tmp_path: Path) -> None:
    prepare_js()  # a no-op when `just test` already installed it
    run = subprocess.run(["node", "kelp-kafkajs-txn.js", cluster.bootstrap, topic_name,
                          f"txn-{topic_name}"], cwd=JS_DIR, capture_output=True, text=True,
                         timeout=180)
    (tmp_path / "kafkajs-txn.log").write_text(run.stdout + run.stderr)
    tails = f"\n--- stdout ---\n{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-5000:]}"
    assert run.returncode == 0, f"exit {run.returncode}{tails}"
    assert "OK kafkajs-txn committed=100 aborted=100" in run.stdout, tails
