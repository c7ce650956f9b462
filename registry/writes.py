"""The registry's writes: planned against the current state and appended on the leader, or
forwarded unchanged to the leader by any other gateway (over the shared keep-alive client),
whose answer is passed back."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from kelp import http, httpd
from registry import core, limits, rest
from registry.core import NotReady, RegistryError
from registry.rest import (
    CONTENT_TYPE,
    FORWARDED,
    flag,
    json_body,
    no_subject_setting,
    refuse_if_referenced,
    reply,
)
from registry.service import Records, SchemaRegistry
from registry.state import (
    COMPATIBILITY_LEVELS,
    MODES,
    RegistryState,
    config_record,
    delete_subject_record,
    hard_delete_record,
    mode_record,
    soft_delete_record,
)
from registry.work import Jobs


class Writes:
    """The write endpoints (``RegistryApi`` routes to them)."""

    def __init__(self, registry: SchemaRegistry, client: http.Client, jobs: Jobs) -> None:
        self.registry = registry
        self.client = client  # keep-alive connections to the leader, for forwarded writes
        self.jobs = jobs

    async def _local_write(self, plan: Callable[[RegistryState], tuple[Records, Any]]
                           ) -> httpd.Response:
        """Write on this (leader) registry.

        The work the plan needs (parsing, compatibility) is done first, outside the write
        lock, by a dry run of the plan on the current state. Under the lock the plan runs again
        on the state of that moment; if that needs more (another write got in between), the
        lock is let go while the work runs, and the plan is tried again."""
        budget = limits.Budget(limits.WORK_TIMEOUT_S)
        await self.jobs.prepare(lambda: plan(self.registry.state), budget)
        while True:
            try:
                return reply(await self.registry.write(plan))
            except NotReady as need:
                await self.jobs.do(need.job, budget)

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
            answer = await self.client.request(
                leader.host, leader.port, request.method, target, body=request.body,
                headers=forwarded_headers(request), timeout=60,
                max_body_bytes=rest.LIMITS.max_body_bytes)
        except http.HttpClientError as exc:
            raise RegistryError(50003, "Error while forwarding the request to the leader "
                                f"{leader.url}: {exc}") from None
        return httpd.Response(answer.status, answer.body, answer.content_type or CONTENT_TYPE)

    async def register(self, request: httpd.Request, subject: str) -> httpd.Response:
        body = json_body(request)
        normalize = flag(request, "normalize")

        def plan(state: RegistryState) -> tuple[Records, Any]:
            result = core.plan_registration(state, self.registry.cache, subject, body,
                                            normalize=normalize)
            return result.records, {"id": result.id}

        return await self._write(request, plan)

    async def delete_subject(self, request: httpd.Request, subject: str) -> httpd.Response:
        permanent = flag(request, "permanent")

        def plan(state: RegistryState) -> tuple[Records, Any]:
            every = state.versions(subject, deleted=True)
            live = state.versions(subject)
            if not every:
                raise core.subject_not_found(subject)
            refuse_if_referenced(state, live)
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
        permanent = flag(request, "permanent")

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
            refuse_if_referenced(state, [stored])
            return [soft_delete_record(stored)], stored.version

        return await self._write(request, plan)

    async def put_config(self, request: httpd.Request,
                         subject: str | None = None) -> httpd.Response:
        body = json_body(request)
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
                raise no_subject_setting(state, subject, "compatibility", 40408)
            return [config_record(subject, None)], {
                "compatibilityLevel": state.subject_compatibility[subject]}

        return await self._write(request, plan)

    async def put_mode(self, request: httpd.Request,
                       subject: str | None = None) -> httpd.Response:
        body = json_body(request)
        mode = str(body.get("mode", "")).upper() if isinstance(body, dict) else ""
        if mode not in MODES:
            raise RegistryError(42204, f"Invalid mode. Valid values are "
                                f"{', '.join(MODES)}")
        force = flag(request, "force")

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
                raise no_subject_setting(state, subject, "mode", 40409)
            return [mode_record(subject, None)], {"mode": state.subject_mode[subject]}

        return await self._write(request, plan)


def forwarded_headers(request: httpd.Request) -> dict[str, str]:
    """What the leader is sent: the body's type, the caller's credentials (the leader checks
    them again), and the mark that stops a second forward."""
    headers = {"content-type": request.headers.get("content-type", CONTENT_TYPE), FORWARDED: "1"}
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    return headers
