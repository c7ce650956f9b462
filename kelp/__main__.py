"""``kelp``: the command line. ``kelp up`` runs broker, gateway and sidecar together.

Each process is also startable alone (``python -m broker``, ``python -m gateway``,
``python -m rdma``); ``up`` starts them as children with the default addresses of DESIGN §1,
waits until each logs ``ready``, prints where each listens, restarts a child that dies, and
stops all three on Ctrl-C (SIGTERM to each, SIGKILL after a grace period; see ``supervisor``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

import trio

from kelp import secure_up, upconfig
from kelp.secure_up import SecureSetup
from kelp.supervisor import Supervisor, check_ports, first_of, say
from kelp.upconfig import UpConfig, UpConfigError


def up_commands(args: argparse.Namespace, options: UpConfig | None = None,
                secure: SecureSetup | None = None) -> list[tuple[str, list[str]]]:
    """Each child's command line: ``up``'s addresses, the ``--secure`` flags, then the config
    file's options and ``--broker-config`` pairs (later ones win where a flag is given
    twice)."""
    python = sys.executable
    options = options or UpConfig()
    secure_broker = secure_up.broker_flags(secure) if secure else []
    # Only kelp's own processes may call the broker: the broker makes the token, the others
    # read it (the broker starts first).
    token = str(args.run_dir / "cluster.token")
    secure_gateway = (secure_up.gateway_flags(secure, args.kafka, args.advertise) if secure
                      else [])
    broker_configs = [arg for pair in options.broker_configs + args.broker_config
                      for arg in ("--config", pair)]
    # Under --secure the console wants a SCRAM user's credentials, over TLS, and follows ACLs.
    console = ([] if not args.console else
               ["--console", args.console, "--console-ws", args.console_ws,
                *(["--console-auth"] if secure else [])])
    return [
        ("broker", [python, "-m", "broker", "--data-dir", str(args.data_dir),
                    "--grpc", args.broker, "--http", args.broker_http, "--ucx", args.ucx,
                    "--cluster-token-file", token,
                    "--log-level", args.log_level, *broker_configs, *secure_broker,
                    *options.flags["broker"]]),
        ("gateway", [python, "-m", "gateway", "--listen", args.kafka, *console,
                     "--advertise", args.advertise or args.kafka, "--broker", args.broker,
                     "--broker-token-file", token,
                     "--http", args.registry, "--log-level", args.log_level, *secure_gateway,
                     *options.flags["gateway"]]),
        ("sidecar", [python, "-m", "rdma", "--socket", str(args.run_dir / "sidecar.sock"),
                     "--http", args.sidecar_http, "--broker", args.broker,
                     "--broker-token-file", token,
                     "--broker-http", args.broker_http, "--log-level", args.log_level,
                     *options.flags["sidecar"]]),
    ]


def with_port(address: str, offset: int) -> str:
    """``address`` with its port moved by ``offset`` (the i-th broker or gateway of a local
    cluster listens next to the first)."""
    host, port = address.rsplit(":", 1)
    return f"{host}:{int(port) + offset}"


def cluster_commands(args: argparse.Namespace, options: UpConfig
                     ) -> list[tuple[str, list[str]] | tuple[str, list[str], str]]:
    """``kelp up --brokers N --gateways M``: etcd, N brokers in a cluster and M gateways
    routing each partition to its leader, on one machine. Broker i listens at the broker
    addresses' ports + 10*i (HTTP + 100*i), gateway j at the Kafka port + j and the HTTP
    port + 100*j; every gateway's control calls (groups, transactions, configs) go to
    broker 0, and the sidecar reads through broker 0."""
    python = sys.executable
    token = str(args.run_dir / "cluster.token")
    etcd_peer = with_port(args.etcd_client, 1)
    broker_configs = [arg for pair in options.broker_configs + args.broker_config
                      for arg in ("--config", pair)]
    commands: list[tuple[str, list[str]] | tuple[str, list[str], str]] = [(
        "etcd", ["etcd", "--name", "kelp", "--data-dir", str(args.data_dir / "etcd"),
                 "--listen-client-urls", f"http://{args.etcd_client}",
                 "--advertise-client-urls", f"http://{args.etcd_client}",
                 "--listen-peer-urls", f"http://{etcd_peer}",
                 "--initial-advertise-peer-urls", f"http://{etcd_peer}",
                 "--initial-cluster", f"kelp=http://{etcd_peer}"],
        "ready to serve client requests")]
    for i in range(args.brokers):
        commands.append((f"broker{i}", [
            python, "-m", "broker", "--data-dir", str(args.data_dir / f"broker{i}"),
            "--grpc", with_port(args.broker, 10 * i),
            "--http", with_port(args.broker_http, 100 * i),
            "--ucx", with_port(args.ucx, 10 * i), "--cluster-token-file", token,
            "--etcd", args.etcd_client, "--broker-id", str(i),
            # The coordination partition's replicas: as many as there are brokers, up to 3.
            "--config", f"offsets.topic.replication.factor={min(args.brokers, 3)}",
            "--log-level", args.log_level, *broker_configs, *options.flags["broker"]]))
    for j in range(args.gateways):
        kafka = with_port(args.kafka, j)
        console = (["--console", args.console, "--console-ws", args.console_ws]
                   if args.console and j == 0 else [])
        commands.append((f"gateway{j}", [
            python, "-m", "gateway", "--listen", kafka, *console,
            "--advertise", with_port(args.advertise, j) if args.advertise else kafka,
            "--broker", args.broker, "--broker-token-file", token, "--etcd", args.etcd_client,
            "--node-id", str(j),
            "--http", with_port(args.registry, 100 * j), "--log-level", args.log_level,
            *options.flags["gateway"]]))
    commands.append(("sidecar", [
        python, "-m", "rdma", "--socket", str(args.run_dir / "sidecar.sock"),
        "--http", args.sidecar_http, "--broker", args.broker, "--broker-token-file", token,
        "--broker-http", args.broker_http, "--etcd", args.etcd_client,
        "--log-level", args.log_level,
        *options.flags["sidecar"]]))
    return commands


def cluster_addresses(args: argparse.Namespace) -> dict[str, str]:
    addresses = {"etcd": args.etcd_client}
    for i in range(args.brokers):
        addresses[f"broker{i} grpc"] = with_port(args.broker, 10 * i)
        addresses[f"broker{i} http"] = with_port(args.broker_http, 100 * i)
        addresses[f"broker{i} ucx"] = with_port(args.ucx, 10 * i)
    for j in range(args.gateways):
        addresses[f"gateway{j} kafka"] = with_port(args.kafka, j)
        addresses[f"gateway{j} http"] = with_port(args.registry, 100 * j)
    addresses["sidecar http"] = args.sidecar_http
    if args.console:
        addresses.update({"console": args.console, "console tail": args.console_ws})
    return addresses


def load_options(args: argparse.Namespace) -> UpConfig:
    """The config file's options, checked before anything starts: a broker config the broker
    would refuse stops ``up`` with the reason, instead of a child restarted forever."""
    options = UpConfig()
    if args.config_file is not None:
        try:
            options = upconfig.parse(args.config_file.read_text())
        except OSError as exc:
            raise UpConfigError(f"cannot read {args.config_file}: {exc.strerror}") from None
    from broker.broker_configs import BrokerConfigs  # the broker's own rules
    from broker.configs import InvalidConfig

    try:
        BrokerConfigs.from_flags(options.broker_configs + args.broker_config)
    except InvalidConfig as exc:
        raise UpConfigError(str(exc)) from None
    return options


async def run_up(args: argparse.Namespace) -> int:
    try:
        options = load_options(args)
    except UpConfigError as exc:
        say(f"{args.config_file or 'kelp up'}: {exc}")
        return 1
    for directory in (args.run_dir, args.data_dir):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            say(f"cannot create {directory}: {exc.strerror or exc}")
            return 1
    if args.brokers < 1 or args.gateways < 1:
        say("--brokers and --gateways must be at least 1")
        return 1
    if args.brokers > 1 or args.gateways > 1:
        return await run_cluster(args, options)
    problems = check_ports({"kafka": args.kafka, "gateway http": args.registry,
                            "broker grpc": args.broker, "broker http": args.broker_http,
                            "broker ucx": args.ucx, "sidecar http": args.sidecar_http,
                            **({"console": args.console, "console tail": args.console_ws}
                               if args.console else {})})
    for problem in problems:
        say(problem)
    if problems:
        return 1
    secure = None
    if args.secure:
        hosts = sorted({"127.0.0.1", "localhost",
                        *(address.rsplit(":", 1)[0].strip("[]")
                          for address in (args.kafka, args.advertise, args.registry)
                          if address)})
        secure = secure_up.prepare(args.run_dir, args.advertise or args.kafka, hosts)
    scheme = "https" if secure else "http"
    banner = (
        "kelp is ready\n"
        f"  kafka           {args.advertise or args.kafka}"
        f"{'  (SASL_SSL)' if secure else ''}\n"
        f"  schema registry {scheme}://{args.registry}  (gateway HTTP, /health)\n"
        f"  broker grpc     {args.broker}\n"
        f"  broker http     {args.broker_http}  (/health, /metrics, /segments, "
        "/read)\n"
        f"  broker ucx      {args.ucx}  (segment exports for the sidecar)\n"
        f"  sidecar http    {args.sidecar_http}  (/health /stats /ping /read ...)\n"
        + (f"  web console     {scheme}://{args.console}  (live tail: "
           f"{'wss' if secure else 'ws'}://{args.console_ws})"
           f"{'  (log in as a SCRAM user)' if secure else ''}\n"
           if args.console else "")
        + f"  sidecar socket  {args.run_dir / 'sidecar.sock'}\n"
        f"  data dir        {args.data_dir}\n"
        + (secure_up.banner(secure, args.registry) if secure else "")
        + "A child that dies is restarted; Ctrl-C stops all three.")
    return await supervise(Supervisor(up_commands(args, options, secure)), banner)


async def supervise(supervisor: Supervisor, banner: str) -> int:
    """Start every child, print ``banner``, and serve until Ctrl-C or SIGTERM (0) or a child
    that cannot start or keeps dying (1); every child is stopped on the way out."""
    exit_code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                if not await supervisor.start_all(nursery):
                    return 1
                print(banner, flush=True)
                await first_of(signals.__anext__, supervisor.failed.wait)
                if supervisor.failed.is_set():
                    exit_code = 1
            finally:
                with trio.CancelScope(shield=True):
                    await supervisor.stop_all()
                nursery.cancel_scope.cancel()
    return exit_code


async def run_cluster(args: argparse.Namespace, options: UpConfig) -> int:
    """``kelp up --brokers N --gateways M``: a cluster on this machine, with its own etcd."""
    if args.secure:
        say("--secure is not available with --brokers/--gateways yet")
        return 1
    if shutil.which("etcd") is None:
        say("--brokers/--gateways need etcd (Debian: apt-get install etcd-server)")
        return 1
    addresses = cluster_addresses(args)
    problems = check_ports({**addresses, "etcd peer": with_port(args.etcd_client, 1)})
    for problem in problems:
        say(problem)
    if problems:
        return 1
    listing = "".join(f"  {name:16}{address}\n" for name, address in addresses.items())
    return await supervise(Supervisor(cluster_commands(args, options)), (
        f"kelp cluster is ready ({args.brokers} brokers, {args.gateways} gateways)\n"
        f"{listing}  data dir        {args.data_dir}\n"
        "Topics take replication.factor up to the broker count (default.replication.factor: "
        "--broker-config). A child that dies is restarted; Ctrl-C stops all."))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kelp", description="kelp command line")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run broker, gateway and sidecar together")
    sub.add_parser("mount", help="mount topic data read-only (kelp mount --help)",
                   add_help=False)
    sub.add_parser("user", add_help=False,
                   help="SCRAM users of a cluster: list, add, delete (kelp user --help)")
    sub.add_parser("acl", add_help=False,
                   help="ACLs of a cluster: list, add, remove (kelp acl --help)")
    sub.add_parser("loadtest", add_help=False,
                   help="load-test a running kelp (kelp loadtest --help)")
    for name, text in (("topic", "topics: list, describe, create, delete, alter-config, "
                                 "add-partitions"),
                       ("produce", "write records from a file or standard input"),
                       ("consume", "read records (from an offset, a time or a group; "
                                   "--follow)"),
                       ("group", "consumer groups: list, describe with lag, reset-offsets, "
                                 "delete"),
                       ("registry", "Schema Registry: subjects, get, register, check, config"),
                       ("cluster", "cluster info and health"),
                       ("completion", "shell completion script (bash, zsh, fish)")):
        sub.add_parser(name, add_help=False, help=f"{text} (kelp {name} --help)")
    up.add_argument("--data-dir", type=Path, default=Path(".kelp/data"))
    up.add_argument("--run-dir", type=Path, default=Path(".kelp/run"))
    up.add_argument("--kafka", default="127.0.0.1:9092", help="Kafka listener")
    up.add_argument("--advertise", default=None, help="address given to Kafka clients")
    up.add_argument("--registry", default="127.0.0.1:8081",
                    help="gateway HTTP address: Schema Registry REST API and /health")
    up.add_argument("--broker", default="127.0.0.1:17777", help="broker gRPC address")
    up.add_argument("--broker-http", default="127.0.0.1:8082")
    up.add_argument("--ucx", default="127.0.0.1:17779",
                    help="broker UCX listener the sidecar reads segments through")
    up.add_argument("--sidecar-http", default="127.0.0.1:8083")
    up.add_argument("--console", default="127.0.0.1:8080",
                    help="the gateway's web console ('' for none; under --secure it wants a "
                    "SCRAM user's credentials and follows ACLs)")
    up.add_argument("--console-ws", default="127.0.0.1:8090",
                    help="the web console's live tail (WebSocket)")
    up.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    up.add_argument("--config-file", type=Path, default=None, metavar="KELP_TOML",
                    help="options for the three processes: [broker] Kafka broker configs "
                    "(num.partitions = 3), [broker.flags] / [gateway.flags] / [sidecar.flags] "
                    "any of their flags (see README, 'Configuring kelp')")
    up.add_argument("--secure", action="store_true",
                    help="SASL_SSL instead of plaintext, ACLs on, registry over HTTPS with "
                    "Basic auth: makes a CA, a server certificate and an admin user in "
                    "<run-dir>/secure and prints the credentials (README, 'Security')")
    up.add_argument("--brokers", type=int, default=1,
                    help="run a cluster of this many brokers with its own etcd (README, "
                    "'Clusters')")
    up.add_argument("--gateways", type=int, default=1,
                    help="gateways in front of the cluster (Kafka port + 1 each)")
    up.add_argument("--etcd-client", default="127.0.0.1:2379",
                    help="the cluster's etcd client address (its peer port is the next one)")
    up.add_argument("--broker-config", action="append", default=[], metavar="NAME=VALUE",
                    help="a broker config by Kafka's name, e.g. num.partitions=3 "
                    "(repeatable; wins over the config file)")
    return parser.parse_args(argv)


# Commands served by ``kelp.ops`` (click): daily work on a running cluster.
OPS_COMMANDS = ("topic", "produce", "consume", "group", "registry", "cluster", "completion")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mount"]:  # its own parser (and pyfuse3, an optional dependency)
        from rdma.mount.__main__ import main as mount_main

        mount_main(argv[1:])
        return
    if argv[:1] in (["user"], ["acl"]):  # SCRAM users and ACLs over the Kafka protocol
        from kelp.admin_cli import main as admin_main

        sys.exit(admin_main(argv))
    if (argv[:1] and argv[0] in OPS_COMMANDS) or "_KELP_COMPLETE" in os.environ:
        from kelp.ops import main as ops_main  # click + rich: topics, records, groups, ...

        ops_main(argv)
        return
    if argv[:1] == ["loadtest"]:  # its own parser too (python -m kelp.loadtest is the same)
        from kelp.loadtest import main as loadtest_main

        sys.exit(loadtest_main(argv[1:]))
    args = parse_args(argv)
    if args.command == "up":
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        sys.exit(trio.run(run_up, args))


if __name__ == "__main__":
    main()
