"""What every registry endpoint shares: Confluent's reply and error shapes, the HTTP limits
of the registry's paths, and reading a request's flags and JSON body within the limits."""

from __future__ import annotations

import json
from typing import Any

from kelp import httpd
from registry import core, limits
from registry.core import RegistryError
from registry.state import RegistryState, SchemaVersion

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# What the registry produces, with Confluent's server-side preference (Jersey's qs): a client
# asking for application/json gets application/json; one that accepts anything gets v1.
PRODUCED = ((CONTENT_TYPE, 1.0), ("application/vnd.schemaregistry+json", 0.9),
            ("application/json", 0.5))
FORWARDED = "x-kelp-registry-forwarded"


def negotiate(accept: str | None) -> str | None:
    """The media type to answer an ``Accept`` header with; None if nothing it accepts is
    produced (answered 406, as Confluent's server does)."""
    if not accept or not accept.strip():
        return CONTENT_TYPE
    ranges = []
    for item in accept.split(",")[:64]:  # a header of thousands of ranges is not a client
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(1.0, max(0.0, float(value)))
                except ValueError:
                    quality = 0.0
        ranges.append((media.lower(), quality))
    best, best_score = None, 0.0
    for media, preference in PRODUCED:
        major = media.split("/")[0]
        # The most specific range that matches decides this type's quality.
        matches = [(2 if pattern == media else 1 if pattern == f"{major}/*" else 0, quality)
                   for pattern, quality in ranges
                   if pattern in (media, f"{major}/*", "*/*", "*")]
        if matches:
            score = max(matches)[1] * preference
            if score > best_score:
                best, best_score = media, score
    return best


def reply(obj: Any, status: int = 200) -> httpd.Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return httpd.Response(status, body, CONTENT_TYPE)


def error_reply(exc: RegistryError) -> httpd.Response:
    return reply({"error_code": exc.code, "message": exc.message}, exc.status)


def too_large(reason: str) -> httpd.Response:
    return error_reply(RegistryError(limits.TOO_LARGE, f"Request body too large: {reason}"))


# A body over the limit is still read (and thrown away) up to 64 MiB, so that a client that
# sends it all before reading — most do — gets the 422 rather than a reset connection.
LIMITS = httpd.Limits(max_body_bytes=limits.MAX_BODY_BYTES, max_discard_bytes=64 * 1024 * 1024,
                      discard_timeout=10.0, too_large=too_large)


def flag(request: httpd.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


def json_body(request: httpd.Request) -> Any:
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


def refuse_if_referenced(state: RegistryState, versions: list[SchemaVersion]) -> None:
    for stored in versions:
        if state.referenced_by(stored.subject, stored.version):
            raise RegistryError(42206, "One or more references exist to the schema "
                                f"{{subject={stored.subject},version={stored.version}}}.")


def no_subject_setting(state: RegistryState, subject: str, what: str,
                        code: int) -> RegistryError:
    if not state.versions(subject, deleted=True):
        return core.subject_not_found(subject)
    return RegistryError(code, f"Subject '{subject}' does not have subject-level {what} "
                         "configured")
