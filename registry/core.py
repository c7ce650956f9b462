"""Registry rules on top of the state: parsing with references, compatibility, registration.

Nothing here does IO. Reads answer straight from :class:`RegistryState`; writes are *planned*
here (which records to append, what to answer) and carried out by the service, which appends
the records to ``_schemas`` and waits until its own reader has applied them.

Nothing here parses or compares schemas either: that can take long, and this code runs on the
event loop. It reads parsed schemas and compatibility verdicts from a :class:`ParsedCache`;
one that is not there yet raises :class:`NotReady` with the :class:`Job` that would produce it.
The REST layer runs the job in a worker thread (bounded in time, stopped when the request is
cancelled), stores the result and runs the same function again.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from registry import limits
from registry.errors import RegistryError
from registry.schema import ParsedSchema, SchemaError, SchemaTooLarge
from registry.state import (
    SCHEMA_TYPES,
    Reference,
    RegistryState,
    SchemaVersion,
    contract_text,
    identity_text,
    schema_record,
)

__all__ = ["RegistryError"]  # re-exported: the rest of the registry imports it from here

_MODULES = {"AVRO": "registry.avro", "JSON": "registry.json_schema",
            "PROTOBUF": "registry.protobuf"}


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
    if number is None:  # "latest" is the latest live version, as Confluent resolves it
        live = state.versions(subject)
        if not live:
            raise subject_not_found(subject)
        return live[-1]
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
        if len(seen) >= limits.MAX_REFERENCES:
            raise RegistryError(limits.TOO_LARGE, "Schema too large: it references more than "
                                f"{limits.MAX_REFERENCES} schemas (transitively)")
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
    if len(raw) > limits.MAX_REFERENCES:
        raise RegistryError(limits.TOO_LARGE, f"Schema too large: {len(raw)} references, the "
                            f"limit is {limits.MAX_REFERENCES}")
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


@dataclass(frozen=True, eq=False)
class Parsed:
    """A parsed schema with the texts the registry compares, computed once in the worker."""

    schema: ParsedSchema
    canonical: str
    normalized: str


Identity = tuple[str, str, tuple[Reference, ...]]  # (schema type, text, references)


class Job:
    """Work the event loop must not do itself. ``run`` is called in a worker thread and must
    not touch the registry's state; the result goes to :meth:`ParsedCache.store`."""

    what = "the work"

    def run(self) -> Any:
        raise NotImplementedError


@dataclass(eq=False)
class ParseJob(Job):
    identity: Identity
    resolved: list[tuple[str, str]]  # the references' (name, text), dependencies first
    what = "parsing the schema"

    def run(self) -> Parsed:
        schema_type, text, _ = self.identity
        nodes = 0
        for what, one in [*((f"reference {name!r}", t) for name, t in self.resolved),
                          ("the schema", text)]:
            limits.checkpoint()
            shape = (limits.proto_shape(one) if schema_type == "PROTOBUF"
                     else limits.json_shape(one))
            limits.check_schema_text(one, shape, what)
            nodes += shape.nodes
        if nodes > limits.MAX_NODES:
            raise RegistryError(limits.TOO_LARGE, f"Schema too large: with its references it "
                                f"has {nodes} elements, the limit is {limits.MAX_NODES}")
        try:
            parsed = parser(schema_type)(text, self.resolved)
            return Parsed(parsed, parsed.canonical(), parsed.normalized())
        except SchemaTooLarge as exc:
            raise RegistryError(limits.TOO_LARGE, f"Schema too large: {exc}") from None
        except SchemaError as exc:
            raise RegistryError(42201, f"Invalid schema: {exc}") from None
        except RecursionError:
            raise RegistryError(42201, "Invalid schema: nested too deeply") from None


@dataclass(eq=False)
class CompatibilityJob(Job):
    reader: ParsedSchema
    writer: ParsedSchema
    what = "checking compatibility"

    def run(self) -> list[str]:
        try:
            return self.reader.compatibility_errors(self.writer)
        except RecursionError:
            return ["/: the schemas are nested too deeply to compare"]


class NotReady(Exception):
    """What the event loop needs first: run ``job`` in a worker, store it, call again."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.what)
        self.job = job


class ParsedCache:
    """Parsed schemas by identity, and compatibility verdicts by pair; read on the event loop
    (a miss raises :class:`NotReady`), filled from workers' results.

    Bounded by count and by the size of the texts it holds (a parsed schema takes several
    times its text in memory); the oldest entries go first. A verdict lives as long as both
    schemas it compares are still in use."""

    def __init__(self, limit: int = 10_000, max_text_bytes: int = 256 * 1024 * 1024) -> None:
        self._parsed: dict[Identity, tuple[Parsed, int]] = {}  # -> (parsed, weight)
        self._weight = 0
        self._limit = limit
        self._max_weight = max_text_bytes
        self._compat: weakref.WeakKeyDictionary[
            ParsedSchema, weakref.WeakKeyDictionary[ParsedSchema, list[str]]
        ] = weakref.WeakKeyDictionary()

    def __len__(self) -> int:
        return len(self._parsed)

    def parse(self, state: RegistryState, schema_type: str, text: str,
              refs: tuple[Reference, ...]) -> Parsed:
        identity = (schema_type, text, refs)
        cached = self._parsed.get(identity)
        if cached is not None:
            return cached[0]
        parser(schema_type)  # an unknown type is an error, not work
        resolved = resolve_references(state, refs)
        total = limits.text_bytes(text) + sum(limits.text_bytes(t) for _, t in resolved)
        if total > limits.MAX_TOTAL_BYTES:
            raise RegistryError(limits.TOO_LARGE, f"Schema too large: with its references it "
                                f"has {total} bytes, the limit is {limits.MAX_TOTAL_BYTES}")
        raise NotReady(ParseJob(identity, resolved))

    def of(self, state: RegistryState, stored: SchemaVersion) -> Parsed:
        return self.parse(state, stored.schema_type, stored.schema, stored.references)

    def compatibility_errors(self, reader: ParsedSchema, writer: ParsedSchema) -> list[str]:
        """``reader.compatibility_errors(writer)``, once computed by a worker."""
        found = self._compat.get(reader, {}).get(writer)
        if found is not None:
            return found
        raise NotReady(CompatibilityJob(reader, writer))

    def store(self, job: Job, result: Any) -> None:
        """Keep what a worker computed for ``job`` (on the event loop). The entry just stored
        is never the one evicted, so the caller finds it when it tries again."""
        if isinstance(job, CompatibilityJob):
            verdicts = self._compat.setdefault(job.reader, weakref.WeakKeyDictionary())
            verdicts[job.writer] = result
            return
        if not isinstance(job, ParseJob) or job.identity in self._parsed:
            return
        weight = len(job.identity[1]) + len(result.canonical) + len(result.normalized)
        while self._parsed and (len(self._parsed) >= self._limit
                                or self._weight + weight > self._max_weight):
            _, (_, gone) = _pop_oldest(self._parsed)
            self._weight -= gone
        self._parsed[job.identity] = (result, weight)
        self._weight += weight


def _pop_oldest(table: dict[Any, Any]) -> tuple[Any, Any]:
    key = next(iter(table))
    return key, table.pop(key)


def compatibility_messages(
        level: str, new: ParsedSchema, previous: Sequence[ParsedSchema],
        errors: Callable[[ParsedSchema, ParsedSchema], list[str]] | None = None) -> list[str]:
    """Why ``new`` may not follow ``previous`` (oldest first) under ``level``; [] if it may.

    ``errors(reader, writer)`` is ``reader.compatibility_errors(writer)`` unless given (the
    registry passes :meth:`ParsedCache.compatibility_errors`)."""
    if level == "NONE" or not previous:
        return []
    check = errors or (lambda reader, writer: reader.compatibility_errors(writer))
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    base = level.removesuffix("_TRANSITIVE")
    messages: list[str] = []
    for old in reversed(against):
        if base in ("BACKWARD", "FULL"):
            messages += [f"{m} (new schema cannot read data written with an earlier one)"
                         for m in check(new, old)]
        if base in ("FORWARD", "FULL"):
            messages += [f"{m} (an earlier schema cannot read data written with the new one)"
                         for m in check(old, new)]
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
    stored_text = parsed.normalized if normalize else parsed.canonical
    live = state.versions(subject)
    contract = (contract_text(body.get("metadata")), contract_text(body.get("ruleSet")))
    same = identity_text(schema_type, stored_text)
    as_written = (same if stored_text == parsed.canonical
                  else identity_text(schema_type, parsed.canonical))
    for existing in live:
        if ((existing.schema_type, existing.references) == (schema_type, refs)
                and (existing.metadata, existing.rule_set) == contract
                and (existing.identity[1] == same
                     or identity_text(schema_type, cache.of(state, existing).canonical)
                     == as_written)):
            return Registration(existing.id, existing.version, [])

    requested_id = body.get("id") if isinstance(body, dict) else None
    requested_version = body.get("version") if isinstance(body, dict) else None
    if (requested_id is not None or requested_version is not None) and mode != "IMPORT":
        raise RegistryError(42205, "Schema id and version may only be given in IMPORT mode")
    if mode != "IMPORT":
        level = state.compatibility(subject)
        messages = compatibility_messages(level, parsed.schema,
                                          [cache.of(state, s).schema for s in live],
                                          cache.compatibility_errors)
        if messages:
            raise RegistryError(409, "Schema being registered is incompatible with an earlier "
                                f"schema for subject \"{subject}\", details: {messages}")
    identity = (schema_type, same, refs, *contract)
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
    record = schema_record(stored)
    size = len(record[0]) + len(record[1] or b"")
    if size > limits.MAX_RECORD_BYTES:  # the broker would refuse it (message_too_large)
        raise RegistryError(limits.TOO_LARGE, "Register operation failed because schema is "
                            f"too large: its record in _schemas would have {size} bytes, the "
                            f"limit is {limits.MAX_RECORD_BYTES}")
    return Registration(schema_id, version, [record])


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
    text = body["schema"]
    size = limits.text_bytes(text)
    if size > limits.MAX_SCHEMA_BYTES:
        raise RegistryError(limits.TOO_LARGE, f"Schema too large: {size} bytes, the limit is "
                            f"{limits.MAX_SCHEMA_BYTES}")
    return schema_type, text, parse_request_references(body.get("references"), state)


def lookup(state: RegistryState, cache: ParsedCache, subject: str, body: Any, *,
           deleted: bool, normalize: bool) -> SchemaVersion:
    """``POST /subjects/{s}``: the version of ``subject`` holding this schema."""
    schema_type, text, refs = request_schema(state, body)
    if not state.versions(subject, deleted=True):
        raise subject_not_found(subject)
    parsed = cache.parse(state, schema_type, text, refs)
    wanted = identity_text(schema_type, parsed.normalized if normalize else parsed.canonical)
    for stored in reversed(state.versions(subject, deleted=deleted)):
        if (stored.schema_type, stored.references) != (schema_type, refs):
            continue
        if stored.identity[1] == wanted:
            return stored
        theirs = cache.of(state, stored)
        if identity_text(schema_type,
                         theirs.normalized if normalize else theirs.canonical) == wanted:
            return stored
    raise schema_not_found()


def version_json(stored: SchemaVersion, schema_text: str | None = None) -> dict[str, Any]:
    """A version as the REST API shows it (``schemaType`` omitted for AVRO, as Confluent)."""
    out = stored.to_json(schema_text)
    if stored.deleted:
        out["deleted"] = True
    return out
