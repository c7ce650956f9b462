"""Registry rules on top of the state: parsing with references, compatibility, registration.

Nothing here does IO. Reads answer straight from :class:`RegistryState`; writes are *planned*
here (which records to append, what to answer) and carried out by the service, which appends
the records to ``_schemas`` and waits until its own reader has applied them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.registry.schema import ParsedSchema, SchemaError
from gateway.registry.state import (
    SCHEMA_TYPES,
    Reference,
    RegistryState,
    SchemaVersion,
    contract_text,
    schema_record,
)

_MODULES = {"AVRO": "gateway.registry.avro", "JSON": "gateway.registry.json_schema",
            "PROTOBUF": "gateway.registry.protobuf"}


class RegistryError(Exception):
    """An answer in Confluent's error shape: HTTP status = the code's first three digits."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return self.code if self.code < 1000 else int(str(self.code)[:3])


def subject_not_found(subject: str) -> RegistryError:
    return RegistryError(40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: Any) -> RegistryError:
    return RegistryError(40402, f"Version {version} not found.")


def schema_not_found(detail: str = "Schema not found") -> RegistryError:
    return RegistryError(40403, detail)


def parser(schema_type: str) -> Callable[[str, Sequence[tuple[str, str]]], ParsedSchema]:
    if schema_type not in SCHEMA_TYPES:
        raise RegistryError(42201, f"Invalid schema type {schema_type!r}; "
                            f"expected one of {', '.join(SCHEMA_TYPES)}")
    return importlib.import_module(_MODULES[schema_type]).parse  # type: ignore[no-any-return]


def parse_version(text: str) -> int | None:
    """A version path segment: a positive number, ``latest`` or -1 (None means latest)."""
    if text == "latest" or text == "-1":
        return None
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1 or number > 2**31 - 1:
        raise RegistryError(42202, f"The specified version '{text}' is not a valid version "
                            "id. Allowed values are between [1, 2^31-1] and the string "
                            "\"latest\"")
    return number


def get_version(state: RegistryState, subject: str, version_text: str, *,
                deleted: bool = False) -> SchemaVersion:
    number = parse_version(version_text)
    if subject not in state.subjects:
        raise subject_not_found(subject)
    versions = state.versions(subject, deleted=deleted)
    if number is None:
        if not versions:
            raise subject_not_found(subject)
        return versions[-1]
    for stored in versions:
        if stored.version == number:
            return stored
    raise version_not_found(subject, number)


def resolve_references(state: RegistryState,
                       refs: Sequence[Reference]) -> list[tuple[str, str]]:
    """The (name, schema text) pairs a parser needs, transitively, dependencies first."""
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, int]] = set()

    def visit(ref: Reference, depth: int) -> None:
        if depth > 32:
            raise RegistryError(42201, "Invalid schema: references nest too deeply (a cycle?)")
        try:
            target = get_version(state, ref.subject, str(ref.version), deleted=True)
        except RegistryError:
            raise RegistryError(42201, f"Invalid schema: reference {ref.name!r} to subject "
                                f"{ref.subject!r} version {ref.version} not found") from None
        if (target.subject, target.version) in seen:
            return
        seen.add((target.subject, target.version))
        for inner in target.references:
            visit(inner, depth + 1)
        out.append((ref.name, target.schema))

    for ref in refs:
        visit(ref, 0)
    return out


def parse_request_references(raw: Any, state: RegistryState) -> tuple[Reference, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RegistryError(42201, "Invalid schema: references must be a list")
    refs = []
    for item in raw:
        try:
            name, subject, version = str(item["name"]), str(item["subject"]), int(item["version"])
        except (KeyError, TypeError, ValueError):
            raise RegistryError(42201, "Invalid schema: each reference needs name, subject "
                                "and version") from None
        if version == -1:  # "latest" at registration time, stored as the concrete number
            latest = state.versions(subject)
            if not latest:
                raise RegistryError(42201, f"Invalid schema: reference {name!r}: subject "
                                    f"{subject!r} has no versions")
            version = latest[-1].version
        refs.append(Reference(name, subject, version))
    return tuple(refs)


class ParsedCache:
    """Parsed schemas by identity: parsing Protobuf runs a compiler, so do it once."""

    def __init__(self, limit: int = 10_000) -> None:
        self._parsed: dict[tuple[str, str, tuple[Reference, ...]], ParsedSchema] = {}
        self._limit = limit

    def parse(self, state: RegistryState, schema_type: str, text: str,
              refs: tuple[Reference, ...]) -> ParsedSchema:
        identity = (schema_type, text, refs)
        cached = self._parsed.get(identity)
        if cached is not None:
            return cached
        resolved = resolve_references(state, refs)
        try:
            parsed = parser(schema_type)(text, resolved)
        except SchemaError as exc:
            raise RegistryError(42201, f"Invalid schema: {exc}") from None
        if len(self._parsed) >= self._limit:
            self._parsed.pop(next(iter(self._parsed)))
        self._parsed[identity] = parsed
        return parsed

    def of(self, state: RegistryState, stored: SchemaVersion) -> ParsedSchema:
        return self.parse(state, stored.schema_type, stored.schema, stored.references)


def compatibility_messages(level: str, new: ParsedSchema,
                           previous: Sequence[ParsedSchema]) -> list[str]:
    """Why ``new`` may not follow ``previous`` (oldest first) under ``level``; [] if it may."""
    if level == "NONE" or not previous:
        return []
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    base = level.removesuffix("_TRANSITIVE")
    messages: list[str] = []
    for old in reversed(against):
        if base in ("BACKWARD", "FULL"):
            messages += [f"{m} (new schema cannot read data written with an earlier one)"
                         for m in new.compatibility_errors(old)]
        if base in ("FORWARD", "FULL"):
            messages += [f"{m} (an earlier schema cannot read data written with the new one)"
                         for m in old.compatibility_errors(new)]
    return messages


@dataclass(frozen=True)
class Registration:
    """What registering a schema under a subject comes to."""

    id: int
    version: int
    records: list[tuple[bytes, bytes | None]]  # empty: already registered, nothing to write


def plan_registration(state: RegistryState, cache: ParsedCache, subject: str,
                      body: Any, *, normalize: bool) -> Registration:
    """Validate, check compatibility and choose id and version for ``POST .../versions``."""
    schema_type, text, refs = request_schema(state, body)
    mode = state.mode(subject)
    if mode in ("READONLY", "READONLY_OVERRIDE"):
        raise RegistryError(42205, f"Subject {subject} is in read-only mode")
    parsed = cache.parse(state, schema_type, text, refs)
    stored_text = parsed.normalized() if normalize else parsed.canonical()
    live = state.versions(subject)
    contract = (contract_text(body.get("metadata")), contract_text(body.get("ruleSet")))
    for existing in live:
        if ((existing.schema_type, existing.references) == (schema_type, refs)
                and (existing.metadata, existing.rule_set) == contract
                and (existing.schema == stored_text
                     or cache.of(state, existing).canonical() == parsed.canonical())):
            return Registration(existing.id, existing.version, [])

    requested_id = body.get("id") if isinstance(body, dict) else None
    requested_version = body.get("version") if isinstance(body, dict) else None
    if (requested_id is not None or requested_version is not None) and mode != "IMPORT":
        raise RegistryError(42205, "Schema id and version may only be given in IMPORT mode")
    if mode != "IMPORT":
        level = state.compatibility(subject)
        messages = compatibility_messages(level, parsed, [cache.of(state, s) for s in live])
        if messages:
            raise RegistryError(409, "Schema being registered is incompatible with an earlier "
                                f"schema for subject \"{subject}\", details: {messages}")
    identity = (schema_type, stored_text, refs, *contract)
    if requested_id is not None:
        schema_id = _positive_int(requested_id, "id")
        holder = state.by_id.get(schema_id)
        if holder is not None and holder.identity != identity:
            raise RegistryError(42205, f"Overwrite new schema with id {schema_id} is not "
                                "permitted: the id holds a different schema")
    else:
        schema_id = state.ids_by_identity.get(identity, state.max_id + 1)
    every = state.versions(subject, deleted=True)
    if requested_version is not None:
        version = _positive_int(requested_version, "version")
        if any(s.version == version for s in every):
            raise RegistryError(42205, f"Version {version} already exists for {subject}")
    else:
        version = (every[-1].version if every else 0) + 1
    stored = SchemaVersion(subject, version, schema_id, schema_type, stored_text, refs,
                           metadata=contract[0], rule_set=contract[1])
    return Registration(schema_id, version, [schema_record(stored)])


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RegistryError(42201 if name == "id" else 42202, f"Invalid {name} {value!r}")
    return value


def request_schema(state: RegistryState,
                   body: Any) -> tuple[str, str, tuple[Reference, ...]]:
    """(type, text, references) of a request body ``{"schema", "schemaType", "references"}``."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(42201, "Invalid schema: the request body needs a \"schema\" "
                            "string")
    schema_type = str(body.get("schemaType") or "AVRO").upper()
    parser(schema_type)  # validates the type name
    return schema_type, body["schema"], parse_request_references(body.get("references"), state)


def lookup(state: RegistryState, cache: ParsedCache, subject: str, body: Any, *,
           deleted: bool, normalize: bool) -> SchemaVersion:
    """``POST /subjects/{s}``: the version of ``subject`` holding this schema."""
    schema_type, text, refs = request_schema(state, body)
    if not state.versions(subject, deleted=True):
        raise subject_not_found(subject)
    parsed = cache.parse(state, schema_type, text, refs)
    wanted = parsed.normalized() if normalize else parsed.canonical()
    for stored in reversed(state.versions(subject, deleted=deleted)):
        if (stored.schema_type, stored.references) != (schema_type, refs):
            continue
        theirs = cache.of(state, stored)
        if stored.schema == wanted or (theirs.normalized() if normalize
                                       else theirs.canonical()) == wanted:
            return stored
    raise schema_not_found()


def version_json(stored: SchemaVersion, schema_text: str | None = None) -> dict[str, Any]:
    """A version as the REST API shows it (``schemaType`` omitted for AVRO, as Confluent)."""
    out = stored.to_json(schema_text)
    if stored.deleted:
        out["deleted"] = True
    return out
