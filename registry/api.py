"""The Confluent Schema Registry REST API, served by the gateway's HTTP server.

Reads answer from this gateway's copy of the state. Writes (POST/PUT/DELETE that change
something) run on the elected leader; any other gateway forwards the request there unchanged
and passes the answer back. Errors use Confluent's shape ``{"error_code", "message"}`` with the
HTTP status taken from the code's first three digits (40401 -> 404).

What a request may cost is bounded (``limits.py``): the body's size (checked by the HTTP server
before it is read) and nesting (checked before it is decoded), the schema's size and shape, and
the time spent parsing and comparing schemas, which happens in stoppable worker threads
(``work.py``) — never on the event loop. The handlers call the synchronous rules of ``core.py``
through :meth:`work.Jobs.ready`, which runs whatever work they turn out to need and calls
them again. The write endpoints are in ``writes.py``, the shapes they share in ``rest.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from kelp import http, httpd
from registry import auth, core, limits, rest
from registry.auth import Authenticator
from registry.core import RegistryError
from registry.rest import (
    CONTENT_TYPE,
    error_reply,
    flag,
    json_body,
    negotiate,
    no_subject_setting,
    reply,
)
from registry.schema import SchemaError
from registry.service import SchemaRegistry
from registry.state import SCHEMA_TYPES, RegistryState, SchemaVersion
from registry.work import Jobs, Workers
from registry.writes import Writes

ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
LIMITS = rest.LIMITS


class RegistryApi:
    """One handler for every registry path; ``routes()`` gives the table for serve_http."""

    def __init__(self, registry: SchemaRegistry, client: http.Client,
                 auth: Authenticator | None = None) -> None:
        self.registry = registry
        self.auth = auth  # None: open to everyone (``just up``'s loopback default)
        self.jobs = Jobs(Workers(), registry.cache)
        self.writes = Writes(registry, client, self.jobs)
        self._router = self._routes()

    def routes(self) -> dict[str, httpd.Route]:
        route = httpd.Route(self.handle, ALL_METHODS)
        return {path: route for path in (
            "/", "/subjects", "/subjects/*", "/schemas", "/schemas/*", "/config", "/config/*",
            "/mode", "/mode/*", "/compatibility/*", "/contexts")}

    @property
    def state(self) -> RegistryState:
        return self.registry.state

    async def handle(self, request: httpd.Request) -> httpd.Response:
        media = negotiate(request.headers.get("accept"))
        if media is None:
            return error_reply(RegistryError(406, "HTTP 406 Not Acceptable"))
        refused = self._refusal(request)
        response = refused if refused is not None else await self._handle(request)
        if media != CONTENT_TYPE and response.content_type == CONTENT_TYPE:
            response = dataclasses.replace(response, content_type=media)
        return response

    def _refusal(self, request: httpd.Request) -> httpd.Response | None:
        """401 without good credentials, 403 for a role too low for the route; None: go on.
        Checked by every gateway a request reaches (a forwarded write carries the caller's
        header, so the leader checks the same user)."""
        if self.auth is None:
            return None
        try:
            user, password = auth.credentials(request.headers.get("authorization"))
            principal = self.auth.authenticate(user, password)
            if principal is None:
                raise auth.Unauthorized("Invalid username or password")
        except auth.Unauthorized as exc:
            response = error_reply(RegistryError(40101, str(exc)))
            return dataclasses.replace(
                response, headers={**response.headers,
                                   "www-authenticate": 'Basic realm="kelp"'})
        needed = auth.required_role(request.method, request.path, request.query)
        if self.auth.role(principal, request.client_host) < needed:
            return error_reply(RegistryError(40301, auth.denied_message(
                principal, request.method, request.path)))
        return None

    async def _handle(self, request: httpd.Request) -> httpd.Response:
        try:
            await self.registry.wait_ready()
            try:
                handler, args = self._router.match(request.method, request.path)
            except httpd.NoRoute as exc:
                if exc.allowed:
                    raise RegistryError(405, f"HTTP {request.method} not allowed here") from None
                raise RegistryError(404, "HTTP 404 Not Found") from None
            return await handler(request, *args)
        except RegistryError as exc:
            return error_reply(exc)

    def _routes(self) -> httpd.Router[Callable[..., Awaitable[httpd.Response]]]:
        router: httpd.Router[Callable[..., Awaitable[httpd.Response]]] = httpd.Router()
        writes = self.writes
        for method, pattern, handler in (
            ("GET", "/", self.root),
            ("GET", "/contexts", self.contexts),
            ("GET", "/subjects", self.list_subjects),
            ("POST", "/subjects/*", self.lookup),
            ("DELETE", "/subjects/*", writes.delete_subject),
            ("GET", "/subjects/*/versions", self.list_versions),
            ("POST", "/subjects/*/versions", writes.register),
            ("GET", "/subjects/*/versions/*", self.get_version),
            ("DELETE", "/subjects/*/versions/*", writes.delete_version),
            ("GET", "/subjects/*/versions/*/schema", self.get_version_schema),
            ("GET", "/subjects/*/versions/*/referencedby", self.referenced_by),
            ("GET", "/schemas", self.list_schemas),
            ("GET", "/schemas/types", self.schema_types),
            ("GET", "/schemas/ids/*", self.get_by_id),
            ("GET", "/schemas/ids/*/schema", self.get_by_id_schema),
            ("GET", "/schemas/ids/*/versions", self.id_versions),
            ("GET", "/schemas/ids/*/subjects", self.id_subjects),
            ("GET", "/config", self.get_config),
            ("PUT", "/config", writes.put_config),
            ("DELETE", "/config", writes.delete_config),
            ("GET", "/config/*", self.get_config),
            ("PUT", "/config/*", writes.put_config),
            ("DELETE", "/config/*", writes.delete_config),
            ("GET", "/mode", self.get_mode),
            ("PUT", "/mode", writes.put_mode),
            ("DELETE", "/mode", writes.delete_mode),
            ("GET", "/mode/*", self.get_mode),
            ("PUT", "/mode/*", writes.put_mode),
            ("DELETE", "/mode/*", writes.delete_mode),
            ("POST", "/compatibility/subjects/*/versions", self.check),
            ("POST", "/compatibility/subjects/*/versions/*", self.check),
        ):
            router.add(method, pattern, handler)
        return router

    # -- reads -----------------------------------------------------------------------------

    async def root(self, request: httpd.Request) -> httpd.Response:
        return reply({})

    async def contexts(self, request: httpd.Request) -> httpd.Response:
        return reply(["."])

    async def list_subjects(self, request: httpd.Request) -> httpd.Response:
        return reply(self.state.subject_names(deleted=flag(request, "deleted"),
                                              prefix=request.query.get("subjectPrefix", "")))

    async def list_versions(self, request: httpd.Request, subject: str) -> httpd.Response:
        versions = self.state.versions(subject, deleted=flag(request, "deleted"))
        if not versions:
            raise core.subject_not_found(subject)
        return reply([s.version for s in versions])

    async def lookup(self, request: httpd.Request, subject: str) -> httpd.Response:
        body = json_body(request)
        deleted, normalize = flag(request, "deleted"), flag(request, "normalize")
        stored = await self.jobs.ready(lambda: core.lookup(
            self.state, self.registry.cache, subject, body, deleted=deleted,
            normalize=normalize))
        return reply(core.version_json(stored))

    async def _formatted(self, stored: SchemaVersion, request: httpd.Request) -> str:
        fmt = request.query.get("format", "")
        if not fmt:
            return stored.schema
        parsed = await self.jobs.ready(lambda: self.registry.cache.of(self.state, stored))
        budget = limits.Budget(limits.WORK_TIMEOUT_S)
        try:
            return await self.jobs.workers.run(budget, parsed.schema.formatted, fmt)
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
                                  deleted=flag(request, "deleted"))
        return reply(core.version_json(stored, await self._formatted(stored, request)))

    async def get_version_schema(self, request: httpd.Request, subject: str,
                                 version_text: str) -> httpd.Response:
        stored = core.get_version(self.state, subject, version_text,
                                  deleted=flag(request, "deleted"))
        return httpd.Response(200, (await self._formatted(stored, request)).encode(),
                              CONTENT_TYPE)

    async def referenced_by(self, request: httpd.Request, subject: str,
                            version_text: str) -> httpd.Response:
        stored = core.get_version(self.state, subject, version_text, deleted=True)
        return reply(self.state.referenced_by(subject, stored.version))

    async def list_schemas(self, request: httpd.Request) -> httpd.Response:
        prefix = request.query.get("subjectPrefix", "")
        deleted, latest_only = flag(request, "deleted"), flag(request, "latestOnly")
        out = []
        for subject in self.state.subject_names(deleted=deleted, prefix=prefix):
            versions = self.state.versions(subject, deleted=deleted)
            out += [core.version_json(s) for s in (versions[-1:] if latest_only else versions)]
        return reply(out)

    async def schema_types(self, request: httpd.Request) -> httpd.Response:
        return reply(sorted(SCHEMA_TYPES))

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
        return reply(stored.to_json(await self._formatted(stored, request), located=False))

    async def get_by_id_schema(self, request: httpd.Request, id_text: str) -> httpd.Response:
        stored = self._by_id(id_text, request)
        return httpd.Response(200, (await self._formatted(stored, request)).encode(),
                              CONTENT_TYPE)

    def _holders(self, request: httpd.Request, id_text: str) -> list[SchemaVersion]:
        stored = self._by_id(id_text, request)
        deleted = flag(request, "deleted")
        return [s for subject in sorted(self.state.subjects)
                for s in self.state.versions(subject, deleted=deleted) if s.id == stored.id]

    async def id_versions(self, request: httpd.Request, id_text: str) -> httpd.Response:
        return reply([{"subject": s.subject, "version": s.version}
                      for s in self._holders(request, id_text)])

    async def id_subjects(self, request: httpd.Request, id_text: str) -> httpd.Response:
        return reply(sorted({s.subject for s in self._holders(request, id_text)}))

    async def get_config(self, request: httpd.Request,
                         subject: str | None = None) -> httpd.Response:
        if (subject is not None and subject not in self.state.subject_compatibility
                and not flag(request, "defaultToGlobal")):
            raise no_subject_setting(self.state, subject, "compatibility", 40408)
        return reply({"compatibilityLevel": self.state.compatibility(subject)})

    async def get_mode(self, request: httpd.Request,
                       subject: str | None = None) -> httpd.Response:
        if (subject is not None and subject not in self.state.subject_mode
                and not flag(request, "defaultToGlobal")):
            raise no_subject_setting(self.state, subject, "mode", 40409)
        return reply({"mode": self.state.mode(subject)})

    async def check(self, request: httpd.Request, subject: str,
                    version_text: str | None = None) -> httpd.Response:
        body = json_body(request)
        cache = self.registry.cache

        def attempt() -> list[str]:
            state = self.state
            schema_type, text, refs = core.request_schema(state, body)
            new = cache.parse(state, schema_type, text, refs)
            level = state.compatibility(subject)
            if version_text is None:
                previous = [cache.of(state, s).schema for s in state.versions(subject)]
            else:
                previous = [cache.of(state, s).schema
                            for s in _version_to_check(state, subject, version_text)]
                level = level.removesuffix("_TRANSITIVE")
            return core.compatibility_messages(level, new.schema, previous,
                                               cache.compatibility_errors)

        messages = await self.jobs.ready(attempt)
        out: dict[str, Any] = {"is_compatible": not messages}
        if flag(request, "verbose"):
            out["messages"] = messages
        return reply(out)



def _version_to_check(state: RegistryState, subject: str,
                      version_text: str) -> list[SchemaVersion]:
    """The version a compatibility check compares with, as Confluent finds it: "latest" of a
    subject with no live version is nothing to be incompatible with; any other missing
    version, of an existing subject or not, is 40402."""
    number = core.parse_version(version_text)
    live = state.versions(subject)
    if number is None:
        return live[-1:]
    found = [s for s in live if s.version == number]
    if not found:
        raise core.version_not_found(subject, number)
    return found
