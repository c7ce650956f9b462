"""``kelp up`` reaches every option of its three processes: a kelp.toml with broker configs
by Kafka's names and any process's flags, and ``--broker-config`` pairs; a config the broker
would refuse stops ``up`` with one line before anything starts."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tests.kelp_procs import REPO, free_port
from tests.kelp_up import running_up

KELP_TOML = """
[broker]
num.partitions = 3
"log.retention.ms" = 86400000

[gateway.flags]
max-connections = 500
"""


def test_kelp_toml_sets_broker_configs_and_gateway_flags(tmp_path: Path) -> None:
    config = tmp_path / "kelp.toml"
    config.write_text(KELP_TOML)
    # A context manager, so kelp up is killed when the test ends, whatever happens in it.
    with contextlib.contextmanager(running_up)(
            tmp_path, ("--config-file", str(config),
                       "--broker-config", "group.min.session.timeout.ms=1000")) as up:
        admin = AdminClient({"bootstrap.servers": up.bootstrap})
        admin.list_topics("made-by-metadata", timeout=30)  # auto-creates it
        topics = admin.list_topics("made-by-metadata", timeout=30).topics
        assert len(topics["made-by-metadata"].partitions) == 3
        resource = ConfigResource(ResourceType.BROKER, "0")
        configs = admin.describe_configs([resource])[resource].result(30)
        assert configs["num.partitions"].value == "3"
        assert configs["log.retention.ms"].value == "86400000"
        assert configs["group.min.session.timeout.ms"].value == "1000"
        assert configs["max.connections"].value == "500"


def test_a_config_the_broker_would_refuse_stops_up_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "kelp.toml"
    config.write_text("[broker]\nlog.retention.msec = 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "kelp", "up", "--config-file", str(config),
         "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
         "--kafka", f"127.0.0.1:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "log.retention.msec" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
