"""``kelp registry subjects|get|register|check|config``: the Schema Registry's REST API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kelp.ops.app import cli, command, emit, settings
from kelp.ops.serde import Registry


@cli.group("registry")
def registry() -> None:
    """Schema Registry: subjects, versions, registering and checking schemas, configs."""


def client() -> Registry:
    return Registry(settings().registry, settings().properties())


def _body(schema_file: Path, schema_type: str) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": schema_file.read_text()}
    if schema_type != "AVRO":
        body["schemaType"] = schema_type
    return body


SCHEMA_TYPE = click.option("--type", "schema_type", default="AVRO",
                           type=click.Choice(["AVRO", "JSON", "PROTOBUF"]))
SCHEMA_FILE = click.option("--schema-file", type=click.Path(path_type=Path, exists=True,
                                                            dir_okay=False), required=True)


@command(registry, "subjects")
def subjects() -> None:
    """Subjects and their versions."""
    api = client()
    rows = [{"subject": s, "versions": ",".join(map(str, api.checked(
        "GET", f"/subjects/{s}/versions")))} for s in api.checked("GET", "/subjects")]
    emit(rows, ["subject", "versions"])


@command(registry, "get")
@click.argument("subject")
@click.option("-v", "--version", default="latest")
def get(subject: str, version: str) -> None:
    """A version of a subject's schema (default: the latest)."""
    found = client().checked("GET", f"/subjects/{subject}/versions/{version}")
    if settings().json:
        emit([], [], json_value=found)
        return
    emit([{k: found.get(k) for k in ("subject", "version", "id", "schemaType")}],
         ["subject", "version", "id", "schemaType"])
    click.echo(json.dumps(json.loads(found["schema"]), indent=1)
               if found.get("schemaType", "AVRO") != "PROTOBUF" else found["schema"])


@command(registry, "register")
@click.argument("subject")
@SCHEMA_FILE
@SCHEMA_TYPE
def register(subject: str, schema_file: Path, schema_type: str) -> None:
    """Register a schema under SUBJECT (the same schema again keeps its id)."""
    found = client().checked("POST", f"/subjects/{subject}/versions",
                             _body(schema_file, schema_type))
    emit([{"subject": subject, "id": found["id"]}], ["subject", "id"])


@command(registry, "check")
@click.argument("subject")
@SCHEMA_FILE
@SCHEMA_TYPE
@click.option("-v", "--version", default="latest")
def check(subject: str, schema_file: Path, schema_type: str, version: str) -> None:
    """Is the schema compatible with a version of SUBJECT? Exit 1 if not."""
    found = client().checked("POST", f"/compatibility/subjects/{subject}/versions/{version}"
                             "?verbose=true", _body(schema_file, schema_type))
    emit([{"subject": subject, "version": version, "compatible": found["is_compatible"],
           "messages": "; ".join(found.get("messages", []))}],
         ["subject", "version", "compatible", "messages"], json_value=found)
    if not found["is_compatible"]:
        raise SystemExit(1)


@command(registry, "config")
@click.argument("subject", required=False)
@click.option("--set", "level", default=None,
              type=click.Choice(["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD",
                                 "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"]),
              help="set the compatibility level (of SUBJECT, or the global one)")
def config(subject: str | None, level: str | None) -> None:
    """The compatibility level of SUBJECT (or the global one); --set changes it."""
    path = f"/config/{subject}" if subject else "/config"
    api = client()
    if level is not None:
        api.checked("PUT", path, {"compatibility": level})
    found = api.checked("GET", path + ("?defaultToGlobal=true" if subject else ""))
    emit([{"subject": subject or "(global)", "compatibility": found.get(
        "compatibilityLevel", found.get("compatibility"))}], ["subject", "compatibility"],
         json_value=found)
