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
from pathlib import Path

import pytest

from tests.kelp_procs import REPO, free_port
from tests.kelp_up import Up, leftovers, running_up, start_up


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    yield from running_up(tmp_path)


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
    # One line per address taken (kafka, gateway http, broker grpc/http/ucx, sidecar http,
    # console, console tail), nothing else.
    assert "Traceback" not in text and len(text.splitlines()) <= 8


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
