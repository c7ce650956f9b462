"""Only kelp's own processes reach the broker: with ``--cluster-token-file`` every gRPC call and
every HTTP data route needs the token, so a gateway or sidecar without it gets nothing (no
UCX lease, no chunk, no ACL change) while the ones given it work. The sidecar's socket gets
its mode explicitly, whatever the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests.kelp_procs import REPO, Cluster, Proc, free_port

pytestmark = pytest.mark.timeout(240)
TOPIC = "guarded"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[Cluster, Path]]:
    token = tmp_path / "cluster.token"
    cluster = Cluster(tmp_path / "c", broker_args=["--cluster-token-file", str(token)],
                      gateway_args=["--no-registry", "--broker-token-file", str(token)])
    try:
        cluster.start()
        producer = Producer({"bootstrap.servers": cluster.bootstrap})
        for i in range(100):
            producer.produce(TOPIC, b"record-%d" % i)
        assert producer.flush(20) == 0
        yield cluster, token
    finally:
        cluster.stop()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def first_chunk(cluster: Cluster, token: str) -> dict:
    status, body = http_get(
        f"http://127.0.0.1:{cluster.broker_http_port}/segments?topic={TOPIC}&partition=0",
        {"x-kelp-token": token})
    assert status == 200, body
    return json.loads(body)["segments"][0]["chunks"][0]


def test_the_token_is_made_private_and_required(guarded: tuple[Cluster, Path]) -> None:
    cluster, token_file = guarded
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) == 64
    # The broker's HTTP data routes: 401 without the token, data with it.
    url = f"http://127.0.0.1:{cluster.broker_http_port}/segments?topic={TOPIC}&partition=0"
    assert http_get(url)[0] == 401
    assert http_get(url, {"x-kelp-token": "0" * 64})[0] == 401
    assert http_get(url, {"x-kelp-token": token})[0] == 200
    assert http_get(f"http://127.0.0.1:{cluster.broker_http_port}/health")[0] == 200
    # A gateway without the token reaches no broker: its clients see no topics.
    stranger, port, _http = cluster.extra_gateway("stranger")
    stranger.command = [arg for arg in stranger.command
                        if arg not in ("--broker-token-file", str(token_file))]
    stranger.start()
    try:
        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(
            topic=TOPIC, timeout=10)
        assert metadata.topics[TOPIC].error is not None
        assert "UNAUTHENTICATED" in stranger.log_text() or "cluster token" in (
            cluster.broker.log_text())
    finally:
        stranger.stop()


def sidecar_read(cluster: Cluster, name: str, *args: str) -> tuple[int, bytes, dict]:
    proc, _socket, http_port = cluster.sidecar(name, *args)
    proc.start()
    try:
        chunk = first_chunk(cluster, (cluster.workdir.parent / "cluster.token").read_text()
                            .strip())
        url = (f"http://127.0.0.1:{http_port}/read?file_id={chunk['file_id']}&offset=0"
               f"&size={min(chunk['size'], 4096)}")
        request = urllib.request.Request(url)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, reply.read(), dict(reply.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)
    finally:
        proc.stop()


def test_only_a_sidecar_with_the_token_gets_a_lease(guarded: tuple[Cluster, Path]) -> None:
    cluster, token_file = guarded
    log = (cluster.data_dir / f"{TOPIC}-0" / f"{0:020d}.log").read_bytes()
    status, data, headers = sidecar_read(cluster, "trusted", "--broker-token-file",
                                         str(token_file))
    assert status == 200, data
    assert data == log[:len(data)]
    assert headers.get("x-kelp-transport") == "ucx"  # the broker granted it a UCX lease
    status, data, _headers = sidecar_read(cluster, "untrusted")
    assert status >= 500, (status, data)  # neither a UCX lease nor the copying fallback
    assert b"UNAUTHENTICATED" in data or b"cluster token" in data


def test_a_world_readable_token_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "cluster.token"
    token.write_text("a" * 64 + "\n")
    token.chmod(0o644)
    run = subprocess.run(
        [sys.executable, "-m", "broker", "--data-dir", str(tmp_path / "data"), "--grpc",
         f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}", "--no-ucx",
         "--cluster-token-file", str(token)], cwd=REPO, capture_output=True, text=True,
        timeout=60)
    assert run.returncode != 0
    assert "chmod 600" in run.stderr


def start_sidecar(tmp_path: Path, name: str, *args: str, umask: int = 0) -> Proc:
    socket = tmp_path / f"{name}.sock"
    proc = Proc(name, ["sh", "-c", f"umask {umask:03o} && exec {sys.executable} -m rdma "
                       f"--socket {socket} --http 127.0.0.1:{free_port()} --no-ucx "
                       f"--broker 127.0.0.1:{free_port()} " + " ".join(args)],
                tmp_path / f"{name}.log")
    proc.start()
    return proc


def test_the_sidecar_socket_mode_is_set_not_inherited(tmp_path: Path) -> None:
    default = start_sidecar(tmp_path, "default", umask=0)
    try:
        for path in (tmp_path / "default.sock", tmp_path / "default.reads.sock"):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    finally:
        default.stop()
    group = start_sidecar(tmp_path, "group", "--socket-mode", "0660", "--socket-group",
                          str(os.getgid()), umask=0o077)
    try:
        for path in (tmp_path / "group.sock", tmp_path / "group.reads.sock"):
            info = os.stat(path)
            assert stat.S_IMODE(info.st_mode) == 0o660, path
            assert info.st_gid == os.getgid()
    finally:
        group.stop()
    bad = subprocess.run([sys.executable, "-m", "rdma", "--socket", str(tmp_path / "x.sock"),
                          "--socket-mode", "4777"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2
    assert "at most 0777" in bad.stderr
