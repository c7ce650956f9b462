"""Several real brokers sharing one real etcd, on free loopback ports (the cluster tests)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio_asyncio
from prometheus_client.parser import text_string_to_metric_families

from broker.controller import PARTITIONS, parse_partition_key
from broker.placement import PartitionState
from kelp.etcd import Etcd
from tests.etcd_proc import EtcdServer
from tests.kelp_procs import Cluster, Proc, free_port


@dataclass
class BrokerNode:
    broker_id: int
    workdir: Path
    etcd: EtcdServer
    lease_ms: int = 3000
    extra_args: tuple[str, ...] = ()
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    ucx_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        name = f"broker{self.broker_id}"
        self.proc = Proc(name, [
            sys.executable, "-m", "broker", "--data-dir", str(self.workdir / name),
            "--grpc", f"127.0.0.1:{self.grpc_port}", "--http", f"127.0.0.1:{self.http_port}",
            "--ucx", f"127.0.0.1:{self.ucx_port}", "--etcd", self.etcd.endpoint,
            "--broker-id", str(self.broker_id), "--etcd-lease-ms", str(self.lease_ms),
            *self.extra_args],
            self.workdir / f"{name}.log")

    def health(self) -> dict:
        url = f"http://127.0.0.1:{self.http_port}/health"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.load(reply)

    def cluster(self) -> dict:
        return self.health()["cluster"]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (unlabelled, or with exactly ``labels``), read with
        Prometheus's own parser."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        raise KeyError(name)


@dataclass
class BrokerCluster:
    workdir: Path
    size: int = 3
    lease_ms: int = 3000
    broker_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.etcd = EtcdServer(self.workdir)
        self.brokers = [BrokerNode(i, self.workdir, self.etcd, self.lease_ms, self.broker_args)
                        for i in range(self.size)]

    def start(self) -> BrokerCluster:
        self.etcd.start()
        try:
            # All at once: each broker spends its first second importing, and they find each
            # other through etcd whatever the order.
            logs = [broker.proc.launch() for broker in self.brokers]
            for broker, seen in zip(self.brokers, logs, strict=True):
                broker.proc.wait_for_log(broker.proc.ready, start_at=seen)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for broker in self.brokers:
            broker.proc.stop()
        self.etcd.stop()

    def running(self) -> list[BrokerNode]:
        return [b for b in self.brokers
                if b.proc.popen is not None and b.proc.popen.poll() is None]


def running_cluster(workdir: Path, request: object, *, broker_args: tuple[str, ...] = (),
                    wait_registered: bool = True) -> Iterator[BrokerCluster]:
    """A started cluster for a fixture (``yield from`` it): stopped afterwards, with each
    broker's log tail printed when the test failed."""
    cluster = BrokerCluster(workdir, broker_args=broker_args).start()
    try:
        if wait_registered:
            wait_for(lambda: all(b.cluster()["registered"] for b in cluster.brokers) and
                     len({b.cluster()["controller"] for b in cluster.brokers} - {None}) == 1,
                     "every broker registered and one controller")
        yield cluster
    finally:
        cluster.stop()
        report = getattr(getattr(request, "node", None), "rep_call", None)
        if report is not None and report.failed:
            for node in cluster.brokers:
                text = node.proc.log_text()
                # The warnings of the whole run (a kill cycle's trouble is often long past the
                # tail), then the tail.
                warnings = [line for line in text.splitlines()
                            if "level=warning" in line or "level=error" in line]
                print(f"--- {node.proc.name}: last warnings ---\n" + "\n".join(warnings[-40:]))
                print(f"--- {node.proc.name} ---\n{text[-4000:]}")


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    """Poll ``check`` until it returns something true; its last value or error in the failure."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def partition_states(etcd_endpoint: str) -> dict[tuple[str, int], PartitionState]:
    async def read() -> dict[tuple[str, int], PartitionState]:
        async with trio_asyncio.open_loop():
            etcd = Etcd.from_text(etcd_endpoint)
            try:
                entries, _ = await etcd.get_prefix(PARTITIONS)
            finally:
                etcd.close()
        return {parse_partition_key(e.key): PartitionState.decode(e.value) for e in entries}

    return trio.run(read)


def gateway_on(node: BrokerNode, workdir: Path, *args: str,
               name: str = "gateway", http_port: int | None = None) -> tuple[Proc, int]:
    """A started gateway in front of one broker of the cluster (``--etcd`` among ``args`` to
    route each partition to its leader), and its Kafka port."""
    kafka_port = free_port()
    gateway = Proc(name, [
        sys.executable, "-m", "gateway", "--listen", f"127.0.0.1:{kafka_port}",
        "--broker", f"127.0.0.1:{node.grpc_port}",
        "--http", f"127.0.0.1:{http_port or free_port()}",
        *args], workdir / f"{name}.log")
    try:
        gateway.start()
    except BaseException:
        gateway.stop()  # started but never ready: still not left behind
        raise
    return gateway, kafka_port


@dataclass
class ReplicatedCluster:
    """Three brokers on a real etcd behind a routing gateway, creating topics with three
    replicas by default: what the client matrix runs against as its second cluster."""

    workdir: Path
    replication_factor: int = 3
    kafka_port: int = 0
    gateway_http_port: int = field(default_factory=free_port)

    def start(self) -> ReplicatedCluster:
        self.brokers = BrokerCluster(self.workdir, broker_args=(
            "--group-initial-rebalance-delay-ms", "100",
            "--config", f"default.replication.factor={self.replication_factor}")).start()
        try:
            wait_for(lambda: all(b.cluster()["registered"] for b in self.brokers.brokers),
                     "every broker registered")
            self.gateway, self.kafka_port = gateway_on(
                self.brokers.brokers[0], self.workdir, "--etcd", self.brokers.etcd.endpoint,
                http_port=self.gateway_http_port)
        except BaseException:
            self.brokers.stop()
            raise
        return self

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def versions_seen(self, client_id: str) -> dict[str, int]:
        """API name -> highest version the client with this client id used."""
        url = f"http://127.0.0.1:{self.gateway_http_port}/debug/versions?client_id={client_id}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.load(reply).get(client_id, {})

    def stop(self) -> None:
        self.gateway.stop()
        self.brokers.stop()


@pytest.fixture(name="cluster", scope="module", params=["one broker", "three brokers, RF=3"])
def single_and_replicated(request: pytest.FixtureRequest, cluster: Cluster,
                          tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[Cluster | ReplicatedCluster]:
    """For the client matrix modules (imported there, it overrides their ``cluster``): each
    test runs against the shared single broker, then against a replicated cluster (three
    brokers on etcd, a routing gateway, topics with three replicas by default)."""
    if request.param == "one broker":
        yield cluster
        return
    replicated = ReplicatedCluster(tmp_path_factory.mktemp("replicated")).start()
    try:
        yield replicated
    finally:
        replicated.stop()


def routed_gateway(brokers: BrokerCluster, workdir: Path) -> Iterator[str]:
    """For a fixture (``yield from`` it): a routing gateway without a registry in front of
    broker 0, yielding its Kafka address; stopped afterwards."""
    gateway, port = gateway_on(brokers.brokers[0], workdir, "--no-registry", "--etcd",
                               brokers.etcd.endpoint)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        gateway.stop()
