"""The registry's state, rebuilt from the ``_schemas`` topic (sans-IO: records in, state out).

Every gateway tails ``_schemas`` and feeds each record to :meth:`RegistryState.apply`; the
leader also turns REST writes into records with the ``*_record`` functions below. The record
format is Confluent Schema Registry's own, so a Confluent registry or Karapace pointed at the
same kelp sees the same subjects, versions and ids, and kelp sees theirs:

- key ``{"keytype":"SCHEMA","subject":S,"version":V,"magic":1}``, value ``{"subject","version",
  "id","schemaType" (absent for AVRO),"references","schema","deleted"}``; a null value is a
  hard delete of that version.
- key ``{"keytype":"CONFIG","subject":S|null,"magic":0}``, value ``{"compatibilityLevel"}``;
  null deletes a subject's setting.
- key ``{"keytype":"MODE","subject":S|null,"magic":0}``, value ``{"mode"}``.
- key ``{"keytype":"DELETE_SUBJECT","subject":S,"magic":0}``, value ``{"subject","version"}``:
  soft-deletes every version up to ``version``.
- key ``{"keytype":"NOOP","magic":0}``, null value: a marker used to find the end of the log.

Keys are compact JSON with the fields in that order, as Confluent writes them: compaction
keeps the last record per key *bytes*, so the order matters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("kelp.registry")

DEFAULT_COMPATIBILITY = "BACKWARD"
COMPATIBILITY_LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD",
                        "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE")
MODES = ("READWRITE", "READONLY", "READONLY_OVERRIDE", "IMPORT")
SCHEMA_TYPES = ("AVRO", "JSON", "PROTOBUF")


@dataclass(frozen=True)
class Reference:
    name: str
    subject: str
    version: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "version": self.version}


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one subject, as stored."""

    subject: str
    version: int
    id: int
    schema_type: str
    schema: str
    references: tuple[Reference, ...] = ()
    deleted: bool = False
    # Confluent's data-contract fields, kept verbatim as compact JSON text (None: absent).
    metadata: str | None = None
    rule_set: str | None = None

    @functools.cached_property
    def identity(self) -> Identity:
        """Two registrations with the same identity share a schema id (across subjects)."""
        return (self.schema_type, identity_text(self.schema_type, self.schema),
                self.references, self.metadata, self.rule_set)

    def to_json(self, schema_text: str | None = None, *,
                located: bool = True) -> dict[str, Any]:
        """The fields Confluent uses for a schema, in its order: ``subject``, ``version`` and
        ``id`` when ``located``; ``schemaType`` (absent for AVRO), ``references``, the data
        contract, and ``schema`` (``schema_text`` instead, e.g. in another format)."""
        out: dict[str, Any] = ({"subject": self.subject, "version": self.version,
                                "id": self.id} if located else {})
        if self.schema_type != "AVRO":
            out["schemaType"] = self.schema_type
        if self.references:
            out["references"] = [r.to_json() for r in self.references]
        out.update(self.contract_json())
        out["schema"] = self.schema if schema_text is None else schema_text
        return out

    def contract_json(self) -> dict[str, Any]:
        """``metadata`` and ``ruleSet`` for a JSON answer or record (only those present)."""
        out: dict[str, Any] = {}
        if self.metadata is not None:
            out["metadata"] = json.loads(self.metadata)
        if self.rule_set is not None:
            out["ruleSet"] = json.loads(self.rule_set)
        return out


# (type, identity text, references, metadata, ruleSet): what makes two schemas the same one.
Identity = tuple[str, str, tuple[Reference, ...], str | None, str | None]


def identity_text(schema_type: str, text: str) -> str:
    """The form two texts of one schema share whatever their JSON key order or formatting.

    Avro and JSON Schema are JSON documents whose object keys are unordered: Confluent
    compares them parsed, and writes its own key order to ``_schemas``, so a schema must be
    the same one whether its keys come in the writer's order or sorted. Array order (Avro's
    fields, enum symbols) is kept: it is part of the schema. Protobuf texts are stored in the
    parser's canonical print already. A stored text that is not JSON is compared as it is.
    """
    if schema_type == "PROTOBUF":
        return text
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


def contract_text(value: Any) -> str | None:
    """A data-contract field as stored: compact JSON with sorted keys, None when absent."""
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass
class RegistryState:
    subjects: dict[str, dict[int, SchemaVersion]] = field(default_factory=dict)
    # id -> the first version registered with it (its schema text, type and references)
    by_id: dict[int, SchemaVersion] = field(default_factory=dict)
    ids_by_identity: dict[Identity, int] = field(default_factory=dict)
    global_compatibility: str | None = None
    subject_compatibility: dict[str, str] = field(default_factory=dict)
    global_mode: str | None = None
    subject_mode: dict[str, str] = field(default_factory=dict)
    max_id: int = 0
    # The offset of the next record to apply: everything below it is reflected here.
    next_offset: int = 0
    skipped_records: int = 0

    # -- applying the log ------------------------------------------------------------------

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Apply the record at ``offset``. A record kelp cannot understand is logged and
        skipped (as Confluent does): one bad record must not stop the registry."""
        self.next_offset = offset + 1
        try:
            key_obj = json.loads(key) if key else None
            # Only a null value is a tombstone; empty bytes are a value that is not JSON.
            value_obj = json.loads(value) if value is not None else None
            if not isinstance(key_obj, dict) or "keytype" not in key_obj:
                raise ValueError("key is not a JSON object with a keytype")
            self._apply(key_obj, value_obj)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            self.skipped_records += 1
            reason = ("an empty value (a deletion is a null value)" if value == b""
                      else f"not JSON ({exc.msg} at byte {exc.pos})"
                      if isinstance(exc, json.JSONDecodeError)
                      else str(exc) if isinstance(exc, ValueError)
                      else f"missing field {exc}" if isinstance(exc, KeyError)
                      else "nested too deeply" if isinstance(exc, RecursionError)
                      else "a field has the wrong type")
            log.warning("skipping unreadable record", extra={
                "topic": "_schemas", "partition": 0, "offset": offset, "reason": reason[:200]})

    def _apply(self, key: dict[str, Any], value: Any) -> None:
        keytype = key["keytype"]
        if keytype == "SCHEMA":
            self._apply_schema(key, value)
        elif keytype == "CONFIG":
            self._apply_setting(key.get("subject"), value, "compatibilityLevel",
                                COMPATIBILITY_LEVELS, "global_compatibility",
                                self.subject_compatibility)
        elif keytype == "MODE":
            self._apply_setting(key.get("subject"), value, "mode", MODES, "global_mode",
                                self.subject_mode)
        elif keytype == "DELETE_SUBJECT":
            if value is not None:
                self._soft_delete_subject(value["subject"], int(value["version"]))
        elif keytype in ("NOOP", "CLEAR_SUBJECT"):
            pass
        else:
            raise ValueError(f"unknown keytype {keytype!r}")

    def _apply_schema(self, key: dict[str, Any], value: Any) -> None:
        subject, version = str(key["subject"]), int(key["version"])
        if value is None:  # hard delete
            versions = self.subjects.get(subject, {})
            gone = versions.pop(version, None)
            if not versions:
                self.subjects.pop(subject, None)
            if gone is not None:
                self._forget_id(gone)
            return
        refs = tuple(Reference(str(r["name"]), str(r["subject"]), int(r["version"]))
                     for r in value.get("references") or ())
        stored = SchemaVersion(
            subject=str(value["subject"]), version=int(value["version"]), id=int(value["id"]),
            schema_type=str(value.get("schemaType") or "AVRO"), schema=str(value["schema"]),
            references=refs, deleted=bool(value.get("deleted", False)),
            metadata=contract_text(value.get("metadata")),
            rule_set=contract_text(value.get("ruleSet")))
        self.subjects.setdefault(stored.subject, {})[stored.version] = stored
        self.by_id.setdefault(stored.id, stored)
        self.ids_by_identity.setdefault(stored.identity, stored.id)
        self.max_id = max(self.max_id, stored.id)

    def _forget_id(self, gone: SchemaVersion) -> None:
        """After a hard delete the id answers only while some version still holds it.
        ``max_id`` stays: an id once handed out is never given to another schema."""
        holders = [stored for versions in self.subjects.values()
                   for stored in versions.values() if stored.id == gone.id]
        if holders:
            self.by_id[gone.id] = holders[0]
        else:
            self.by_id.pop(gone.id, None)
            if self.ids_by_identity.get(gone.identity) == gone.id:
                del self.ids_by_identity[gone.identity]

    def _apply_setting(self, subject: str | None, value: Any, name: str,
                       allowed: tuple[str, ...], global_attr: str,
                       per_subject: dict[str, str]) -> None:
        if value is not None and not isinstance(value.get(name) if isinstance(value, dict)
                                                else None, str):
            raise ValueError(f"{name} record value is not {{\"{name}\": <string>}}")
        setting = None if value is None else value[name].upper()
        if setting is not None and setting not in allowed:
            raise ValueError(f"unknown {name} {setting!r}")
        if subject is None:
            setattr(self, global_attr, setting)
        elif setting is None:
            per_subject.pop(subject, None)
        else:
            per_subject[subject] = setting

    def _soft_delete_subject(self, subject: str, up_to: int) -> None:
        versions = self.subjects.get(subject, {})
        for number, stored in list(versions.items()):
            if number <= up_to and not stored.deleted:
                versions[number] = _replace_deleted(stored, True)

    # -- queries ---------------------------------------------------------------------------

    def versions(self, subject: str, *, deleted: bool = False) -> list[SchemaVersion]:
        """A subject's versions in order; soft-deleted ones only when ``deleted``."""
        stored = self.subjects.get(subject, {})
        return [stored[v] for v in sorted(stored) if deleted or not stored[v].deleted]

    def subject_names(self, *, deleted: bool = False, prefix: str = "") -> list[str]:
        return sorted(s for s in self.subjects
                      if s.startswith(prefix) and self.versions(s, deleted=deleted))

    def compatibility(self, subject: str | None) -> str:
        if subject is not None and subject in self.subject_compatibility:
            return self.subject_compatibility[subject]
        return self.global_compatibility or DEFAULT_COMPATIBILITY

    def mode(self, subject: str | None) -> str:
        if subject is not None and subject in self.subject_mode:
            return self.subject_mode[subject]
        return self.global_mode or "READWRITE"

    def referenced_by(self, subject: str, version: int) -> list[int]:
        """Ids of live schemas that reference ``subject`` version ``version``."""
        ids = {stored.id for versions in self.subjects.values() for stored in versions.values()
               if not stored.deleted and any(r.subject == subject and r.version == version
                                             for r in stored.references)}
        return sorted(ids)


def _replace_deleted(stored: SchemaVersion, deleted: bool) -> SchemaVersion:
    return dataclasses.replace(stored, deleted=deleted)


# -- records the leader writes -------------------------------------------------------------

def _key(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def _value(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def schema_record(stored: SchemaVersion) -> tuple[bytes, bytes]:
    value = stored.to_json()
    value["deleted"] = stored.deleted
    return (_key(keytype="SCHEMA", subject=stored.subject, version=stored.version, magic=1),
            _value(value))


def hard_delete_record(subject: str, version: int) -> tuple[bytes, None]:
    return _key(keytype="SCHEMA", subject=subject, version=version, magic=1), None


def soft_delete_record(stored: SchemaVersion) -> tuple[bytes, bytes]:
    return schema_record(_replace_deleted(stored, True))


def delete_subject_record(subject: str, up_to_version: int) -> tuple[bytes, bytes]:
    return (_key(keytype="DELETE_SUBJECT", subject=subject, magic=0),
            _value({"subject": subject, "version": up_to_version}))


def config_record(subject: str | None, level: str | None) -> tuple[bytes, bytes | None]:
    return (_key(keytype="CONFIG", subject=subject, magic=0),
            None if level is None else _value({"compatibilityLevel": level}))


def mode_record(subject: str | None, mode: str | None) -> tuple[bytes, bytes | None]:
    return (_key(keytype="MODE", subject=subject, magic=0),
            None if mode is None else _value({"mode": mode}))


def noop_record() -> tuple[bytes, None]:
    return _key(keytype="NOOP", magic=0), None
