"""What every schema type (AVRO, JSON, PROTOBUF) provides to the registry.

Each type lives in its own module with one entry point::

    parse(text: str, references: Sequence[tuple[str, str]]) -> ParsedSchema

``references`` are the schemas this one refers to, as ``(reference name, schema text)`` pairs,
already resolved transitively and ordered so that each one appears after everything it depends
on. The reference *name* means what Confluent says it means for that type: for AVRO a fully
qualified type name (the referenced text defines it), for PROTOBUF the import path
(``"other.proto"``), for JSON the URI a ``$ref`` uses (``"other.json"``).

``parse`` raises :class:`SchemaError` with a message a person can act on (the registry answers
it as error 42201). Parsing is synchronous and may be slow for large schemas; callers run it in
a worker thread, and its loops call ``limits.checkpoint()`` so that the worker stops when the
request's time is up.
"""

from __future__ import annotations

from typing import Protocol


class SchemaError(ValueError):
    """The schema text is not a valid schema of its declared type."""


class SchemaTooLarge(SchemaError):
    """The schema is beyond what the registry accepts in size (see ``limits.py``); the registry
    answers it as error 42209, Confluent's "schema too large"."""


class ParsedSchema(Protocol):
    schema_type: str  # "AVRO", "JSON" or "PROTOBUF"

    def canonical(self) -> str:
        """The text the registry stores and returns: the schema as written, with insignificant
        formatting removed (so the same schema sent twice with different whitespace matches)."""

    def normalized(self) -> str:
        """A stricter canonical form for ``normalize=true``: semantically equal schemas give
        equal strings (e.g. Avro's Parsing Canonical Form plus defaults/aliases, JSON with
        sorted keys, Protobuf with sorted options)."""

    def formatted(self, fmt: str) -> str:
        """The schema in an alternative ``format=`` of the REST API; raises SchemaError for an
        unknown format. PROTOBUF knows ``serialized`` (base64 FileDescriptorProto); every type
        accepts ``""`` (= canonical)."""

    def compatibility_errors(self, writer: ParsedSchema) -> list[str]:
        """Why data written with ``writer`` cannot be read with this schema; [] if it can.

        This is the one primitive the compatibility levels are built from: BACKWARD checks
        ``new.compatibility_errors(old)``, FORWARD ``old.compatibility_errors(new)``, FULL both.
        Messages name the path and the rule, e.g. ``"/fields/2: reader field 'age' has no
        default and is missing in the writer"``."""

