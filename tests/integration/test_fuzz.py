"""A short seeded fuzz run against a private cluster: kelp must come out of it intact.

The corpus is captured fresh (real clients through a recording proxy, a few seconds) into this
module's temp dir; then 20,000 structure-aware mutants go to the cluster over 32 connections,
and the verdict must hold: same PIDs alive, a confluent-kafka round trip, RSS bounded, no
Traceback in either log, every stored batch valid to an independent decoder. The cluster is
the suite's ``own_cluster`` fixture, so its processes are stopped whatever happens (and its
logs dumped when the test fails). ``just fuzz`` runs the long version.
"""

from __future__ import annotations

import argparse

import pytest

from gateway.kafka.apis import SUPPORTED
from kelp.fuzz import corpus
from kelp.fuzz.capture import capture
from kelp.fuzz.cli import Target, fuzz
from tests.kelp_procs import Cluster

FRAMES = 20_000
SEED = 20240601


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.Seed]:
    path = tmp_path_factory.mktemp("fuzz") / "corpus.bin"
    corpus.save(capture(), path)
    return corpus.load(path)


@pytest.mark.timeout(240)
def test_fuzz_run_leaves_kelp_intact(own_cluster: Cluster, seeds: list[corpus.Seed],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Every (API, version) kelp serves has a seed, and real clients sent a good share of them.
    assert len(corpus.coverage(seeds)) == sum(high - low + 1 for low, high in SUPPORTED.values())
    assert len(corpus.coverage([s for s in seeds if s.origin == corpus.CAPTURED])) >= 30
    cluster = own_cluster
    assert cluster.broker.popen is not None and cluster.gateway.popen is not None
    target = Target(cluster.bootstrap,
                    {"broker": cluster.broker.popen.pid, "gateway": cluster.gateway.popen.pid},
                    {"broker": cluster.broker.log_path, "gateway": cluster.gateway.log_path},
                    cluster.data_dir, f"127.0.0.1:{cluster.broker_http_port}",
                    keep=cluster.workdir)  # crash candidates go next to the logs
    args = argparse.Namespace(frames=FRAMES, seconds=150.0, connections=32, pipeline=4,
                              seed=SEED, rss_limit_mb=300.0, progress=10.0)
    code = fuzz(args, seeds, target)
    report = capsys.readouterr().out
    print(report)
    assert "frames sent            " in report
    assert code == 0, report[-6000:]
