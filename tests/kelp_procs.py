"""Start real kelp processes for tests, on free loopback ports, and always clean them up."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0


# Below Linux's ephemeral range (32768-60999 by default): a port picked there and bound a
# moment later by a child could meanwhile become the local end of some outgoing connection
# (a CI run once lost a gateway to exactly that: "Address already in use").
_PORTS = range(20000, 32000)
_handed_out: set[int] = set()  # never the same port twice in one test process


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range."""
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if len(_handed_out) > len(_PORTS) // 2:
            _handed_out.clear()
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # everything taken: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    name: str
    command: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    ready: str = "msg=ready"  # the log line that says it serves

    def start(self) -> None:
        seen = self.launch()
        self.wait_for_log(self.ready, start_at=seen)

    def launch(self) -> int:
        """Start without waiting for the ready line; where in the log this life begins."""
        seen = len(self.log_text())  # a restart must wait for a *new* ready line
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its life
        self.popen = subprocess.Popen(
            self.command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        return seen

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = READY_TIMEOUT_S, *,
                     start_at: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text()[start_at:]:
                return
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n"
                                   f"{self.log_text()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: no {needle!r} in {timeout}s:\n{self.log_text()[-4000:]}")

    def signal(self, signum: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.signal(signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class Cluster:
    """A broker and a gateway on free ports, with data in ``workdir``."""

    replication_factor = 1  # what topics get (ReplicatedCluster has 3)
    workdir: Path
    gateway_args: list[str] = field(default_factory=list)
    broker_args: list[str] = field(default_factory=list)
    kafka_port: int = field(default_factory=free_port)
    gateway_http_port: int = field(default_factory=free_port)
    broker_port: int = field(default_factory=free_port)
    broker_http_port: int = field(default_factory=free_port)
    broker_ucx_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.data_dir = self.workdir / "data"
        self.broker = Proc("broker", [
            sys.executable, "-m", "broker", "--data-dir", str(self.data_dir),
            "--grpc", f"127.0.0.1:{self.broker_port}",
            "--http", f"127.0.0.1:{self.broker_http_port}",
            "--ucx", f"127.0.0.1:{self.broker_ucx_port}", *self.broker_args],
            self.workdir / "broker.log")
        self.gateway = Proc("gateway", [
            sys.executable, "-m", "gateway", "--listen", f"127.0.0.1:{self.kafka_port}",
            "--broker", f"127.0.0.1:{self.broker_port}",
            "--http", f"127.0.0.1:{self.gateway_http_port}", *self.gateway_args],
            self.workdir / "gateway.log")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def start(self) -> Cluster:
        """Start both; if either fails to start, whatever did start is stopped (a test that
        calls this before its own ``try`` leaves no broker behind)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker.start()
            self.gateway.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.broker.stop()

    def kill(self) -> None:
        self.gateway.kill()
        self.broker.kill()

    def restart_broker(self, *, hard: bool) -> None:
        if hard:
            self.broker.kill()
        else:
            self.broker.stop()
        self.broker.start()

    def broker_health(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.broker_http_port}/health")

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_http_port}"

    def extra_gateway(self, name: str, *args: str) -> tuple[Proc, int, int]:
        """Another gateway on the same broker (not started): (proc, kafka port, http port)."""
        kafka_port, http_port = free_port(), free_port()
        proc = Proc(name, [
            sys.executable, "-m", "gateway", "--listen", f"127.0.0.1:{kafka_port}",
            "--broker", f"127.0.0.1:{self.broker_port}", "--http", f"127.0.0.1:{http_port}",
            *self.gateway_args, *args], self.workdir / f"{name}.log")
        return proc, kafka_port, http_port

    def sidecar(self, name: str = "sidecar", *args: str) -> tuple[Proc, Path, int]:
        """A read sidecar on this cluster's broker (not started): (proc, socket, http port)."""
        http_port = free_port()
        socket = self.workdir / f"{name}.sock"
        proc = Proc(name, [
            sys.executable, "-m", "rdma", "--socket", str(socket),
            "--http", f"127.0.0.1:{http_port}", "--broker", f"127.0.0.1:{self.broker_port}",
            "--broker-http", f"127.0.0.1:{self.broker_http_port}", *args],
            self.workdir / f"{name}.log")
        return proc, socket, http_port

    def gateway_health(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.gateway_http_port}/health")

    def versions_seen(self, client_id: str) -> dict[str, int]:
        """API name -> highest version the client with this client id used."""
        url = f"http://127.0.0.1:{self.gateway_http_port}/debug/versions?client_id={client_id}"
        return _get_json(url).get(client_id, {})


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())
