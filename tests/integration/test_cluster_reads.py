"""The read path in a cluster: ``kelp mount`` lists each partition from its leader and the
sidecar reads each chunk (over UCX, or the broker's copy) from the broker its file id names,
so partitions the sidecar's own ``--broker`` does not hold read byte for byte too."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.cluster_procs import (
    BrokerCluster,
    gateway_on,
    partition_states,
    running_cluster,
    wait_for,
)
from tests.integration.test_mount import _mounted, _unmount
from tests.kelp_procs import Proc, free_port

pytestmark = pytest.mark.timeout(180)  # the thread method (pyproject): safe around FUSE

TOPIC = "spread"


@pytest.fixture
def brokers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerCluster]:
    yield from running_cluster(tmp_path, request)


def sidecar_counters(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as reply:
        return json.loads(reply.read())["counters"]


@pytest.mark.parametrize("sidecar_args", [(), ("--no-ucx",)], ids=["ucx", "broker-copy"])
def test_every_partition_reads_from_the_broker_that_holds_it(
        brokers: BrokerCluster, tmp_path: Path, sidecar_args: tuple[str, ...]) -> None:
    gateway, port = gateway_on(brokers.brokers[0], tmp_path, "--no-registry", "--etcd",
                               brokers.etcd.endpoint)
    etcd = brokers.etcd.endpoint
    first = f"127.0.0.1:{brokers.brokers[0].grpc_port}"
    socket = tmp_path / "sidecar.sock"
    sidecar_http = free_port()
    sidecar = Proc("sidecar", [sys.executable, "-m", "rdma", "--socket", str(socket),
                               "--http", f"127.0.0.1:{sidecar_http}", "--broker", first,
                               "--broker-http",
                               f"127.0.0.1:{brokers.brokers[0].http_port}", "--etcd", etcd,
                               *sidecar_args], tmp_path / "sidecar.log")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mount = None
    try:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        # One replica each: the three partitions live on three different brokers.
        admin.create_topics([NewTopic(TOPIC, 3, 1)])[TOPIC].result(30)
        leaders = {p: partition_states(etcd)[(TOPIC, p)].leader for p in range(3)}
        assert sorted(leaders.values()) == [0, 1, 2]
        producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "linger.ms": 2})
        rng = random.Random(7)
        for i in range(900):
            producer.produce(TOPIC, rng.randbytes(rng.randrange(200, 2000)), partition=i % 3)
        assert producer.flush(30) == 0

        sidecar.start()
        mount = Proc("mount", [sys.executable, "-m", "rdma.mount", str(mountpoint),
                               "--broker", first, "--etcd", etcd, "--sidecar", str(socket),
                               "--refresh-ms", "200"], tmp_path / "mount.log")
        mount.start()
        before = sidecar_counters(sidecar_http)
        for partition, leader in leaders.items():
            directory = mountpoint / "topics" / TOPIC / str(partition)
            wait_for(lambda d=directory: any(p.name.endswith(".log") for p in d.iterdir()),
                     f"partition {partition} listed", timeout=30)
            for name in sorted(p.name for p in directory.iterdir() if p.name.endswith(".log")):
                want = (tmp_path / f"broker{leader}" / f"{TOPIC}-{partition}" / name
                        ).read_bytes()
                assert len(want) > 100_000
                deadline = time.monotonic() + 10  # the mount refreshes the active segment
                while True:
                    got = subprocess.run(["cat", str(directory / name)], capture_output=True,
                                         check=True, timeout=60).stdout
                    if got == want or time.monotonic() > deadline:
                        break
                    time.sleep(0.3)
                assert got == want, (partition, name)
        after = sidecar_counters(sidecar_http)
        path = "fallback_reads" if sidecar_args else "rdma_reads"
        assert after[path] - before[path] >= 3
    finally:
        if mount is not None:
            _unmount(mount, mountpoint)
        sidecar.stop()
        gateway.stop()
    assert not _mounted(mountpoint)
