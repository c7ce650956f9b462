"""``kelp up`` as a supervisor: restarts, no orphans, clear start-up errors, a locked data dir.

Every test runs a real ``python -m kelp up`` on free loopback ports and kills whatever is left
of it at the end, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kelp_procs import REPO, free_port


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int]
    data_dir: Path
    run_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 60.0, start_at: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log()[start_at:]:
            assert self.proc.poll() is None or needle in self.log(), self.log()[-4000:]
            assert time.monotonic() < deadline, f"no {needle!r}:\n{self.log()[-4000:]}"
            time.sleep(0.1)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    def child_pid(self, module: str) -> int:
        out = subprocess.run(["pgrep", "-f", "--", f"-m {module} .*{self.marker(module)}"],
                             capture_output=True, text=True).stdout.split()
        assert len(out) == 1, out
        return int(out[0])

    def marker(self, module: str) -> str:
        return {"broker": str(self.data_dir), "gateway": f"127.0.0.1:{self.ports['kafka']}",
                "rdma": str(self.run_dir)}[module]


def start_up(tmp_path: Path, name: str = "up", ports: dict[str, int] | None = None) -> Up:
    ports = ports or {key: free_port() for key in
                      ("kafka", "registry", "broker", "broker-http", "sidecar-http", "ucx")}
    data_dir, run_dir = tmp_path / f"{name}-data", tmp_path / f"{name}-run"
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kelp", "up", "--data-dir", str(data_dir),
             "--run-dir", str(run_dir),
             *[f"--{key}=127.0.0.1:{port}" for key, port in ports.items()]],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    return Up(proc, log_path, ports, data_dir, run_dir)


def leftovers(up: Up) -> list[str]:
    found = []
    for module in ("broker", "gateway", "rdma"):
        found += subprocess.run(["pgrep", "-af", "--", f"-m {module} .*{up.marker(module)}"],
                                capture_output=True, text=True).stdout.split("\n")
    return [line for line in found if line.strip()]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = start_up(tmp_path)
    try:
        running.wait_for("kelp is ready")
        yield running
    finally:
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait(10)
        for module in ("broker", "gateway", "rdma"):
            pattern = f"-m {module} .*{running.marker(module)}"
            subprocess.run(["pkill", "-KILL", "-f", "--", pattern], check=False)


def _kcat_metadata(bootstrap: str) -> str:
    return subprocess.run(["kcat", "-L", "-b", bootstrap, "-m", "10"], capture_output=True,
                          text=True, timeout=30).stdout


def test_a_killed_child_is_restarted_while_the_others_serve(up: Up) -> None:
    broker_pid = up.child_pid("broker")
    os.kill(up.child_pid("gateway"), signal.SIGKILL)
    up.wait_for("kelp: gateway exited (signal SIGKILL); restarting")
    deadline = time.monotonic() + 30
    while f"broker 0 at {up.bootstrap}" not in _kcat_metadata(up.bootstrap):
        assert time.monotonic() < deadline, up.log()[-3000:]
        time.sleep(0.2)
    assert up.child_pid("broker") == broker_pid  # the others kept serving
    assert up.proc.poll() is None


def test_sigkill_of_kelp_up_leaves_no_process(up: Up) -> None:
    assert len(leftovers(up)) == 3
    os.killpg(up.proc.pid, signal.SIGKILL)  # only kelp up's own group: children have theirs
    up.proc.wait(10)
    deadline = time.monotonic() + 5
    while leftovers(up):
        assert time.monotonic() < deadline, f"orphans after 5 s: {leftovers(up)}"
        time.sleep(0.1)


def test_a_second_kelp_up_says_which_port_is_taken(up: Up, tmp_path: Path) -> None:
    second = start_up(tmp_path, "second", ports=up.ports)
    assert second.proc.wait(30) == 1
    text = second.log()
    assert f"kelp: port {up.ports['kafka']} (kafka) is in use — is kelp already running" in text
    assert f"(pid {up.child_pid('gateway')})" in text
    assert "Traceback" not in text and len(text.splitlines()) <= 6


def test_a_second_broker_on_the_same_data_dir_is_refused(up: Up) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "broker", "--data-dir", str(up.data_dir), "--grpc",
         f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}", "--no-ucx"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert (f"data dir {up.data_dir} is in use by another broker "
            f"(pid {up.child_pid('broker')})") in second.stderr
    assert "Traceback" not in second.stderr


def test_an_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--data-dir", str(blocker / "data"), "--grpc",
         f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}", "--no-ucx"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "cannot start" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
