"""compose/compose.yaml and compose/cluster.yaml must start processes that exist, with flags
they accept.

There is no Docker engine here, so the file is checked against the code instead: every service
runs ``python -m <module>`` from the one image, every ``--flag`` it passes appears in that
module's ``--help``, the whole argument list gets through the module's own ``parse_args``, and
the Dockerfile copies the module's package into the image.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kelp_procs import REPO

COMPOSE = REPO / "compose" / "compose.yaml"
CLUSTER = REPO / "compose" / "cluster.yaml"
DOCKERFILE = REPO / "compose" / "Dockerfile"

pytestmark = pytest.mark.timeout(60)


def _services(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())["services"]


SERVICES = _services(COMPOSE)
CLUSTER_SERVICES = _services(CLUSTER)
# Every kelp process of both files, by "file:service" (etcd, in the cluster, is not kelp's).
KELP_SERVICES = {**{f"compose:{n}": s for n, s in SERVICES.items()},
                 **{f"cluster:{n}": s for n, s in CLUSTER_SERVICES.items() if n != "etcd"}}


def _command(name: str) -> list[str]:
    command = (KELP_SERVICES.get(name) or SERVICES[name])["command"]
    # Exec form only: a shell string would need shell parsing to check, and a shell as PID 1
    # would swallow SIGTERM.
    assert isinstance(command, list), f"{name}: command must be an exec-form list"
    assert command[:2] == ["python", "-m"], f"{name}: expected python -m <module>, got {command}"
    return command


def _flags(arguments: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in arguments if arg.startswith("--")]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=30)


def test_the_three_processes_are_there() -> None:
    assert {name: _command(name)[2] for name in SERVICES} == {
        "broker": "broker", "gateway": "gateway", "sidecar": "rdma"}


@pytest.mark.parametrize("name", sorted(KELP_SERVICES))
def test_every_flag_appears_in_the_module_help(name: str) -> None:
    command = _command(name)
    shown = _run("-m", command[2], "--help")
    assert shown.returncode == 0, shown.stderr
    flags = _flags(command[3:])
    assert flags, f"{name} passes no flags"
    for flag in flags:
        # Whole flag only: "--http" must not be satisfied by "--http-port".
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", shown.stdout), (
            f"{name}: {flag} is not in `python -m {command[2]} --help`:\n{shown.stdout}")


@pytest.mark.parametrize("name", sorted(KELP_SERVICES))
def test_the_arguments_parse(name: str) -> None:
    command = _command(name)
    module = command[2]
    check = ("import sys\n"
             f"from {module}.__main__ import parse_args\n"
             "parse_args(sys.argv[1:])\n")
    parsed = _run("-c", check, *command[3:])
    assert parsed.returncode == 0, f"{name}: {command[3:]} rejected:\n{parsed.stderr}"


@pytest.mark.parametrize("name", sorted(KELP_SERVICES))
def test_every_service_uses_the_one_image(name: str) -> None:
    service = KELP_SERVICES[name]
    assert service["image"] == "kelp:local"
    assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO
    assert (REPO / service["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_the_image_contains_every_module_a_service_runs() -> None:
    copied = {Path(line.split()[1]).parts[0] for line in DOCKERFILE.read_text().splitlines()
              if line.startswith("COPY ")}
    for name in KELP_SERVICES:
        module = _command(name)[2]
        assert module in copied, f"{name}: compose/Dockerfile does not COPY {module}/"
        assert (REPO / module / "__main__.py").exists()


def test_the_cluster_file_wires_brokers_and_gateways_through_etcd() -> None:
    """Three brokers with distinct ids, each advertising its own service name; gateways and
    brokers on the etcd the etcd service advertises."""
    etcd = CLUSTER_SERVICES["etcd"]["command"]
    endpoint = etcd[etcd.index("--advertise-client-urls") + 1].removeprefix("http://")

    def flag(name: str, wanted: str) -> str:
        command = _command(f"cluster:{name}")
        return command[command.index(wanted) + 1]

    brokers = [n for n in CLUSTER_SERVICES if n.startswith("broker")]
    gateways = [n for n in CLUSTER_SERVICES if n.startswith("gateway")]
    assert len(brokers) == 3 and len(gateways) == 2
    assert sorted(flag(n, "--broker-id") for n in brokers) == ["0", "1", "2"]
    for name in brokers:
        assert flag(name, "--advertise") == f"{name}:17777"
        assert flag(name, "--ucx-advertise") == f"{name}:17779"
        assert flag(name, "--etcd") == endpoint
    assert sorted(flag(n, "--node-id") for n in gateways) == ["0", "1"]
    for name in gateways:
        assert flag(name, "--etcd") == endpoint
        assert flag(name, "--broker").split(":")[0] in brokers


def test_prometheus_scrapes_each_process_on_its_http_port() -> None:
    """compose/prometheus.yml's targets are the services' --http ports, by service name."""
    config = yaml.safe_load((REPO / "compose" / "prometheus.yml").read_text())
    targets = {target for job in config["scrape_configs"]
               for group in job["static_configs"] for target in group["targets"]}
    wanted = set()
    for name in ("broker", "gateway", "sidecar"):
        command = _command(name)
        port = command[command.index("--http") + 1].rsplit(":", 1)[1]
        wanted.add(f"{name}:{port}")
    assert targets == wanted
    monitoring = yaml.safe_load((REPO / "compose" / "monitoring.yaml").read_text())
    grafana = monitoring["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    assert (REPO / "compose" / "grafana" / "dashboards" / "kelp.json").is_file()
