"""The console's HTTP side: its static files and a JSON API over the broker and the registry.

``GET /`` the page; ``/static/<file>`` its CSS and JS (only files in ``static/``);
``/api/overview`` processes and counts; ``/api/topics`` (GET; POST creates) and
``/api/topics/<name>`` (DELETE); ``/api/topics/<name>/messages?partition=&offset=|timestamp=
&limit=`` the message browser; ``/api/groups`` groups with their lag; ``/api/subjects``,
``/api/subjects/<s>/versions/<v>``, ``/api/subjects/<s>/diff?from=&to=`` the registry;
``/api/totals`` records written and lag now, which the page samples for its charts;
``/api/tail-ticket?topic=&partition=`` a one-minute ticket for the live tail's WebSocket.

With ``users`` (``--console-auth``) every request needs HTTP Basic credentials of a SCRAM
user, and answers follow that user's ACLs as a Kafka client's would: topics it may not
DESCRIBE are left out, messages need READ, creating needs CREATE and deleting DELETE,
groups it may not DESCRIBE are left out, totals need DESCRIBE on the cluster, schemas need
the registry's READ role. Browsers cannot put credentials on a WebSocket, so the page asks
for a ticket (READ on the topic checked here) and the tail server takes only tickets.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.console import records
from gateway.console.tail import Tickets
from gateway.context import GatewayContext
from gateway.listeners import ANONYMOUS
from gateway.security import RegistryUsers, Session, current_session, session
from kelp import acl, httpd
from kelp.process import count_tasks
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8"}
MAX_BROWSE = 500           # records one browse returns at most
MAX_GROUPS = 500           # groups whose lag one page computes (a broker call each)
BROWSE_BYTES = 1 << 20     # bytes one browse fetches at most


class ConsoleApi:
    def __init__(self, ctx: GatewayContext, ws_url: Callable[[], str],
                 counters: Callable[[], dict[str, Any]], *,
                 users: RegistryUsers | None = None, tickets: Tickets | None = None) -> None:
        self.ctx = ctx
        self.ws_url = ws_url
        self.counters = counters
        self.users = users
        self.tickets = tickets
        self.router: httpd.Router[Callable[..., Any]] = httpd.Router()
        for method, pattern, target in (
                ("GET", "/", self.index), ("GET", "/static/*", self.static),
                ("GET", "/api/overview", self.overview), ("GET", "/api/topics", self.topics),
                ("POST", "/api/topics", self.create_topic),
                ("DELETE", "/api/topics/*", self.delete_topic),
                ("GET", "/api/topics/*/messages", self.messages),
                ("GET", "/api/groups", self.groups), ("GET", "/api/subjects", self.subjects),
                ("GET", "/api/subjects/*/versions/*", self.schema),
                ("GET", "/api/subjects/*/diff", self.diff), ("GET", "/api/totals", self.totals),
                ("GET", "/api/tail-ticket", self.tail_ticket)):
            self.router.add(method, pattern, target)

    def routes(self) -> dict[str, httpd.Route]:
        route = httpd.Route(self.handle, frozenset({"GET", "HEAD", "POST", "DELETE"}))
        return {"/": route, "/static/*": route, "/api/*": route}

    async def handle(self, request: httpd.Request) -> httpd.Response:
        try:
            target, args = self.router.match(request.method, request.path)
        except httpd.NoRoute:
            return httpd.Response.error(404, f"no console route {request.path}")
        principal = self._principal(request)
        if principal is None:
            return dataclasses.replace(
                httpd.Response.error(401, "the console wants a SCRAM user's credentials"),
                headers={"www-authenticate": 'Basic realm="kelp console"'})
        token = current_session.set(Session(host=request.client_host, principal=principal))
        try:
            return await target(request, *args)
        except Forbidden as exc:
            return httpd.Response.error(403, str(exc))
        except BrokerUnavailable as exc:
            return httpd.Response.error(503, f"broker unavailable: {exc}")
        except (ValueError, KeyError) as exc:
            return httpd.Response.error(400, f"bad request: {exc}")
        finally:
            current_session.reset(token)

    def _principal(self, request: httpd.Request) -> str | None:
        """The user's principal; ANONYMOUS when the console asks for no credentials; None
        when it does and they are missing or wrong."""
        if self.users is None:
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return self.users.authenticate(user, password) if sep else None

    def _allows(self, operation: acl.Operation, resource: acl.ResourceType, name: str) -> bool:
        return self.users is None or self.ctx.security.allows(operation, resource, name)

    def _require(self, operation: acl.Operation, resource: acl.ResourceType, name: str
                 ) -> None:
        if not self._allows(operation, resource, name):
            raise Forbidden(f"{session().principal} may not {operation.name} "
                            f"{resource.name.lower()} {name}")

    # -- the page ---------------------------------------------------------------------------

    async def index(self, request: httpd.Request) -> httpd.Response:
        return await self.static(request, "index.html")

    async def static(self, request: httpd.Request, name: str) -> httpd.Response:
        files = {path.name: path for path in STATIC.iterdir() if path.is_file()}
        path = files.get(name)  # only the files that are there: no path from the request
        if path is None:
            return httpd.Response.error(404, f"no static file {name}")
        return httpd.Response(200, path.read_bytes(),
                              CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                              {"cache-control": "no-cache"})

    # -- cluster and topics -------------------------------------------------------------------

    async def _describe(self) -> list[pb.TopicInfo]:
        reply = await self.ctx.broker.call(BROKER.describe_topics, pb.DescribeTopicsRequest(
            include_partitions=True))
        return [t for t in reply.topics if not t.error_code]

    async def overview(self, request: httpd.Request) -> httpd.Response:
        health = await self.ctx.broker.call(BROKER.health, pb.HealthRequest())
        return httpd.Response.json({
            "broker": {"status": health.status, "version": health.version,
                       "topics": health.topics, "partitions": health.partitions,
                       **dict(health.counters)},
            "gateway": {**self.counters(), "tasks": count_tasks()},
            "registry": self.ctx.registry_state is not None, "tail": self.ws_url()})

    async def topics(self, request: httpd.Request) -> httpd.Response:
        described = [t for t in await self._describe()
                     if self._allows(acl.Operation.DESCRIBE, acl.ResourceType.TOPIC, t.name)]
        return httpd.Response.json([{
            "name": t.name, "internal": t.internal, "configs": dict(t.configs),
            "partitions": [{"partition": p.partition, "start": p.log_start_offset,
                            "end": p.high_watermark, "bytes": p.size_bytes}
                           for p in t.partition_states]}
            for t in sorted(described, key=lambda t: t.name)])

    async def create_topic(self, request: httpd.Request) -> httpd.Response:
        body = json.loads(request.body or b"{}")
        if not (self._allows(acl.Operation.CREATE, acl.ResourceType.CLUSTER, acl.CLUSTER_NAME)
                or self._allows(acl.Operation.CREATE, acl.ResourceType.TOPIC,
                                str(body["name"]))):
            raise Forbidden(f"{session().principal} may not create topic {body['name']}")
        spec = pb.TopicSpec(name=str(body["name"]), partitions=int(body.get("partitions", -1)))
        reply = await self.ctx.broker.call(BROKER.create_topics,
                                           pb.CreateTopicsRequest(topics=[spec]))
        return _result(reply.results[0])

    async def delete_topic(self, request: httpd.Request, name: str) -> httpd.Response:
        self._require(acl.Operation.DELETE, acl.ResourceType.TOPIC, name)
        reply = await self.ctx.broker.call(BROKER.delete_topics,
                                           pb.DeleteTopicsRequest(names=[name]))
        return _result(reply.results[0])

    async def messages(self, request: httpd.Request, topic: str) -> httpd.Response:
        self._require(acl.Operation.READ, acl.ResourceType.TOPIC, topic)
        partition = int(request.query.get("partition", "0"))
        limit = max(1, min(int(request.query.get("limit", "50")), MAX_BROWSE))
        if "timestamp" in request.query:  # seek by time: the first record at or after it
            reply = await self.ctx.broker.call(BROKER.list_offsets, pb.ListOffsetsRequest(
                queries=[pb.ListOffsetsRequestQuery(
                    partition=pb.PartitionRef(topic=topic, partition=partition),
                    timestamp=int(request.query["timestamp"]))]))
            answer = reply.answers[0]
            if answer.error_code:
                return httpd.Response.error(404, ErrorCode(answer.error_code).name)
            if answer.offset < 0:
                return httpd.Response.json({"records": [], "next": None})
            offset = answer.offset
        else:
            offset = int(request.query.get("offset", "0"))
        fetched = await self.ctx.broker.fetch(pb.FetchRequest(
            partitions=[pb.FetchPartition(topic=topic, partition=partition, offset=offset,
                                          max_bytes=BROWSE_BYTES)],
            max_wait_ms=0, min_bytes=0, max_bytes=BROWSE_BYTES))
        part = fetched.partitions[0]
        if part.error_code:
            return httpd.Response.error(404, ErrorCode(part.error_code).name)
        shown = []
        for record in records.decode(part.records, self.ctx.registry_state, offset):
            if len(shown) >= limit:
                break
            shown.append(record)
        following = shown[-1]["offset"] + 1 if shown else None
        return httpd.Response.json({"records": shown, "next": following,
                                    "end": part.high_watermark,
                                    "start": part.log_start_offset})

    # -- groups and lag ------------------------------------------------------------------------

    async def _lag(self) -> tuple[list[dict[str, Any]], dict[tuple[str, int], int]]:
        ends = {(t.name, p.partition): p.high_watermark for t in await self._describe()
                for p in t.partition_states}
        listed = await self.ctx.broker.call(BROKER.list_groups, pb.ListGroupsRequest())
        groups = []
        visible = [g for g in sorted(listed.groups, key=lambda g: g.group_id)
                   if self._allows(acl.Operation.DESCRIBE, acl.ResourceType.GROUP, g.group_id)]
        for group in visible[:MAX_GROUPS]:
            offsets = await self.ctx.broker.call(BROKER.fetch_offsets, pb.FetchOffsetsRequest(
                group_id=group.group_id, all_topics=True))
            partitions = [{"topic": o.topic, "partition": o.partition, "committed": o.offset,
                           "end": ends.get((o.topic, o.partition)),
                           "lag": max(ends.get((o.topic, o.partition), o.offset) - o.offset, 0)}
                          for o in offsets.offsets if o.offset >= 0 and self._allows(
                              acl.Operation.DESCRIBE, acl.ResourceType.TOPIC, o.topic)]
            groups.append({"group": group.group_id, "state": group.state,
                           "type": group.group_type or "classic",
                           "protocol": group.protocol_type, "partitions": partitions,
                           "lag": sum(p["lag"] for p in partitions)})
        return groups, ends

    async def groups(self, request: httpd.Request) -> httpd.Response:
        return httpd.Response.json((await self._lag())[0])

    async def totals(self, request: httpd.Request) -> httpd.Response:
        self._require(acl.Operation.DESCRIBE, acl.ResourceType.CLUSTER, acl.CLUSTER_NAME)
        groups, ends = await self._lag()
        return httpd.Response.json({"records": sum(ends.values()),
                                    "lag": sum(g["lag"] for g in groups)})

    # -- registry ---------------------------------------------------------------------------

    def _registry(self) -> Any:
        if self.ctx.registry_state is None:
            raise KeyError("this gateway serves no registry")
        if self.users is not None:
            from registry.auth import Role

            current = session()
            if self.users.role(current.principal, current.host) < Role.READ:
                raise Forbidden(f"{current.principal} may not read the schemas")
        return self.ctx.registry_state

    async def tail_ticket(self, request: httpd.Request) -> httpd.Response:
        topic = request.query["topic"]
        partition = int(request.query.get("partition", "0"))
        self._require(acl.Operation.READ, acl.ResourceType.TOPIC, topic)
        ticket = self.tickets.issue(topic, partition) if self.tickets is not None else ""
        return httpd.Response.json({"ticket": ticket})

    async def subjects(self, request: httpd.Request) -> httpd.Response:
        state = self._registry()
        return httpd.Response.json([{"subject": s, "versions": [
            {"version": v.version, "id": v.id, "type": v.schema_type}
            for v in state.versions(s)]} for s in state.subject_names()])

    def _version(self, subject: str, version: str) -> Any:
        versions = self._registry().versions(subject)
        if not versions:
            raise KeyError(f"no subject {subject}")
        if version == "latest":
            return versions[-1]
        return next(v for v in versions if v.version == int(version))

    async def schema(self, request: httpd.Request, subject: str, version: str
                     ) -> httpd.Response:
        found = self._version(subject, version)
        return httpd.Response.json({"subject": subject, "version": found.version,
                                    "id": found.id, "type": found.schema_type,
                                    "schema": _pretty(found.schema)})

    async def diff(self, request: httpd.Request, subject: str) -> httpd.Response:
        old = self._version(subject, request.query.get("from", "1"))
        new = self._version(subject, request.query.get("to", "latest"))
        lines = difflib.unified_diff(_pretty(old.schema).splitlines(),
                                     _pretty(new.schema).splitlines(),
                                     f"{subject} v{old.version}", f"{subject} v{new.version}",
                                     lineterm="")
        return httpd.Response.json({"from": old.version, "to": new.version,
                                    "diff": "\n".join(lines)})


class Forbidden(Exception):
    """The user's ACLs do not allow this (403)."""


def _pretty(schema: str) -> str:
    try:
        return json.dumps(json.loads(schema), indent=2)
    except ValueError:
        return schema  # Protobuf


def _result(result: pb.TopicResult) -> httpd.Response:
    if result.error_code:
        return httpd.Response.error(400, result.error_message or
                                    ErrorCode(result.error_code).name)
    return httpd.Response.json({"name": result.name, "ok": True})
