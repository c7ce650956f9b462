"""Shared fixtures: real kelp processes on loopback, always stopped even when a test fails."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kelp_procs import Cluster


def _dump_logs_on_failure(request: pytest.FixtureRequest, cluster: Cluster) -> None:
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in (cluster.broker, cluster.gateway):
            print(f"----- {proc.name} log (tail) -----\n{proc.log_text()[-3000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One broker + gateway shared by the tests that do not restart anything."""
    # A short initial rebalance delay keeps group tests quick (Kafka's default is 3 s).
    running = Cluster(tmp_path_factory.mktemp("cluster"),
                      broker_args=["--group-initial-rebalance-delay-ms", "100"])
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture
def own_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A private broker + gateway for tests that kill or restart processes."""
    running = Cluster(tmp_path / "cluster")
    try:
        yield running.start()
    finally:
        _dump_logs_on_failure(request, running)
        running.stop()


@pytest.fixture
def group_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A private cluster per group test (short initial rebalance delay): one test's trouble
    (a crashed process) stays its own."""
    from tests.group_scenarios import running_group_cluster

    yield from running_group_cluster(tmp_path / "cluster", request)


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
