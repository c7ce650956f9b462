"""The Confluent Schema Registry REST API, served by the gateway's HTTP server.

Reads answer from this gateway's copy of the state. Writes (POST/PUT/DELETE that change
something) run on the elected leader; any other gateway forwards the request there unchanged
and passes the answer back. Errors use Confluent's shape ``{"error_code", "message"}`` with the
HTTP status taken from the code's first three digits (40401 -> 404).

What a request may cost is bounded (``limits.py``): the body's size (checked by the HTTP server
before it is read) and nesting (checked before it is decoded), the schema's size and shape, and
the time spent parsing and comparing schemas, which happens in stoppable worker threads
(``work.py``) — never on the event loop. The handlers call the synchronous rules of ``core.py``
through :meth:`RegistryApi._ready`, which runs whatever work they turn out to need and calls
them again.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kelp import httpd
from registry import core, limits
from registry.core import NotReady, RegistryError
from registry.schema import SchemaError
from registry.service import Records, SchemaRegistry
from registry.state import (
    COMPATIBILITY_LEVELS,
    MODES,
    SCHEMA_TYPES,
    RegistryState,
    SchemaVersion,
    config_record,
    delete_subject_record,
    hard_delete_record,
    mode_record,
    soft_delete_record,
)
from registry.work import Workers

log = logging.getLogger("kelp.registry")
T = TypeVar("T")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
FORWARDED = "x-kelp-registry-forwarded"
ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})


def _json(obj: Any, status: int = 200) -> httpd.Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return httpd.Response(status, body, CONTENT_TYPE)


def _error(exc: RegistryError) -> httpd.Response:
    return _json({"error_code": exc.code, "message": exc.message}, exc.status)


def _too_large(reason: str) -> httpd.Response:
    return _error(RegistryError(limits.TOO_LARGE, f"Request body too large: {reason}"))


# A body over the limit is still read (and thrown away) up to 64 MiB, so that a client that
# sends it all before reading — most do — gets the 422 rather than a reset connection.
LIMITS = httpd.Limits(max_body_bytes=limits.MAX_BODY_BYTES, max_discard_bytes=64 * 1024 * 1024,
                      discard_timeout=10.0, too_large=_too_large)


def _flag(request: httpd.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


class RegistryApi:
    """One handler for every registry path; ``routes()`` gives the table for serve_http."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self.workers = Workers()

    def routes(self) -> dict[str, httpd.Route]:
        route = httpd.Route(self.handle, ALL_METHODS)
        return {path: route for path in (
            "/", "/subjects", "/subjects/*", "/schemas", "/schemas/*", "/config", "/config/*",
            "/mode", "/mode/*", "/compatibility/*", "/contexts")}

    @property
    def state(self) -> RegistryState:
        return self.registry.state

    async def handle(self, request: httpd.Request) -> httpd.Response:
        parts = [urllib.parse.unquote(p) for p in request.path.strip("/").split("/") if p]
        try:
            await self.registry.wait_ready()
            handler, args = self._route(request.method, parts)
            return await handler(request, *args)
        except RegistryError as exc:
            return _error(exc)

    def _route(self, method: str, parts: list[str]) -> tuple[Callable[..., Awaitable[
            httpd.Response]], list[str]]:
        read = method in ("GET", "HEAD")
        table: list[tuple[str, list[str], Callable[..., Awaitable[httpd.Response]]]] = [
            ("GET", [], self.root),
            ("GET", ["contexts"], self.contexts),
            ("GET", ["subjects"], self.list_subjects),
            ("POST", ["subjects", "*"], self.lookup),
            ("DELETE", ["subjects", "*"], self.delete_subject),
            ("GET", ["subjects", "*", "versions"], self.list_versions),
            ("POST", ["subjects", "*", "versions"], self.register),
            ("GET", ["subjects", "*", "versions", "*"], self.get_version),
            ("DELETE", ["subjects", "*", "versions", "*"], self.delete_version),
            ("GET", ["subjects", "*", "versions", "*", "schema"], self.get_version_schema),
            ("GET", ["subjects", "*", "versions", "*", "referencedby"], self.referenced_by),
            ("GET", ["schemas"], self.list_schemas),
            ("GET", ["schemas", "types"], self.schema_types),
            ("GET", ["schemas", "ids", "*"], self.get_by_id),
            ("GET", ["schemas", "ids", "*", "schema"], self.get_by_id_schema),
            ("GET", ["schemas", "ids", "*", "versions"], self.id_versions),
            ("GET", ["schemas", "ids", "*", "subjects"], self.id_subjects),
            ("GET", ["config"], self.get_config),
            ("PUT", ["config"], self.put_config),
            ("DELETE", ["config"], self.delete_config),
            ("GET", ["config", "*"], self.get_config),
            ("PUT", ["config", "*"], self.put_config),
            ("DELETE", ["config", "*"], self.delete_config),
            ("GET", ["mode"], self.get_mode),
            ("PUT", ["mode"], self.put_mode),
            ("DELETE", ["mode"], self.delete_mode),
            ("GET", ["mode", "*"], self.get_mode),
            ("PUT", ["mode", "*"], self.put_mode),
            ("DELETE", ["mode", "*"], self.delete_mode),
            ("POST", ["compatibility", "subjects", "*", "versions"], self.check),
            ("POST", ["compatibility", "subjects", "*", "versions", "*"], self.check),
        ]
        path_matched = False
        for want_method, pattern, handler in table:
            if len(pattern) != len(parts) or any(
                    p != "*" and p != part for p, part in zip(pattern, parts, strict=True)):
                continue
            path_matched = True
            if want_method == method or (read and want_method == "GET"):
                return handler, [part for p, part in zip(pattern, parts, strict=True)
                                 if p == "*"]
        if path_matched:
            raise RegistryError(405, f"HTTP {method} not allowed here")
        raise RegistryError(404, "HTTP 404 Not Found")

    # -- writes: on the leader, or forwarded to it -----------------------------------------

    async def _ready(self, attempt: Callable[[], T],
                     budget: limits.Budget | None = None) -> T:
        """``attempt()``, after running in workers whatever work it needs first.

        ``attempt`` reads parsed schemas and verdicts from the cache; each miss raises
        :class:`NotReady` with the job that fills it, which runs in a worker before ``attempt``
        runs again. All the jobs of one request share one time budget."""
        while True:
            try:
                return attempt()
            except NotReady as need:
                budget = budget or limits.Budget(limits.WORK_TIMEOUT_S)
                await self._do(need.job, budget)

    async def _prepare(self, attempt: Callable[[], object], budget: limits.Budget) -> None:
        """As :meth:`_ready` for the work alone: what ``attempt`` itself raises is ignored
        (errors of the work still raise)."""
        while True:
            try:
                attempt()
                return
            except NotReady as need:
                await self._do(need.job, budget)
            except RegistryError:
                return

    async def _do(self, job: core.Job, budget: limits.Budget) -> None:
        try:
            result = await self.workers.run(budget, job.run)
        except limits.WorkStopped:  # out of time (a cancelled request raises Cancelled)
            raise limits.too_slow(budget.seconds, job.what) from None
        self.registry.cache.store(job, result)

    async def _local_write(self, plan: Callable[[RegistryState], tuple[Records, Any]]
                           ) -> httpd.Response:
        """Write on this (leader) registry.

        The work the plan needs (parsing, compatibility) is done first, outside the write
        lock, by a dry run of the plan on the current state. Under the lock the plan runs again
        on the state of that moment; if that needs more (another write got in between), the
        lock is let go while the work runs, and the plan is tried again."""
        budget = limits.Budget(limits.WORK_TIMEOUT_S)
        await self._prepare(lambda: plan(self.state), budget)
        while True:
            try:
                return _json(await self.registry.write(plan))
            except NotReady as need:
                await self._do(need.job, budget)

    async def _write(self, request: httpd.Request,
                     plan: Callable[[RegistryState], tuple[Records, Any]]) -> httpd.Response:
        if self.registry.is_leader:
            return await self._local_write(plan)
        if request.headers.get(FORWARDED):
            raise RegistryError(50003, "Error while forwarding the request to the leader: "
                                "the receiving registry is not the leader either")
        leader = await self.registry.wait_for_leader()
        if leader == self.registry.identity:  # elected meanwhile
            return await self._local_write(plan)
        target = request.path + (("?" + urllib.parse.urlencode(request.query_items))
                                 if request.query_items else "")
        try:
            reply = await httpd.http_request(
                leader.host, leader.port, request.method, target, body=request.body,
                headers={"content-type": request.headers.get("content-type", CONTENT_TYPE),
                         FORWARDED: "1"}, timeout=60, max_body_bytes=LIMITS.max_body_bytes)
        except httpd.HttpClientError as exc:
            raise RegistryError(50003, "Error while forwarding the request to the leader "
                                f"{leader.url}: {exc}") from None
        return httpd.Response(reply.status, reply.body, reply.content_type or CONTENT_TYPE)

    async def register(self, request: httpd.Request, subject: str) -> httpd.Response:
        body = _body(request)
        normalize = _flag(request, "normalize")

        def plan(state: RegistryState) -> tuple[Records, Any]:
            result = core.plan_registration(state, self.registry.cache, subject, body,
                                            normalize=normalize)
            return result.records, {"id": result.id}

        return await self._write(request, plan)

    async def delete_subject(self, request: httpd.Request, subject: str) -> httpd.Response:
        permanent = _flag(request, "permanent")

        def plan(state: RegistryState) -> tuple[Records, Any]:
            every = state.versions(subject, deleted=True)
            live = state.versions(subject)
            if not every:
                raise core.subject_not_found(subject)
            _refuse_if_referenced(state, live)
            if permanent:
                if live:
                    raise RegistryError(40405, f"Subject '{subject}' was not deleted first "
                                        "before being permanently deleted")
                return [hard_delete_record(subject, s.version) for s in every], [
                    s.version for s in every]
            if not live:
                raise RegistryError(40404, f"Subject '{subject}' was soft deleted.Set "
                                    "permanent=true to delete permanently")
            return [delete_subject_record(subject, live[-1].version)], [
                s.version for s in live]

        return await self._write(request, plan)

    async def delete_version(self, request: httpd.Request, subject: str,
                             version_text: str) -> httpd.Response:
        permanent = _flag(request, "permanent")

        def plan(state: RegistryState) -> tuple[Records, Any]:
            stored = core.get_version(state, subject, version_text, deleted=True)
            if permanent:
                if not stored.deleted:
                    raise RegistryError(40407, f"Subject '{subject}' Version "
                                        f"{stored.version} was not deleted first before "
                                        "being permanently deleted")
                return [hard_delete_record(subject, stored.version)], stored.version
            if stored.deleted:
                raise RegistryError(40406, f"Subject '{subject}' Version {stored.version} was "
                                    "soft deleted.Set permanent=true to delete permanently")
            _refuse_if_referenced(state, [stored])
            return [soft_delete_record(stored)], stored.version

        return await self._write(request, plan)

    async def put_config(self, request: httpd.Request,
                         subject: str | None = None) -> httpd.Response:
        body = _body(request)
        level = str(body.get("compatibility", "")).upper() if isinstance(body, dict) else ""
        if level not in COMPATIBILITY_LEVELS:
            raise RegistryError(42203, "Invalid compatibility level. Valid values are none, "
                                "backward, forward, full, backward_transitive, "
                                "forward_transitive, and full_transitive")
        return await self._write(request, lambda state: (
            [config_record(subject, level)], {"compatibility": level}))

    async def delete_config(self, request: httpd.Request,
                            subject: str | None = None) -> httpd.Response:
        def plan(state: RegistryState) -> tuple[Records, Any]:
            if subject is None:
                return [config_record(None, None)], {
                    "compatibilityLevel": state.compatibility(None)}
            if subject not in state.subject_compatibility:
                raise _no_subject_setting(state, subject, "compatibility", 40408)
            return [config_record(subject, None)], {
                "compatibilityLevel": state.subject_compatibility[subject]}

        return await self._write(request, plan)

    async def put_mode(self, request: httpd.Request,
                       subject: str | None = None) -> httpd.Response:
        body = _body(request)
        mode = str(body.get("mode", "")).upper() if isinstance(body, dict) else ""
        if mode not in MODES:
            raise RegistryError(42204, f"Invalid mode. Valid values are "
                                f"{', '.join(MODES)}")
        force = _flag(request, "force")

        def plan(state: RegistryState) -> tuple[Records, Any]:
            has_schemas = (state.versions(subject, deleted=True) if subject is not None
                           else state.subject_names(deleted=True))
            if mode == "IMPORT" and has_schemas and not force:
                raise RegistryError(42205, "Cannot import since found existing subjects")
            return [mode_record(subject, mode)], {"mode": mode}

        return await self._write(request, plan)

    async def delete_mode(self, request: httpd.Request,
                          subject: str | None = None) -> httpd.Response:
        def plan(state: RegistryState) -> tuple[Records, Any]:
            if subject is None:
                return [mode_record(None, None)], {"mode": state.mode(None)}
            if subject not in state.subject_mode:
                raise _no_subject_setting(state, subject, "mode", 40409)
            return [mode_record(subject, None)], {"mode": state.subject_mode[subject]}

        return await self._write(request, plan)

    # -- reads -----------------------------------------------------------------------------

    async def root(self, request: httpd.Request) -> httpd.Response:
        return _json({})

    async def contexts(self, request: httpd.Request) -> httpd.Response:
        return _json(["."])

    async def list_subjects(self, request: httpd.Request) -> httpd.Response:
        return _json(self.state.subject_names(deleted=_flag(request, "deleted"),
                                              prefix=request.query.get("subjectPrefix", "")))

    async def list_versions(self, request: httpd.Request, subject: str) -> httpd.Response:
        versions = self.state.versions(subject, deleted=_flag(request, "deleted"))
        if not versions:
            raise core.subject_not_found(subject)
        return _json([s.version for s in versions])

    async def lookup(self, request: httpd.Request, subject: str) -> httpd.Response:
        body = _body(request)
        deleted, normalize = _flag(request, "deleted"), _flag(request, "normalize")
        stored = await self._ready(lambda: core.lookup(
            self.state, self.registry.cache, subject, body, deleted=deleted,
            normalize=normalize))
        return _json(core.version_json(stored))

    async def _formatted(self, stored: SchemaVersion, request: httpd.Request) -> str:
        fmt = request.query.get("format", "")
        if not fmt:
            return stored.schema
        parsed = await self._ready(lambda: self.registry.cache.of(self.state, stored))
        budget = limits.Budget(limits.WORK_TIMEOUT_S)
        try:
            return await self.workers.run(budget, parsed.schema.formatted, fmt)
        except SchemaError as exc:
            raise RegistryError(42201, f"Invalid format {fmt!r}: {exc}") from None
        except RecursionError:
            raise RegistryError(42201, f"Invalid format {fmt!r}: the schema nests too deeply "
                                "to print that way") from None
        except limits.WorkStopped:
            raise limits.too_slow(budget.seconds, "formatting the schema") from None

    async def get_version(self, request: httpd.Request, subject: str,
                          version_text: str) -> httpd.Response:
        stored = core.get_version(self.state, subject, version_text,
                                  deleted=_flag(request, "deleted"))
        return _json(core.version_json(stored, await self._formatted(stored, request)))

    async def get_version_schema(self, request: httpd.Request, subject: str,
                                 version_text: str) -> httpd.Response:
        stored = core.get_version(self.state, subject, version_text,
                                  deleted=_flag(request, "deleted"))
        return httpd.Response(200, (await self._formatted(stored, request)).encode(),
                              CONTENT_TYPE)

    async def referenced_by(self, request: httpd.Request, subject: str,
                            version_text: str) -> httpd.Response:
        stored = core.get_version(self.state, subject, version_text, deleted=True)
        return _json(self.state.referenced_by(subject, stored.version))

    async def list_schemas(self, request: httpd.Request) -> httpd.Response:
        prefix = request.query.get("subjectPrefix", "")
        deleted, latest_only = _flag(request, "deleted"), _flag(request, "latestOnly")
        out = []
        for subject in self.state.subject_names(deleted=deleted, prefix=prefix):
            versions = self.state.versions(subject, deleted=deleted)
            out += [core.version_json(s) for s in (versions[-1:] if latest_only else versions)]
        return _json(out)

    async def schema_types(self, request: httpd.Request) -> httpd.Response:
        return _json(sorted(SCHEMA_TYPES))

    def _by_id(self, id_text: str, request: httpd.Request) -> SchemaVersion:
        try:
            schema_id = int(id_text)
        except ValueError:
            raise core.schema_not_found(f"Schema {id_text} not found") from None
        stored = self.state.by_id.get(schema_id)
        subject = request.query.get("subject")
        if subject:
            stored = next((s for s in self.state.versions(subject, deleted=True)
                           if s.id == schema_id), None)
        if stored is None:
            raise core.schema_not_found(f"Schema {schema_id} not found")
        return stored

    async def get_by_id(self, request: httpd.Request, id_text: str) -> httpd.Response:
        stored = self._by_id(id_text, request)
        return _json(stored.to_json(await self._formatted(stored, request), located=False))

    async def get_by_id_schema(self, request: httpd.Request, id_text: str) -> httpd.Response:
        stored = self._by_id(id_text, request)
        return httpd.Response(200, (await self._formatted(stored, request)).encode(),
                              CONTENT_TYPE)

    def _holders(self, request: httpd.Request, id_text: str) -> list[SchemaVersion]:
        stored = self._by_id(id_text, request)
        deleted = _flag(request, "deleted")
        return [s for subject in sorted(self.state.subjects)
                for s in self.state.versions(subject, deleted=deleted) if s.id == stored.id]

    async def id_versions(self, request: httpd.Request, id_text: str) -> httpd.Response:
        return _json([{"subject": s.subject, "version": s.version}
                      for s in self._holders(request, id_text)])

    async def id_subjects(self, request: httpd.Request, id_text: str) -> httpd.Response:
        return _json(sorted({s.subject for s in self._holders(request, id_text)}))

    async def get_config(self, request: httpd.Request,
                         subject: str | None = None) -> httpd.Response:
        if (subject is not None and subject not in self.state.subject_compatibility
                and not _flag(request, "defaultToGlobal")):
            raise _no_subject_setting(self.state, subject, "compatibility", 40408)
        return _json({"compatibilityLevel": self.state.compatibility(subject)})

    async def get_mode(self, request: httpd.Request,
                       subject: str | None = None) -> httpd.Response:
        if (subject is not None and subject not in self.state.subject_mode
                and not _flag(request, "defaultToGlobal")):
            raise _no_subject_setting(self.state, subject, "mode", 40409)
        return _json({"mode": self.state.mode(subject)})

    async def check(self, request: httpd.Request, subject: str,
                    version_text: str | None = None) -> httpd.Response:
        body = _body(request)
        cache = self.registry.cache

        def attempt() -> list[str]:
            state = self.state
            schema_type, text, refs = core.request_schema(state, body)
            new = cache.parse(state, schema_type, text, refs)
            level = state.compatibility(subject)
            if version_text is None:
                previous = [cache.of(state, s).schema for s in state.versions(subject)]
            else:
                previous = [cache.of(state, core.get_version(state, subject,
                                                             version_text)).schema]
                level = level.removesuffix("_TRANSITIVE")
            return core.compatibility_messages(level, new.schema, previous,
                                               cache.compatibility_errors)

        messages = await self._ready(attempt)
        out: dict[str, Any] = {"is_compatible": not messages}
        if _flag(request, "verbose"):
            out["messages"] = messages
        return _json(out)


def _body(request: httpd.Request) -> Any:
    """The decoded JSON body; its size and nesting are checked first, so that decoding can
    neither take long nor recurse deeply."""
    if not request.body:
        return {}
    limits.check_body_size(len(request.body))  # also for bodies not from our HTTP server
    try:
        text = request.body.decode(json.detect_encoding(request.body))
    except UnicodeDecodeError as exc:
        raise RegistryError(400, f"Unrecognized request body: {exc}") from None
    limits.check_body(text)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RegistryError(400, f"Unrecognized request body: {exc}") from None


def _refuse_if_referenced(state: RegistryState, versions: list[SchemaVersion]) -> None:
    for stored in versions:
        if state.referenced_by(stored.subject, stored.version):
            raise RegistryError(42206, "One or more references exist to the schema "
                                f"{{subject={stored.subject},version={stored.version}}}.")


def _no_subject_setting(state: RegistryState, subject: str, what: str,
                        code: int) -> RegistryError:
    if not state.versions(subject, deleted=True):
        return core.subject_not_found(subject)
    return RegistryError(code, f"Subject '{subject}' does not have subject-level {what} "
                         "configured")
