"""``python -m broker``: the kelp broker process."""

from __future__ import annotations

# isort: off
import kelp.server_start  # noqa: F401 - first, before anything imports kio
# isort: on

import argparse
import logging
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from broker import metrics as broker_metrics
from broker.broker_configs import BrokerConfigs, check_broker_value
from broker.config_service import defaults_of
from broker.configs import InvalidConfig
from broker.exports import DEFAULT_CHUNK_BYTES, Exports, ExportsHttp
from broker.group_file import GroupFile
from broker.groups import Coordinator
from broker.offsets import OffsetStore
from broker.producer_ids import BlockAllocator, ProducerIds
from broker.security import SecurityStore, read_users_file
from broker.service import BrokerService
from broker.topics import TopicRegistry
from broker.txn_coordinator import TransactionCoordinator
from broker.ucx_export import LEASE_MS, UcxExporter
from kelp import cluster_token, debug, grpc, httpd, logs, process
from kelp import metrics as kelp_metrics
from kelp.address import parse_host_port
from kelp.metrics import Gauges

if TYPE_CHECKING:
    from broker.coordination import Coordination

log = logging.getLogger("kelp.broker")

DEBUG_FAULTS = {
    "append-delay-ms": "wait this long before each append (a slow disk), to exercise "
                       "backpressure",
    "ucx-stop-endpoint": "1 serves POST /debug/ucx-stop on the HTTP port, which ends the UCX "
                         "export while reads go on (fallback drills)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path(".kelp/data"),
                        help="where partition logs and metadata live (default: .kelp/data)")
    parser.add_argument("--grpc", default="127.0.0.1:17777",
                        help="gRPC listen address, HOST:PORT or unix:PATH "
                        "(default: 127.0.0.1:17777)")
    parser.add_argument("--http", default="127.0.0.1:8082",
                        help="HTTP health/metrics address HOST:PORT (default: 127.0.0.1:8082)")
    parser.add_argument("--default-partitions", type=int, default=None,
                        help="partitions of auto-created topics and of CreateTopics with -1 "
                        "(Kafka's num.partitions; default: 1)")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                        help="a broker config by Kafka's name, e.g. log.retention.ms=86400000, "
                        "num.partitions=3, group.min.session.timeout.ms=1000, or a topic "
                        "config's default by the topic name, e.g. flush.ms=1000 (repeatable; "
                        "topics may override topic defaults; the flags above and below win)")
    parser.add_argument("--retention-check-ms", type=int, default=60_000,
                        help="how often each partition applies retention (default: 60000)")
    parser.add_argument("--group-initial-rebalance-delay-ms", type=int, default=None,
                        help="how long a new group waits for more members before its first "
                        "rebalance completes (Kafka's group.initial.rebalance.delay.ms; "
                        "default: 3000)")
    parser.add_argument("--producer-id-expiration-ms", type=int, default=None,
                        help="forget an idempotent producer's state after this long without "
                        "a write (Kafka's producer.id.expiration.ms; default: 86400000)")
    debug.add_option(parser, DEBUG_FAULTS)
    parser.add_argument("--ucx", default="127.0.0.1:17779", metavar="HOST:PORT",
                        help="UCX listener the read sidecar connects to for one-sided reads "
                        "of segment files (default: 127.0.0.1:17779; port 0 picks one)")
    parser.add_argument("--ucx-advertise", default=None, metavar="HOST:PORT",
                        help="UCX address given to sidecars (default: the bound --ucx address)")
    parser.add_argument("--no-ucx", action="store_true",
                        help="do not export segments over UCX (sidecars read over HTTP)")
    parser.add_argument("--ucx-lease-ms", type=int, default=LEASE_MS,
                        help="how long a sidecar's lease keeps a segment mapped "
                        f"(default: {LEASE_MS})")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                        help="size of the chunks segment files are exported in, for the read "
                        f"sidecar (a power of two; default: {DEFAULT_CHUNK_BYTES})")
    parser.add_argument("--grpc-tls-certfile", default=None, metavar="PEM",
                        help="serve gRPC over TLS with this certificate (for gateways on other "
                        "hosts; with --grpc-tls-keyfile)")
    parser.add_argument("--grpc-tls-keyfile", default=None, metavar="PEM")
    parser.add_argument("--cluster-token-file", type=Path, default=None, metavar="FILE",
                        help="require this secret (made, mode 0600, if the file does not exist) "
                        "on every gRPC call and on the HTTP data routes, so only kelp's own "
                        "gateways, sidecars and mounts reach the broker")
    parser.add_argument("--scram-users-file", type=Path, default=None, metavar="FILE",
                        help="create these users (lines name:password; the file must be mode "
                        "0600) with SCRAM-SHA-256 and SCRAM-SHA-512 credentials at start, "
                        "unless they exist; only salted keys are kept (like kafka-storage "
                        "format --add-scram)")
    cluster = parser.add_argument_group("cluster (several brokers, metadata in etcd)")
    cluster.add_argument("--etcd", default=None, metavar="HOST:PORT[,HOST:PORT...]",
                         help="join a cluster whose metadata lives in this etcd (without it the "
                         "broker runs alone, as before)")
    cluster.add_argument("--broker-id", type=int, default=0,
                         help="this broker's id in the cluster (default: 0)")
    cluster.add_argument("--replica-lag-time-max-ms", type=int, default=30_000,
                         help="a follower that has not caught up with its leader for this long "
                         "leaves the in-sync replicas (Kafka's replica.lag.time.max.ms; "
                         "default: 30000)")
    cluster.add_argument("--rack", default=None, help="this broker's rack, for replica placement")
    cluster.add_argument("--advertise", default=None, metavar="HOST:PORT",
                         help="the gRPC address other processes reach this broker at "
                         "(default: --grpc)")
    cluster.add_argument("--etcd-lease-ms", type=int, default=10_000,
                         help="how long the broker stays registered after its last keep-alive "
                         "reached etcd (default: 10000; Kafka's broker.session.timeout.ms is "
                         "9000)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    args.faults = debug.parse(parser, args.debug, DEBUG_FAULTS)
    return args


def broker_configs(args: argparse.Namespace) -> BrokerConfigs:
    """The broker's configs: ``--config`` pairs, then the flags that set one explicitly."""
    data_dir = str(args.data_dir.resolve())
    flags = {"num.partitions": args.default_partitions,
             "group.initial.rebalance.delay.ms": args.group_initial_rebalance_delay_ms,
             "producer.id.expiration.ms": args.producer_id_expiration_ms}
    try:
        configs = BrokerConfigs.from_flags(args.config, args.data_dir / "broker-configs.json",
                                           **{"log.dirs": data_dir, "log.dir": data_dir})
        for name, value in flags.items():
            if value is not None:
                check_broker_value(name, str(value))
                configs.static[name] = str(value)
    except InvalidConfig as exc:
        raise SystemExit(f"broker: {exc}") from None
    return configs


def _with_token(handler: httpd.Handler, token: str) -> httpd.Handler:
    async def checked(request: httpd.Request) -> httpd.Response:
        if not cluster_token.matches(token, request.headers.get(cluster_token.HEADER)):
            return httpd.Response.error(401, f"this route needs the cluster token "
                                             f"({cluster_token.HEADER} header)")
        return await handler(request)
    return checked


def grpc_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.grpc_tls_certfile or args.grpc_tls_keyfile):
        return None
    if not (args.grpc_tls_certfile and args.grpc_tls_keyfile):
        raise SystemExit("broker: --grpc-tls-certfile and --grpc-tls-keyfile go together")
    try:
        return grpc.server_tls(args.grpc_tls_certfile, args.grpc_tls_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"broker: cannot load the gRPC TLS files: {exc}") from None


def load_security(args: argparse.Namespace) -> SecurityStore:
    """Users and ACLs from an earlier life, plus ``--scram-users-file``'s new users."""
    security = SecurityStore.load(args.data_dir / "security.json")
    if args.scram_users_file is not None:
        try:
            users = read_users_file(args.scram_users_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"broker: --scram-users-file: {exc}") from None
        added = [name for name, password in users if security.add_user(name, password)]
        if added:
            security.version += 1
            security.save()
            log.info("SCRAM users created", extra={"users": ",".join(added)})
    return security


async def serve(args: argparse.Namespace) -> None:
    # Before anything reads or writes the directory: a second broker on it stops here.
    process.lock_directory(args.data_dir)
    configs = broker_configs(args)
    configs.load()  # dynamic configs altered at run time, from an earlier life
    registry = TopicRegistry(args.data_dir, default_partitions=configs.int_value("num.partitions"),
                             defaults=defaults_of(configs),
                             retention_check_s=args.retention_check_ms / 1000)
    offsets_config = registry.defaults.log_config({"cleanup.policy": "compact"})

    def partition_exists(topic: str, partition: int) -> bool:
        known = registry.get(topic)
        return known is not None and 0 <= partition < known.partition_count

    def build_groups(store: OffsetStore,
                     group_files: tuple[GroupFile, GroupFile] | None = None) -> Coordinator:
        return Coordinator(
            store, initial_rebalance_delay_s=configs.int_value(
                "group.initial.rebalance.delay.ms") / 1000,
            offsets_retention_ms=configs.int_value("offsets.retention.minutes") * 60_000,
            session_timeout_bounds_ms=(configs.int_value("group.min.session.timeout.ms"),
                                       configs.int_value("group.max.session.timeout.ms")),
            partition_exists=partition_exists,
            topics=lambda: {t.name: (t.topic_id, t.partition_count)
                            for t in registry.topics.values() if not t.internal},
            group_config=configs.group_value, state_dir=args.data_dir, group_files=group_files)

    def build_txns(store: OffsetStore, coordinator: Coordinator,
                   **shared: Any) -> TransactionCoordinator:
        return TransactionCoordinator(
            None if shared else args.data_dir / "@transactions", offsets_config, registry,
            store, producer_ids, member_error=coordinator.txn_member_error,
            max_timeout_ms=configs.int_value("transaction.max.timeout.ms"),
            id_expiration_ms=configs.int_value("transactional.id.expiration.ms"), **shared)

    store: OffsetStore | None = None
    coordinator: Coordinator | None = None
    transactions: TransactionCoordinator | None = None
    etcd = None
    if args.etcd:
        # A cluster keeps coordination in a replicated partition, led by one broker at a time
        # (broker.coordination); producer ids come in blocks reserved in etcd.
        from broker.producer_ids import ClusterProducerIds
        from kelp.etcd import Etcd

        try:
            etcd = Etcd.from_text(args.etcd)
        except ValueError as exc:
            raise SystemExit(f"broker: --etcd: {exc}") from None
        producer_ids: BlockAllocator = ClusterProducerIds(etcd)
    else:
        # '@' cannot appear in a topic name, so these directories never collide with a topic's.
        store = await trio.to_thread.run_sync(OffsetStore, args.data_dir / "@consumer-offsets",
                                              offsets_config)
        coordinator = build_groups(store)
        coordinator.load_groups()
        producer_ids = ProducerIds(args.data_dir)
        transactions = await trio.to_thread.run_sync(build_txns, store, coordinator)
    try:
        exports = Exports(registry, chunk_bytes=args.chunk_bytes,
                          broker_id=args.broker_id if args.etcd else 0)
    except ValueError as exc:
        raise SystemExit(f"broker: {exc}") from None
    ucx_host, ucx_port = parse_host_port(args.ucx)
    exporter = UcxExporter(exports, ucx_host, ucx_port, enabled=not args.no_ucx,
                           lease_ms=args.ucx_lease_ms, advertise=args.ucx_advertise)
    security = await trio.to_thread.run_sync(load_security, args)
    service = BrokerService(registry, coordinator=coordinator, exports=exports,
                            exporter=exporter, broker_configs=configs, security=security,
                            transactions=transactions, producer_ids=producer_ids,
                            auto_create_partitions=configs.int_value("num.partitions"),
                            append_delay_s=args.faults.get("append-delay-ms", 0.0) / 1000)

    token = None
    if args.cluster_token_file is not None:
        try:
            token = cluster_token.ensure(args.cluster_token_file)
        except cluster_token.TokenError as exc:
            raise SystemExit(f"broker: {exc}") from None
    membership = controller = replicas = None
    if args.etcd:
        # Imported only for a cluster: a lone broker does not carry etcd's message classes
        # (more long-lived objects make every full garbage collection of an idle broker dearer).
        from broker.cluster_topics import ClusterTopics
        from broker.controller import Controller
        from broker.membership import BrokerInfo, Membership
        from broker.partition_admin import PartitionAdmin
        from broker.replicas import ReplicaManager
        from broker.replication import Replication

        assert etcd is not None
        membership = Membership(etcd, BrokerInfo(
            args.broker_id, args.advertise or args.grpc, args.http, args.ucx_advertise or args.ucx,
            args.rack), ttl_s=max(1, round(args.etcd_lease_ms / 1000)))
        controller = Controller(etcd, membership)
        replication = Replication(registry, controller, membership, args.broker_id,
                                  lag_ms=args.replica_lag_time_max_ms, token=token)
        replicas = ReplicaManager(registry, controller, args.broker_id, replication)
        service.replication = replication
        service.partition_admin = PartitionAdmin(controller, membership)

    coordination = None
    if etcd is not None and membership is not None:
        from broker.coordination import CoordinationHost

        service.cluster_topics = ClusterTopics(
            etcd, membership, registry,
            lambda: configs.int_value("default.replication.factor"))
        assert service.replication is not None
        coordination = CoordinationHost(
            service.replication, membership, service.cluster_topics,
            lambda: configs.int_value("offsets.topic.replication.factor"),
            build_groups, build_txns)

        def coordinating(current: Coordination | None) -> None:
            service.coordinator = None if current is None else current.groups
            service.transactions = None if current is None else current.transactions

        coordination.on_change = coordinating
        service.coordination_host = coordination
        from broker.cluster_security import ClusterSecurity

        service.cluster_security = ClusterSecurity(etcd, lambda: service.security,
                                                   service.replace_security)

    async def health(request: httpd.Request) -> httpd.Response:
        cluster = {}
        if membership is not None and controller is not None and replicas is not None:
            replication = service.replication
            cluster = {"cluster": {**membership.health(), "replicas": replicas.roles(),
                                   "isr_writes": 0 if replication is None
                                   else replication.isr_writes,
                                   "leader_changes": controller.leader_changes,
                                   "isr_changes": controller.isr_changes,
                                   "replication": {} if replication is None
                                   else replication.detail()}}
        return httpd.Response.json({"status": "ok", "topics": len(registry.topics),
                                    "partitions": registry.partition_count(),
                                    **service.counters(), **exporter.health(), **cluster})

    metrics_route = kelp_metrics.route(broker_metrics.state(
        registry, lambda: None if service.coordinator is None else service.coordinator.store,
        lambda: service.transactions, service.counters,
        None if controller is None or service.replication is None
        else _both(controller.gauges, service.replication.gauges)))

    grpc_address = grpc.Address.parse(args.grpc)
    http_host, http_port = parse_host_port(args.http)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            if coordinator is not None and store is not None and transactions is not None:
                nursery.start_soon(coordinator.run)
                nursery.start_soon(store.log.maintain, registry.retention_check_s)
                nursery.start_soon(transactions.log.maintain, registry.retention_check_s)
                nursery.start_soon(transactions.run)
            await nursery.start(exporter.run)
            await nursery.start(partial(grpc.serve, service.mapping(), grpc_address,
                                        tls=grpc_tls(args), token=token))
            async def stop_ucx(request: httpd.Request) -> httpd.Response:
                exporter.stop()
                return httpd.Response.json({"stopped": True})

            data_routes = ExportsHttp(exports).routes()
            if token is not None:  # segment data only for holders of the cluster token
                data_routes = {path: _with_token(handler, token)
                               for path, handler in data_routes.items()}
            routes: dict[str, httpd.Handler | httpd.Route] = {
                "/health": health, "/metrics": metrics_route, **data_routes}
            if args.faults.get("ucx-stop-endpoint"):
                routes["/debug/ucx-stop"] = httpd.Route(stop_ucx, frozenset({"POST"}))
            await nursery.start(httpd.serve_http, routes, http_host, http_port)
            if membership is not None and controller is not None and replicas is not None:
                await nursery.start(membership.run)  # registered once it serves
                await nursery.start(controller.run)
                assert service.replication is not None
                await nursery.start(service.replication.run)
                await nursery.start(replicas.run)
                assert coordination is not None and service.cluster_security is not None
                await nursery.start(coordination.run)
                await nursery.start(service.cluster_security.run)
            process.ready(log, grpc=str(grpc_address), http=args.http,
                          data_dir=str(args.data_dir))
    finally:
        # Only after every task that could touch a log has ended.
        registry.close()
        if store is not None and transactions is not None:
            store.close()
            transactions.close()
        if membership is not None:
            membership.etcd.close()  # its channels, after every task that used them


def _both(first: Callable[[], Gauges], second: Callable[[], Gauges]) -> Callable[[], Gauges]:
    return lambda: {**first(), **second()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("broker", args.log_level)
    process.run(lambda: serve(args))


if __name__ == "__main__":
    main()
