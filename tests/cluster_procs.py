"""Several real brokers sharing one real etcd, on free loopback ports (the cluster tests)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.etcd_proc import EtcdServer
from tests.kelp_procs import Proc, free_port


@dataclass
class BrokerNode:
    broker_id: int
    workdir: Path
    etcd: EtcdServer
    lease_ms: int = 3000
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    ucx_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        name = f"broker{self.broker_id}"
        self.proc = Proc(name, [
            sys.executable, "-m", "broker", "--data-dir", str(self.workdir / name),
            "--grpc", f"127.0.0.1:{self.grpc_port}", "--http", f"127.0.0.1:{self.http_port}",
            "--ucx", f"127.0.0.1:{self.ucx_port}", "--etcd", self.etcd.endpoint,
            "--broker-id", str(self.broker_id), "--etcd-lease-ms", str(self.lease_ms)],
            self.workdir / f"{name}.log")

    def health(self) -> dict:
        url = f"http://127.0.0.1:{self.http_port}/health"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.load(reply)

    def cluster(self) -> dict:
        return self.health()["cluster"]

    def metric(self, name: str) -> float:
        """One unlabelled sample of ``/metrics``, read with Prometheus's own parser."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return sample.value
        raise KeyError(name)


@dataclass
class BrokerCluster:
    workdir: Path
    size: int = 3
    lease_ms: int = 3000

    def __post_init__(self) -> None:
        self.etcd = EtcdServer(self.workdir)
        self.brokers = [BrokerNode(i, self.workdir, self.etcd, self.lease_ms)
                        for i in range(self.size)]

    def start(self) -> BrokerCluster:
        self.etcd.start()
        for broker in self.brokers:
            broker.proc.start()
        return self

    def stop(self) -> None:
        for broker in self.brokers:
            broker.proc.stop()
        self.etcd.stop()

    def running(self) -> list[BrokerNode]:
        return [b for b in self.brokers
                if b.proc.popen is not None and b.proc.popen.poll() is None]


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
