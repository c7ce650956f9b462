"""The README's first command on a fresh clone: ``just up`` reaches ready and serves kcat.

The clone is fresh (``git clone`` of the committed tree) and so is the virtualenv; it sees the
already-installed dependencies (``--system-site-packages``) so the test does not download the
world, but kelp itself is installed from the clone by the README's own ``pip install -e .``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.kelp_procs import REPO, free_port
from tests.registry_http import avro_record, ok


def _get_json(url: str, headers: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def test_just_up_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "kelp"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    subprocess.run(["python3", "-m", "pip", "install", "-q", "-e", "."],
                   cwd=clone, env=env, check=True, timeout=300)

    ports = {name: free_port() for name in
             ("kafka", "registry", "broker", "broker-http", "sidecar-http", "ucx")}
    args = [f"--{name}=127.0.0.1:{port}" for name, port in ports.items()]
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(["just", "up", *args], cwd=clone, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"kelp is ready" not in log_path.read_bytes():
            assert up.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        bootstrap = f"127.0.0.1:{ports['kafka']}"
        metadata = subprocess.run(["kcat", "-L", "-b", bootstrap], capture_output=True,
                                  text=True, timeout=30, check=True).stdout
        assert f"broker 0 at {bootstrap}" in metadata
        # The Schema Registry answers on the gateway's HTTP port (the leader is elected
        # through the broker's group coordinator; a write waits for it).
        registry = f"http://127.0.0.1:{ports['registry']}"
        schema = avro_record("UpCheck", ("ok", "boolean"))
        registered = ok(registry, "POST", "/subjects/up-value/versions", {"schema": schema})
        assert ok(registry, "GET", f"/schemas/ids/{registered['id']}")["schema"]
        # The sidecar reads a segment produced through the gateway, over UCX.
        subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", "up-demo"], input=b"hello\n" * 100,
                       timeout=30, check=True)
        # The broker's data routes want the cluster token `kelp up` made for its processes.
        token = (clone / ".kelp" / "run" / "cluster.token").read_text().strip()
        listing = _get_json(f"http://127.0.0.1:{ports['broker-http']}/segments?topic=up-demo"
                            "&partition=0", {"x-kelp-token": token})
        chunk = listing["segments"][0]["chunks"][0]
        url = (f"http://127.0.0.1:{ports['sidecar-http']}/read?file_id={chunk['file_id']}"
               f"&offset=0&size={chunk['size']}")
        with urllib.request.urlopen(url, timeout=30) as reply:
            assert reply.headers["x-kelp-transport"] == "ucx"
            data = reply.read()
        on_disk = clone / ".kelp" / "data" / "up-demo-0" / f"{0:020d}.log"
        assert data == on_disk.read_bytes()[:chunk["size"]]

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        # just reports the interrupt as 130, the shell convention for Ctrl-C.
        assert up.wait(30) in (0, 130), log_path.read_text()
        for name in ("broker", "gateway", "sidecar"):
            assert f"kelp: {name} stopped (exit code 0)" in log_path.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        # Every kelp process of this test runs the venv's python: none may outlive it.
        leftovers = subprocess.run(["pgrep", "-f", str(venv)], capture_output=True, text=True)
        subprocess.run(["pkill", "-KILL", "-f", str(venv)], check=False)
    assert leftovers.stdout.strip() == "", f"left running: {leftovers.stdout}"
    assert "stopping" in log_path.read_text()
