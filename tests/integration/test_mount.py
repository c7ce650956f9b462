"""``kelp mount``: segment files read through a real FUSE mount (as root, pyfuse3 + fuse3) and
compared byte for byte with the broker's files: through the sidecar over UCX, over the HTTP
fallback, with UCX disabled; listings that follow rolls and retention; and the lifecycle
(SIGKILL leaves no mount, SIGTERM during a stuck read unmounts within the grace period)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kelp_procs import Cluster, Proc

pytestmark = pytest.mark.timeout(180)  # the thread method (pyproject): safe around FUSE

TOPIC = "mounted"


@dataclass
class Rig:
    cluster: Cluster
    sidecar: Proc
    socket: Path
    sidecar_http: int
    mountpoint: Path
    workdir: Path

    def mount(self, *args: str, name: str = "mount") -> Proc:
        proc = Proc(name, [sys.executable, "-m", "rdma.mount", str(self.mountpoint),
                           "--broker", f"127.0.0.1:{self.cluster.broker_port}",
                           "--sidecar", str(self.socket), "--refresh-ms", "200", *args],
                    self.workdir / f"{name}.log")
        proc.start()
        return proc

    def partition_dir(self, partition: int = 0) -> Path:
        return self.mountpoint / "topics" / TOPIC / str(partition)

    def on_disk(self, name: str, partition: int = 0) -> bytes:
        return (self.cluster.data_dir / f"{TOPIC}-{partition}" / name).read_bytes()

    def sidecar_stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.sidecar_http}/stats",
                                    timeout=5) as reply:
            return json.loads(reply.read())["counters"]


def _mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text()
               .splitlines())


def _unmount(proc: Proc, mountpoint: Path) -> None:
    """Stop a mount however it is doing, and make sure nothing stays mounted."""
    proc.stop(timeout=10)
    if _mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                       capture_output=True, timeout=10)


def _produce(cluster: Cluster, count: int, partitions: int = 2) -> None:
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 2})
    rng = random.Random(count)
    for i in range(count):
        producer.produce(TOPIC, value=rng.randbytes(rng.randrange(200, 2000)),
                         partition=i % partitions)
    assert producer.flush(30) == 0


def _rig(tmp_path: Path, *sidecar_args: str) -> Iterator[Rig]:
    cluster = Cluster(tmp_path / "c", gateway_args=["--no-registry"],
                      broker_args=["--chunk-bytes", str(1 << 20)])
    sidecar = None
    try:
        cluster.start()
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic(TOPIC, 2, 1, config={
            "segment.bytes": str(3 << 20)})])[TOPIC].result(10)
        _produce(cluster, 8000)
        sidecar, socket, http_port = cluster.sidecar("sidecar", *sidecar_args)
        sidecar.start()
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        yield Rig(cluster, sidecar, socket, http_port, mountpoint, tmp_path)
    finally:
        if sidecar is not None:
            sidecar.stop()
        cluster.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path)


def _check_every_segment(rig: Rig) -> int:
    """``cat`` each segment file and pread random ranges from another process; compare."""
    checked = 0
    for partition in (0, 1):
        names = sorted(p.name for p in rig.partition_dir(partition).iterdir()
                       if p.name.endswith(".log"))
        assert len(names) >= 2, names
        for name in names:
            path = rig.partition_dir(partition) / name
            want = rig.on_disk(name, partition)
            assert subprocess.run(["cat", str(path)], capture_output=True, check=True,
                                  timeout=60).stdout == want, name
            assert path.stat().st_size == len(want)
            rng = random.Random(name)
            ranges = [(rng.randrange(len(want)), rng.randrange(1, 200_000)) for _ in range(20)]
            script = ("import json, os, sys\n"
                      "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                      "for off, size in json.loads(sys.argv[2]):\n"
                      "    sys.stdout.buffer.write(os.pread(fd, size, off))\n")
            got = subprocess.run([sys.executable, "-c", script, str(path), json.dumps(ranges)],
                                 capture_output=True, check=True, timeout=60).stdout
            assert got == b"".join(want[o:o + s] for o, s in ranges), name
            checked += 1
    return checked


def test_segment_files_read_byte_exact_over_ucx(rig: Rig) -> None:
    mount = rig.mount()
    try:
        before = rig.sidecar_stats()
        assert _check_every_segment(rig) >= 4
        info = json.loads((rig.partition_dir(0) / "info").read_text())
        assert info["high_watermark"] == 4000 and info["log_start_offset"] == 0
        after = rig.sidecar_stats()
        assert after["rdma_reads"] > before["rdma_reads"]
        assert after["fallback_reads"] == before["fallback_reads"] == 0
    finally:
        _unmount(mount, rig.mountpoint)
    assert mount.popen.returncode == 0
    assert not _mounted(rig.mountpoint)


def test_fallback_to_the_broker_when_the_sidecar_is_down(rig: Rig) -> None:
    rig.sidecar.stop()
    mount = rig.mount()
    try:
        assert _check_every_segment(rig) >= 4
    finally:
        _unmount(mount, rig.mountpoint)


@pytest.fixture
def http_sidecar_rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path, "--no-ucx")


def test_reads_with_ucx_disabled(http_sidecar_rig: Rig) -> None:
    rig = http_sidecar_rig
    mount = rig.mount()
    try:
        assert _check_every_segment(rig) >= 4
        stats = rig.sidecar_stats()
        assert stats["rdma_reads"] == 0 and stats["fallback_reads"] > 0
    finally:
        _unmount(mount, rig.mountpoint)


def test_rolls_and_retention_show_in_the_tree(rig: Rig) -> None:
    mount = rig.mount()
    try:
        before = sorted(p.name for p in rig.partition_dir(0).iterdir())
        _produce(rig.cluster, 8000)  # rolls new segments
        time.sleep(0.5)
        grown = sorted(p.name for p in rig.partition_dir(0).iterdir())
        assert len(grown) > len(before)
        admin = AdminClient({"bootstrap.servers": rig.cluster.bootstrap})
        cut = int(grown[1].removesuffix(".log"))
        admin.delete_records([TopicPartition(TOPIC, 0, cut)])[
            TopicPartition(TOPIC, 0, cut)].result(10)
        time.sleep(0.5)
        after = sorted(p.name for p in rig.partition_dir(0).iterdir())
        assert grown[0] not in after and grown[1] in after
        assert json.loads((rig.partition_dir(0) / "info").read_text())[
            "log_start_offset"] == cut
    finally:
        _unmount(mount, rig.mountpoint)


def test_sigkill_leaves_no_mount_behind(rig: Rig) -> None:
    mount = rig.mount()
    try:
        assert _mounted(rig.mountpoint)
        mount.kill()
        deadline = time.monotonic() + 10
        while _mounted(rig.mountpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _mounted(rig.mountpoint), "auto_unmount should have removed the mount"
        # And the mountpoint is usable again at once.
        again = rig.mount(name="mount-again")
        _unmount(again, rig.mountpoint)
    finally:
        _unmount(mount, rig.mountpoint)


def test_sigterm_during_a_stuck_read_unmounts_within_the_grace_period(rig: Rig) -> None:
    mount = rig.mount("--grace-ms", "1000", "--timeout-ms", "60000")
    reader = None
    try:
        target = rig.partition_dir(1) / sorted(
            p.name for p in rig.partition_dir(1).iterdir() if p.name.endswith(".log"))[0]
        os.kill(rig.sidecar.popen.pid, signal.SIGSTOP)  # every read now hangs
        reader = subprocess.Popen(["cat", str(target)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        assert reader.poll() is None, "the read should be stuck"
        started = time.monotonic()
        mount.signal(signal.SIGTERM)
        mount.popen.wait(10)
        assert time.monotonic() - started < 5
        assert "cancelling them" in mount.log_text()
        assert not _mounted(rig.mountpoint)
    finally:
        os.kill(rig.sidecar.popen.pid, signal.SIGCONT)
        if reader is not None:
            reader.kill()
            reader.wait(10)
        _unmount(mount, rig.mountpoint)


def test_a_dead_mount_is_cleared_at_start(rig: Rig) -> None:
    mount = rig.mount()
    try:
        # Kill the auto_unmount helper first, then the mount: the mount point is left dead.
        helpers = subprocess.run(["pgrep", "-f", f"fusermount3.*{rig.mountpoint}"],
                                 capture_output=True, text=True).stdout.split()
        for pid in helpers:
            os.kill(int(pid), signal.SIGKILL)
        mount.kill()
        time.sleep(0.2)
        if helpers:
            assert _mounted(rig.mountpoint)
        again = rig.mount(name="mount-again")
        try:
            assert "clearing a dead mount" in again.log_text() or not helpers
            assert _check_every_segment(rig) >= 4
        finally:
            _unmount(again, rig.mountpoint)
    finally:
        _unmount(mount, rig.mountpoint)
