"""A real etcd (Debian's etcd-server) on free loopback ports, for the cluster tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.kelp_procs import Proc, free_port


def require_etcd() -> None:
    assert shutil.which("etcd"), ("the cluster tests need Debian's etcd-server "
                                  "(apt-get install etcd-server)")


@dataclass
class EtcdServer:
    workdir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = Proc("etcd", [
            "etcd", "--name", "kelp", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"kelp={peer}"], self.workdir / "etcd.log",
            ready="ready to serve client requests")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> EtcdServer:
        require_etcd()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc.start()
        return self

    def stop(self) -> None:
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()
