"""``kelp up`` as a user runs it, for tests: free loopback ports, always killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def start_up(tmp_path: Path, name: str = "up", ports: dict[str, int] | None = None,
             extra: tuple[str, ...] = ()) -> Up:
    ports = ports or {key: free_port() for key in
                      ("kafka", "registry", "broker", "broker-http", "sidecar-http", "ucx",
                       "console", "console-ws")}
    data_dir, run_dir = tmp_path / f"{name}-data", tmp_path / f"{name}-run"
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kelp", "up", "--data-dir", str(data_dir),
             "--run-dir", str(run_dir),
             *[f"--{key}=127.0.0.1:{port}" for key, port in ports.items()], *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    return Up(proc, log_path, ports, data_dir, run_dir)


def leftovers(up: Up) -> list[str]:
    found = []
    for module in ("broker", "gateway", "rdma"):
        found += subprocess.run(["pgrep", "-af", "--", f"-m {module} .*{up.marker(module)}"],
                                capture_output=True, text=True).stdout.split("\n")
    return [line for line in found if line.strip()]


def running_up(tmp_path: Path, extra: tuple[str, ...] = ()) -> Iterator[Up]:
    """A ready ``kelp up`` for a fixture; everything it started is killed afterwards."""
    running = start_up(tmp_path, extra=extra)
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
