"""A private broker + gateway for a fuzz run: free loopback ports, a temp dir, always stopped.

The fuzzer starts its own processes (rather than importing the test suite's fixtures) so
``python -m kelp.fuzz`` works from any directory. Each child runs in its own session, so
stopping it kills its whole process group, and ``stop`` is safe to call twice or after a crash.
The gateway may advertise another address than it listens on: the corpus capture puts a
recording proxy in front of it, and clients must come back through the proxy after bootstrap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    name: str
    command: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def start(self) -> None:
        seen = len(self.log_text())  # a reused workdir's log has an old ready line
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "msg=ready" not in self.log_text()[seen:]:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n"
                                   f"{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {READY_TIMEOUT_S}s")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)  # type: ignore[union-attr]


@dataclass
class Stack:
    """Broker and gateway with data in ``workdir/data`` and logs in ``workdir``."""

    workdir: Path
    advertise: str | None = None
    kafka_port: int = field(default_factory=free_port)
    gateway_http_port: int = field(default_factory=free_port)
    broker_port: int = field(default_factory=free_port)
    broker_http_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.data_dir = self.workdir / "data"
        python = sys.executable
        # A short initial rebalance delay: the capture's consumer groups form in a blink.
        self.broker = Child("broker", [
            python, "-m", "broker", "--data-dir", str(self.data_dir),
            "--grpc", f"127.0.0.1:{self.broker_port}",
            "--http", f"127.0.0.1:{self.broker_http_port}", "--no-ucx",
            "--group-initial-rebalance-delay-ms", "100"], self.workdir / "broker.log")
        advertise = ["--advertise", self.advertise] if self.advertise else []
        self.gateway = Child("gateway", [
            python, "-m", "gateway", "--listen", self.bootstrap, *advertise,
            "--broker", f"127.0.0.1:{self.broker_port}",
            "--http", f"127.0.0.1:{self.gateway_http_port}"], self.workdir / "gateway.log")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def broker_http(self) -> str:
        return f"127.0.0.1:{self.broker_http_port}"

    @property
    def children(self) -> list[Child]:
        return [self.broker, self.gateway]

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker.start()
            self.gateway.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Gateway first: it lets go of the broker before the broker goes.
        self.gateway.stop()
        self.broker.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
