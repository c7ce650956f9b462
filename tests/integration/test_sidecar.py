"""The real ``python -m rdma`` process: HTTP and gRPC surfaces, honest capabilities, strict /read
validation, and a clean stop on SIGTERM/SIGINT. No broker runs, so /ping and /read must say so
clearly (the data path against a real broker is tests/integration/test_rdma_reads.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio_asyncio

from kelp import grpc
from kelp.routes import SIDECAR
from kelp.rpc.sidecar import v1 as sidecar_pb
from tests.kelp_procs import Proc, free_port

pytestmark = pytest.mark.timeout(60)


@dataclass
class Sidecar:
    proc: Proc
    socket: Path
    http_port: int
    broker_http_port: int

    def get(self, target: str) -> tuple[int, dict]:
        url = f"http://127.0.0.1:{self.http_port}{target}"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def start_sidecar(workdir: Path) -> Sidecar:
    socket = workdir / "run" / "sidecar.sock"  # "run" does not exist yet: the sidecar makes it
    http_port, broker_http_port = free_port(), free_port()  # nothing listens on the latter
    proc = Proc("sidecar", [
        sys.executable, "-m", "rdma", "--socket", str(socket),
        "--http", f"127.0.0.1:{http_port}", "--broker", "127.0.0.1:17999",
        "--broker-http", f"127.0.0.1:{broker_http_port}"], workdir / "sidecar.log")
    try:
        proc.start()  # raises with the log tail if no ready line comes
    except BaseException:
        proc.kill()  # it may still be running (no ready line in time)
        raise
    return Sidecar(proc, socket, http_port, broker_http_port)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    running = start_sidecar(tmp_path_factory.mktemp("sidecar"))
    try:
        yield running
    finally:
        running.proc.stop(timeout=5)  # SIGTERM, then SIGKILL if it lingers


def test_health(sidecar: Sidecar) -> None:
    status, body = sidecar.get("/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["version"]
    assert body["broker"] == "127.0.0.1:17999"


def test_capabilities_are_honest(sidecar: Sidecar) -> None:
    status, body = sidecar.get("/capabilities")
    assert status == 200
    # No endpoint has been opened yet (no broker), so no transport is claimed.
    assert body["transports"] == []
    assert body["verbs"] is False
    assert body["http_fallback"] is True
    assert body["ucx"] is (body["reason"] == "")  # UCX is up here, or says why not
    assert body["grpc_socket"] == str(sidecar.socket)
    assert "Read" in body["grpc_methods"]


def test_ping_without_a_broker_reports_a_clear_error(sidecar: Sidecar) -> None:
    status, body = sidecar.get("/ping")
    assert status == 502
    assert body["status"] == "error"
    assert body["target"] == f"http://127.0.0.1:{sidecar.broker_http_port}/health"
    assert "refused" in body["error"].lower()


VALID_FILE_ID = "3,01637037d6"


@pytest.mark.parametrize("params, complaint", [
    ({}, "missing file_id"),
    ({"file_id": VALID_FILE_ID, "offset": "0"}, "missing parameter(s): size"),
    ({"file_id": VALID_FILE_ID, "size": "1"}, "missing parameter(s): offset"),
    ({"file_id": "3,637037d6", "offset": "0", "size": "1"}, "9 to 24 hex digits"),
    ({"file_id": "3", "offset": "0", "size": "1"}, "no comma"),
    ({"file_id": "x,01637037d6", "offset": "0", "size": "1"}, "volume"),
    ({"file_id": VALID_FILE_ID, "offset": "-1", "size": "1"}, "offset must be"),
    ({"file_id": VALID_FILE_ID, "offset": "1.5", "size": "1"}, "offset must be"),
    ({"file_id": VALID_FILE_ID, "offset": "", "size": "1"}, "offset must be"),
    ({"file_id": VALID_FILE_ID, "offset": "0", "size": "0"}, "size must be"),
    ({"file_id": VALID_FILE_ID, "offset": "0", "size": "abc"}, "size must be"),
    ({"file_id": VALID_FILE_ID, "offset": "0", "size": str(2**40)}, "size must be"),
    ({"file_id": VALID_FILE_ID, "offset": "0", "size": "1", "sise": "2"}, "unknown parameter"),
    ({"file_id": VALID_FILE_ID, "volume": "3", "offset": "0", "size": "1"}, "not both"),
    ({"volume": "3", "needle": "1", "cookie": "637037d6", "offset": "0", "size": "1"},
     "cookie must be decimal or hex with a 0x prefix"),
    ({"volume": "3", "needle": "1", "offset": "0", "size": "1"}, "missing parameter(s): cookie"),
])
def test_read_rejects_bad_parameters(sidecar: Sidecar, params: dict, complaint: str) -> None:
    status, body = sidecar.get("/read?" + urllib.parse.urlencode(params))
    assert status == 400
    assert complaint in body["error"]


def test_read_rejects_repeated_parameters(sidecar: Sidecar) -> None:
    status, body = sidecar.get(f"/read?file_id={VALID_FILE_ID}&offset=0&size=1&size=2")
    assert status == 400
    assert "more than once" in body["error"]


@pytest.mark.parametrize("query", [
    f"file_id={VALID_FILE_ID}&offset=4096&size=1024",
    "volume=3&needle=1&cookie=0x637037d6&offset=4096&size=1024",
    "volume=3&needle=0x01&cookie=1668298710&offset=4096&size=1024",
])
def test_valid_read_without_a_broker_names_both_causes(sidecar: Sidecar, query: str) -> None:
    status, body = sidecar.get(f"/read?{query}")
    assert status == 502
    assert "UCX:" in body["error"] and "fallback:" in body["error"]
    assert "refused" in body["error"].lower()
    assert body["request"] == {"file_id": VALID_FILE_ID, "volume": 3, "needle_key": "0x1",
                               "cookie": "0x637037d6", "offset": 4096, "size": 1024}


def test_stats_count_requests(sidecar: Sidecar) -> None:
    _, before = sidecar.get("/stats")
    sidecar.get("/read?file_id=nope&offset=0&size=1")
    sidecar.get(f"/read?file_id={VALID_FILE_ID}&offset=0&size=1")
    status, after = sidecar.get("/stats")
    assert status == 200
    assert after["uptime_ms"] >= before["uptime_ms"]
    delta = {k: after["counters"][k] - before["counters"][k] for k in after["counters"]}
    assert delta["http_requests"] == 3  # two reads and the first /stats
    assert delta["read_requests"] == 2
    assert delta["read_rejected"] == 1
    assert delta["read_failed"] == 1
    assert delta["reads"] == delta["read_bytes"] == 0


def test_unknown_path_is_404(sidecar: Sidecar) -> None:
    status, body = sidecar.get("/read/../../etc/passwd")
    assert status == 404
    assert "/read" in body["paths"]


async def test_grpc_health_and_stats_over_the_unix_socket(sidecar: Sidecar) -> None:
    async with trio_asyncio.open_loop():
        channel = grpc.Channel(grpc.Address(path=str(sidecar.socket)))
        try:
            health = await channel.call(SIDECAR.health, sidecar_pb.HealthRequest(), timeout=5)
            stats = await channel.call(SIDECAR.stats, sidecar_pb.StatsRequest(), timeout=5)
        finally:
            channel.close()
    assert health.status == "ok"
    assert health.version
    assert health.broker == "127.0.0.1:17999"
    assert stats.uptime_ms > 0
    assert stats.counters["grpc_requests"] >= 2
    assert "read_requests" in stats.counters


def test_one_ready_line_and_nothing_per_request_at_info(sidecar: Sidecar) -> None:
    for _ in range(3):
        sidecar.get("/health")
        sidecar.get("/read?file_id=bad&offset=0&size=1")
    lines = [line for line in sidecar.proc.log_text().splitlines() if line.strip()]
    ready = [line for line in lines if "msg=ready" in line]
    assert len(ready) == 1
    assert f"socket={sidecar.socket}" in ready[0]
    assert f"http=127.0.0.1:{sidecar.http_port}" in ready[0]
    assert lines == ready, "per-request lines were logged at INFO"


def test_a_second_sidecar_refuses_a_live_socket(sidecar: Sidecar) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "rdma", "--socket", str(sidecar.socket),
         "--http", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "another process is serving" in second.stderr
    assert sidecar.socket.exists()  # the first one's socket is untouched
    assert sidecar.get("/health")[0] == 200


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    running = start_sidecar(tmp_path)
    try:
        assert running.socket.exists()
        assert running.proc.popen is not None
        running.proc.popen.send_signal(signum)
        assert running.proc.popen.wait(timeout=5) == 0
        assert not running.socket.exists()
    finally:
        running.proc.kill()
