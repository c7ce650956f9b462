"""``python -m gateway``: the kelp Kafka gateway process."""

from __future__ import annotations

# isort: off
import kelp.server_start  # noqa: F401 - first, before anything imports kio
# isort: on

import argparse
import logging
import ssl
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gateway import listeners
from gateway import metrics as gateway_metrics
from gateway.broker_client import BrokerClient
from gateway.context import GatewayConfig, GatewayContext
from gateway.listeners import Listener, ListenerError, PrincipalRules, TlsContexts, TlsFiles
from gateway.registry_link import RegistryBrokerLink
from gateway.sasl import MECHANISMS
from gateway.security import RegistryUsers
from gateway.server import KafkaServer
from kelp import acl, cluster_token, debug, grpc, http, httpd, logs, process
from kelp import metrics as kelp_metrics
from kelp.process import count_tasks
from registry import api as registry_api
from registry.api import RegistryApi
from registry.service import Identity, SchemaRegistry

log = logging.getLogger("kelp.gateway")

DEBUG_FAULTS = {
    "drop-produce-every": "close the connection instead of answering every Nth produce, "
                          "after the broker stored it, to exercise producer retries",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9092",
                        help="Kafka listener HOST:PORT (default: 127.0.0.1:9092)")
    parser.add_argument("--advertise", default=None,
                        help="HOST:PORT clients are told to connect to "
                        "(default: the listen address)")
    parser.add_argument("--broker", default="127.0.0.1:17777",
                        help="broker gRPC address, HOST:PORT or unix:PATH "
                        "(default: 127.0.0.1:17777)")
    parser.add_argument("--etcd", default=None, metavar="HOST:PORT[,HOST:PORT...]",
                        help="a cluster's etcd: send each partition's produce and fetch to its "
                        "leader broker (--broker still takes the control calls)")
    parser.add_argument("--node-id", type=int, default=0,
                        help="this gateway's Kafka node id in a cluster (with --etcd): every "
                        "gateway is a node in Metadata; give each its own (default: 0)")
    parser.add_argument("--broker-tls", action="store_true",
                        help="reach the broker's gRPC over TLS (a broker on another host "
                        "started with --grpc-tls-certfile)")
    parser.add_argument("--broker-tls-cafile", default=None, metavar="PEM",
                        help="CA that signed the broker's certificate (default: the system's)")
    parser.add_argument("--broker-token-file", type=Path, default=None, metavar="FILE",
                        help="the cluster token the broker requires (its --cluster-token-file)")
    parser.add_argument("--http", default="127.0.0.1:8081",
                        help="HTTP address HOST:PORT for the Schema Registry REST API and "
                        "/health (default: 127.0.0.1:8081)")
    parser.add_argument("--console", default=None, metavar="HOST:PORT",
                        help="serve the web console (topics, messages, groups, schemas, "
                        "charts) on this address (default: none; kelp up: 127.0.0.1:8080)")
    parser.add_argument("--console-ws", default=None, metavar="HOST:PORT",
                        help="the console's live tail (WebSocket) address (default: the "
                        "console's host, port 0 = any free one)")
    parser.add_argument("--console-auth", action="store_true",
                        help="the console wants HTTP Basic credentials of a SCRAM user and "
                        "shows what that user's ACLs allow (over TLS with --ssl-certfile)")
    parser.add_argument("--max-request-bytes", type=int, default=100 * 1024 * 1024,
                        help="largest Kafka request frame accepted (default: 104857600)")
    defaults = GatewayConfig()
    parser.add_argument("--queued-max-request-bytes", type=int,
                        default=defaults.queued_max_request_bytes,
                        help="gateway-wide bytes of large requests (over 1 MiB) being received "
                        "or served; a connection waits for room before reading more (Kafka's "
                        "queued.max.request.bytes; default: %(default)s)")
    parser.add_argument("--fetch-memory-bytes", type=int, default=defaults.fetch_memory_bytes,
                        help="gateway-wide bytes of fetched records not yet written to clients "
                        "(default: %(default)s)")
    parser.add_argument("--connections-max-idle-ms", type=int,
                        default=defaults.connections_max_idle_ms,
                        help="close a connection that sends nothing for this long "
                        "(default: %(default)s)")
    parser.add_argument("--request-timeout-ms", type=int, default=defaults.request_timeout_ms,
                        help="close a connection whose request does not arrive whole within "
                        "this long (default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=None, metavar="N",
                        help="client connections served at once; more wait to be accepted "
                        "(Kafka's max.connections; default: the open-file limit less 1024, "
                        "at least 64)")
    security = parser.add_argument_group(
        "listeners and security (Kafka's names; see README 'Security')")
    security.add_argument("--listeners", default=None, metavar="NAME://HOST:PORT,...",
                          help="Kafka listeners, e.g. PLAINTEXT://127.0.0.1:9092,"
                          "SASL_SSL://127.0.0.1:9093 (default: PLAINTEXT at --listen)")
    security.add_argument("--advertised-listeners", default=None, metavar="NAME://HOST:PORT,...",
                          help="the address clients of each listener are told "
                          "(default: the listener's own)")
    security.add_argument("--listener-security-protocol-map", default=None,
                          metavar="NAME:PROTOCOL,...",
                          help="the protocol of listeners not named after one, e.g. "
                          "INTERNAL:SASL_SSL")
    security.add_argument("--ssl-certfile", default=None, metavar="PEM",
                          help="server certificate chain for SSL and SASL_SSL listeners and "
                          "for HTTPS (reloaded when it changes)")
    security.add_argument("--ssl-keyfile", default=None, metavar="PEM",
                          help="the certificate's private key")
    security.add_argument("--ssl-cafile", default=None, metavar="PEM",
                          help="CAs trusted for client certificates")
    security.add_argument("--ssl-client-auth", default="none",
                          choices=["none", "requested", "required"],
                          help="client certificates on SSL listeners (Kafka's ssl.client.auth; "
                          "a certificate's subject is the principal)")
    security.add_argument("--ssl-principal-mapping-rules", default="DEFAULT",
                          help="Kafka's ssl.principal.mapping.rules, e.g. "
                          "'RULE:^CN=(.*?),.*$/$1/L,DEFAULT'")
    security.add_argument("--sasl-enabled-mechanisms", default=",".join(MECHANISMS),
                          help="SASL mechanisms of SASL listeners (default: %(default)s)")
    security.add_argument("--connections-max-reauth-ms", type=int, default=0,
                          help="SASL session lifetime; clients re-authenticate before it ends "
                          "or are disconnected (KIP-368; default 0: forever)")
    security.add_argument("--authorizer", action="store_true",
                          help="enforce Kafka ACLs (kept by the broker) on every request")
    security.add_argument("--super-users", default="", metavar="User:A;User:B",
                          help="principals allowed everything (Kafka's super.users)")
    security.add_argument("--allow-everyone-if-no-acl-found", action="store_true",
                          help="allow what no ACL names (default with --authorizer: deny)")
    security.add_argument("--http-tls", action="store_true",
                          help="serve the registry and HTTP APIs over HTTPS with the "
                          "--ssl-certfile certificate")
    security.add_argument("--registry-auth", action="store_true",
                          help="the registry requires HTTP Basic credentials of a SCRAM user; "
                          "roles come from ACLs on the schemas topic (README 'Security')")
    parser.add_argument("--no-auto-create-topics", action="store_true",
                        help="do not create topics on Metadata requests for unknown topics")
    debug.add_option(parser, DEBUG_FAULTS)
    registry = parser.add_argument_group("schema registry")
    registry.add_argument("--no-registry", action="store_true",
                          help="do not serve the Schema Registry REST API")
    registry.add_argument("--schemas-topic", default="_schemas",
                          help="topic holding the registry's records (default: _schemas)")
    registry.add_argument("--registry-group", default="schema-registry",
                          help="group electing the registry leader (default: schema-registry)")
    registry.add_argument("--registry-advertise", default=None, metavar="HOST:PORT",
                          help="address other gateways forward registry writes to "
                          "(default: the --http address)")
    registry.add_argument("--registry-principal", default="User:schema-registry",
                          help="the principal that owns the schemas topic: with --authorizer, "
                          "only it and super users write to that topic over Kafka "
                          "(default: %(default)s)")
    registry.add_argument("--registry-follower-only", action="store_true",
                          help="never become the registry leader (forward all writes)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    args.faults = debug.parse(parser, args.debug, DEBUG_FAULTS)
    if args.max_connections is not None and args.max_connections < 1:
        parser.error("--max-connections must be at least 1")
    try:
        args.kafka_listeners = kafka_listeners(args)
        args.tls = None
        if args.ssl_certfile or args.ssl_keyfile:
            if not (args.ssl_certfile and args.ssl_keyfile):
                parser.error("--ssl-certfile and --ssl-keyfile go together")
            args.tls = TlsContexts(TlsFiles(args.ssl_certfile, args.ssl_keyfile,
                                            args.ssl_cafile, args.ssl_client_auth))
        PrincipalRules(args.ssl_principal_mapping_rules)
    except ListenerError as exc:
        parser.error(str(exc))
    if args.tls is None and (args.http_tls or any(li.tls for li in args.kafka_listeners)):
        parser.error("SSL listeners and --http-tls need --ssl-certfile and --ssl-keyfile")
    mechanisms = tuple(m.strip() for m in args.sasl_enabled_mechanisms.split(",") if m.strip())
    unknown = set(mechanisms) - set(MECHANISMS)
    if unknown or not mechanisms:
        parser.error(f"--sasl-enabled-mechanisms: choose from {', '.join(MECHANISMS)}")
    args.sasl_mechanisms = mechanisms
    if args.broker_token_file is not None:
        try:
            cluster_token.read(args.broker_token_file)
        except cluster_token.TokenError as exc:
            parser.error(str(exc))
    if args.connections_max_reauth_ms < 0:
        parser.error("--connections-max-reauth-ms must not be negative")
    return args


def kafka_listeners(args: argparse.Namespace) -> list[Listener]:
    """``--listeners`` and friends, or one PLAINTEXT listener at --listen / --advertise."""
    if args.listeners is None:
        host, port = process.split_host_port(args.listen)
        ad_host, ad_port = (process.split_host_port(args.advertise) if args.advertise
                            else (host, port))
        return [Listener("PLAINTEXT", "PLAINTEXT", host, port, ad_host, ad_port)]
    return listeners.parse(args.listeners, args.advertised_listeners,
                           args.listener_security_protocol_map)


def _timed(route: httpd.Handler | httpd.Route) -> httpd.Handler | httpd.Route:
    """A registry route whose requests are counted and timed (method, status)."""
    handler = route.handler if isinstance(route, httpd.Route) else route

    async def timed(request: httpd.Request) -> httpd.Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            gateway_metrics.REGISTRY_REQUESTS.labels(request.method, str(status)).observe(
                time.perf_counter() - started)

    return httpd.Route(timed, route.methods) if isinstance(route, httpd.Route) else timed


async def serve(args: argparse.Namespace) -> None:
    http_host, http_port = process.split_host_port(args.http)
    broker_tls = (grpc.client_tls(args.broker_tls_cafile)
                  if args.broker_tls or args.broker_tls_cafile else None)
    broker = BrokerClient(grpc.Address.parse(args.broker), broker_tls,
                          cluster_token.read(args.broker_token_file)
                          if args.broker_token_file else None)
    kafka = args.kafka_listeners
    peer_tls = None  # HTTPS to other gateways (registry writes forwarded to the leader)
    if args.http_tls:
        peer_tls = ssl.create_default_context(cafile=args.ssl_cafile)
    async with http.Client(tls=peer_tls) as http_client, trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        config = GatewayConfig(
            advertised_host=kafka[0].advertised_host, advertised_port=kafka[0].advertised_port,
            listen=args.listen if args.listeners is None else f"{kafka[0].host}:{kafka[0].port}",
            listeners=tuple(kafka), sasl_mechanisms=args.sasl_mechanisms,
            connections_max_reauth_ms=args.connections_max_reauth_ms,
            authorizer=acl.Settings(
                enabled=args.authorizer,
                super_users=frozenset(u.strip() for u in args.super_users.split(";")
                                      if u.strip()),
                allow_everyone_if_no_acl_found=args.allow_everyone_if_no_acl_found),
            ssl_principal_mapping_rules=args.ssl_principal_mapping_rules,
            auto_create_topics=not args.no_auto_create_topics,
            max_request_bytes=args.max_request_bytes,
            drop_produce_every=int(args.faults.get("drop-produce-every", 0)),
            max_connections=args.max_connections or max(64, process.open_file_limit()
                                                         - 1024),
            queued_max_request_bytes=args.queued_max_request_bytes,
            fetch_memory_bytes=args.fetch_memory_bytes,
            connections_max_idle_ms=args.connections_max_idle_ms,
            request_timeout_ms=args.request_timeout_ms)
        ctx = GatewayContext(config, broker)
        if args.etcd:
            # Imported only for a cluster (a lone gateway does not carry etcd's messages).
            from gateway.router import Router
            from kelp.etcd import Etcd

            try:
                etcd = Etcd.from_text(args.etcd)
            except ValueError as exc:
                raise SystemExit(f"gateway: --etcd: {exc}") from None
            ctx.router = Router(etcd, broker, tls=broker_tls, token=broker.token,
                                node=(args.node_id, config.advertised_host,
                                      config.advertised_port))
            await nursery.start(ctx.router.run)
        await nursery.start(ctx.quotas.run)
        if ctx.router is None:  # one broker: idle consumers' fetches answered here
            await nursery.start(ctx.idle_polls.run)
        # Users and ACLs matter from the first connection only when something checks them.
        await nursery.start(partial(
            ctx.security.run, needed_at_start=args.authorizer or args.registry_auth
            or args.console_auth or any(listener.sasl for listener in kafka)))
        server = KafkaServer(ctx)
        registry: SchemaRegistry | None = None
        bound = [await nursery.start(server.serve, listener, args.tls) for listener in kafka]

        async def health(request: httpd.Request) -> httpd.Response:
            return httpd.Response.json({
                "status": "ok", "connections": server.connections, "inflight": server.inflight,
                "protocol_errors": server.protocol_errors, "throttled": server.throttled,
                "broker_pending": broker.pending, "produces_dropped": ctx.produces_dropped,
                "max_connections": config.max_connections,
                "timeouts": server.timeouts, "request_pool_used": ctx.request_pool.used,
                "fetch_pool_used": ctx.fetch_pool.used, "tasks": count_tasks(),
                "sasl_authentications": ctx.security.authentications,
                "sasl_failures": ctx.security.authentication_failures,
                "tls_failures": server.tls_failures,
                "closed_unauthenticated": server.authentication_failures,
                "idle_fetches_answered": ctx.idle_polls.answered,
                "idle_partitions_watched": ctx.idle_polls.watching,
                "registry": registry.health() if registry is not None else None})

        async def versions(request: httpd.Request) -> httpd.Response:
            wanted = request.query.get("client_id")
            seen: dict[str, dict[str, int]] = {}
            for (client, api), version in sorted(server.versions_seen.items()):
                if wanted is None or client == wanted:
                    seen.setdefault(client, {})[api] = version
            return httpd.Response.json(seen)

        def gateway_state() -> kelp_metrics.Gauges:
            now = {"connections": server.connections, "requests_in_flight": server.inflight,
                   "request_pool_used_bytes": ctx.request_pool.used,
                   "fetch_pool_used_bytes": ctx.fetch_pool.used,
                   "sasl_authentications": ctx.security.authentications,
                   "sasl_failures": ctx.security.authentication_failures,
                   "tls_failures": server.tls_failures,
                   "protocol_errors": server.protocol_errors, "tasks": count_tasks()}
            return {f"kelp_gateway_{name}": (f"Now: {name.replace('_', ' ')}.", (),
                                             [((), value)]) for name, value in now.items()}

        routes: dict[str, httpd.Handler | httpd.Route] = {
            "/health": health, "/debug/versions": versions,
            "/metrics": kelp_metrics.route(gateway_state)}
        if not args.no_registry:
            registry = SchemaRegistry(RegistryBrokerLink(broker, ctx.leader), Identity("", 0),
                                      topic=args.schemas_topic, group=args.registry_group)
            users = (RegistryUsers(ctx.security, args.schemas_topic) if args.registry_auth
                     else None)
            routes.update({path: _timed(route) for path, route in RegistryApi(
                registry, http_client, auth=users).routes().items()})
            ctx.registry_state = registry.state
            ctx.owned_topics[args.schemas_topic] = frozenset({args.registry_principal})
        http_bound = await nursery.start(partial(
            httpd.serve_http, routes, http_host, http_port, limits=registry_api.LIMITS,
            ssl_context=args.tls.current if args.http_tls else None))
        console = ""
        if args.console:
            console = await _start_console(nursery, ctx, args, lambda: {
                "connections": server.connections, "inflight": server.inflight})
        if registry is not None:
            host, port = (process.split_host_port(args.registry_advertise)
                          if args.registry_advertise else (http_host, http_bound))
            if host in ("", "0.0.0.0", "::"):
                log.warning("the registry advertises a wildcard address; other gateways "
                            "cannot forward writes to it (set --registry-advertise)")
            registry.identity = Identity(host, port, "https" if args.http_tls else "http",
                                         leader_eligible=not args.registry_follower_only)
            await nursery.start(registry.run)
        process.ready(log, kafka=f"{kafka[0].host}:{bound[0]}",
                      listeners=",".join(f"{li.name}://{li.host}:{port}"
                                         for li, port in zip(kafka, bound, strict=True)),
                      advertised=",".join(li.url(advertised=True) for li in kafka),
                      broker=args.broker, http=args.http,
                      **({"console": console} if console else {}))


async def _start_console(nursery: trio.Nursery, ctx: GatewayContext, args: argparse.Namespace,
                         counters: Callable[[], dict[str, Any]]) -> str:
    """The web console's page and API, and its live tail; returns "http://host:port"."""
    from gateway.console.api import ConsoleApi
    from gateway.console.tail import Tails, Tickets

    host, port = process.split_host_port(args.console)
    ws_host, ws_port = (process.split_host_port(args.console_ws) if args.console_ws
                        else (host, 0))
    users = RegistryUsers(ctx.security, args.schemas_topic) if args.console_auth else None
    tickets = Tickets() if users is not None else None
    # With credentials the console speaks only TLS (the gateway's certificate).
    tls = args.tls.current() if users is not None and args.tls is not None else None
    tails = Tails(ctx, tickets)
    bound_ws = await nursery.start(tails.run, ws_host, ws_port, tls)
    ws_url = f"{'wss' if tls else 'ws'}://{ws_host}:{bound_ws}"
    api = ConsoleApi(ctx, lambda: ws_url, lambda: {**counters(), "tails": tails.open,
                                                   "tails_behind": tails.behind_markers,
                                                   "tail_server_restarts": tails.restarts},
                     users=users, tickets=tickets)
    bound = await nursery.start(partial(httpd.serve_http, api.routes(), host, port,
                                        ssl_context=args.tls.current if tls else None))
    scheme = "https" if tls else "http"
    return f"{scheme}://{host}:{bound}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("gateway", args.log_level)
    process.run(lambda: serve(args))


if __name__ == "__main__":
    main()
