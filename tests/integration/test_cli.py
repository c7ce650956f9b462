"""The ``kelp`` CLI against a live kelp, run as a user runs it (``python -m kelp ...``): topic
create/list/describe/alter-config/add-partitions/delete, produce (keys, headers, a file, Avro
through the registry) and consume (from the beginning, an offset, a time, a group; JSON
output, values decoded through the registry), group list/describe (lag)/reset-offsets/delete,
registry subjects/get/register/check/config, cluster info/health, exit codes, completion."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.kelp_procs import REPO, Cluster
from tests.registry_http import wait_for_leader


def kelp(cluster: Cluster, *args: str, stdin: str | None = None, expect: int = 0
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "kelp", *args, "--bootstrap-server", cluster.bootstrap,
         "--registry", cluster.registry_url],
        input=stdin, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert done.returncode == expect, (args, done.returncode, done.stdout[-2000:],
                                       done.stderr[-2000:])
    return done


def as_json(cluster: Cluster, *args: str, stdin: str | None = None) -> Any:
    return json.loads(kelp(cluster, *args, "-o", "json", stdin=stdin).stdout)


def lines_json(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    out = kelp(cluster, *args, "-o", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_topics_records_and_groups(cluster: Cluster, topic_name: str, tmp_path: Path) -> None:
    kelp(cluster, "topic", "create", topic_name, "--partitions", "2", "-c",
         "retention.ms=86400000")
    assert {"topic": topic_name, "partitions": 2} in as_json(cluster, "topic", "list")
    table = kelp(cluster, "topic", "list").stdout
    assert topic_name in table and "partitions" in table  # a table for people

    # Produce from standard input with keys and a header, and from a file.
    produced = as_json(cluster, "produce", topic_name, "-K", ":", "-H", "source=cli",
                       "-p", "0", stdin="k1:v1\nk2:v2\nk3:v3\n")
    assert produced == {"topic": topic_name, "produced": 3, "failed": 0}
    records = tmp_path / "records.txt"
    records.write_text("".join(f"file-{n}\n" for n in range(5)))
    kelp(cluster, "produce", topic_name, "--file", str(records), "-p", "1")

    got = lines_json(cluster, "consume", topic_name, "--from-beginning")
    assert sorted(r["value"] for r in got) == ["file-0", "file-1", "file-2", "file-3",
                                               "file-4", "v1", "v2", "v3"]
    first = next(r for r in got if r["value"] == "v1")
    assert first["key"] == "k1" and first["headers"] == {"source": "cli"}
    assert first["partition"] == 0 and first["offset"] == 0
    from_offset = lines_json(cluster, "consume", topic_name, "-p", "1", "--offset", "3")
    assert [r["value"] for r in from_offset] == ["file-3", "file-4"]
    from_time = lines_json(cluster, "consume", topic_name, "-p", "0", "--from-time",
                           str(first["timestamp"]))
    assert [r["value"] for r in from_time] == ["v1", "v2", "v3"]
    assert len(lines_json(cluster, "consume", topic_name, "--from-beginning", "-n", "2")) == 2

    described = as_json(cluster, "topic", "describe", topic_name)[0]
    assert [(p["partition"], p["end"]) for p in described["partitions"]] == [(0, 3), (1, 5)]
    assert described["configs"]["retention.ms"] == "86400000"
    kelp(cluster, "topic", "alter-config", topic_name, "--set", "retention.ms=3600000")
    assert as_json(cluster, "topic", "describe", topic_name)[0]["configs"][
        "retention.ms"] == "3600000"
    kelp(cluster, "topic", "add-partitions", topic_name, "--count", "3")
    assert len(as_json(cluster, "topic", "describe", topic_name)[0]["partitions"]) == 3

    # A group reads part of the topic; its lag is what is left.
    group = f"{topic_name}-g"
    kelp(cluster, "consume", topic_name, "-g", group, "--from-beginning", "-n", "8")
    listed = {g["group"]: g for g in as_json(cluster, "group", "list")}
    assert listed[group]["state"] == "EMPTY"  # it consumed, committed and left
    lag = as_json(cluster, "group", "describe", group)
    assert lag["lag"] == 0 and {(p["partition"], p["committed"]) for p in lag["partitions"]
                                if p["committed"] is not None} == {(0, 3), (1, 5)}
    dry = as_json(cluster, "group", "reset-offsets", group, "-t", topic_name, "--to-earliest")
    assert [row["offset"] for row in dry] == [0, 0, 0]
    assert as_json(cluster, "group", "describe", group)["lag"] == 0  # a dry run changes nothing
    kelp(cluster, "group", "reset-offsets", group, "-t", topic_name, "--to-earliest",
         "--execute")
    assert as_json(cluster, "group", "describe", group)["lag"] == 8
    kelp(cluster, "group", "delete", group)
    assert group not in [g["group"] for g in as_json(cluster, "group", "list")]

    kelp(cluster, "topic", "delete", topic_name)
    assert topic_name not in [t["topic"] for t in as_json(cluster, "topic", "list")]
    # Exit codes: 1 when the cluster refuses, 2 for a usage mistake.
    kelp(cluster, "topic", "delete", topic_name, expect=1)
    kelp(cluster, "topic", "create", "x", "--partitions", "0", expect=2)
    kelp(cluster, "consume", f"{topic_name}-missing", expect=1)


def test_registry_avro_and_cluster(cluster: Cluster, topic_name: str, tmp_path: Path) -> None:
    wait_for_leader(cluster.registry_url)
    schema = tmp_path / "user.avsc"
    schema.write_text(json.dumps({"type": "record", "name": "User", "fields": [
        {"name": "name", "type": "string"}, {"name": "age", "type": "int"}]}))
    kelp(cluster, "topic", "create", topic_name, "--partitions", "1")
    kelp(cluster, "produce", topic_name, "--value-format", "avro", "--schema-file",
         str(schema), stdin='{"name": "ada", "age": 36}\n{"name": "alan", "age": 41}\n')
    got = lines_json(cluster, "consume", topic_name, "--from-beginning")
    assert [r["value"] for r in got] == [{"name": "ada", "age": 36}, {"name": "alan", "age": 41}]
    raw = lines_json(cluster, "consume", topic_name, "--from-beginning", "--no-decode")
    assert len(raw) == 2
    for record in raw:  # the wire format as it is: magic byte 0, schema id, Avro bytes
        value = record["value"]
        assert (value.startswith("\x00") if isinstance(value, str)
                else base64.b64decode(value["base64"])[:1] == b"\x00")

    subject = f"{topic_name}-value"
    assert {"subject": subject, "versions": "1"} in as_json(cluster, "registry", "subjects")
    fetched = as_json(cluster, "registry", "get", subject)
    assert fetched["version"] == 1 and json.loads(fetched["schema"])["name"] == "User"
    # A compatible change (a field with a default), then an incompatible one.
    evolved = tmp_path / "user2.avsc"
    evolved.write_text(json.dumps({"type": "record", "name": "User", "fields": [
        {"name": "name", "type": "string"}, {"name": "age", "type": "int"},
        {"name": "email", "type": "string", "default": ""}]}))
    assert as_json(cluster, "registry", "check", subject, "--schema-file",
                   str(evolved))["is_compatible"] is True
    broken = tmp_path / "user3.avsc"
    broken.write_text(json.dumps({"type": "record", "name": "User", "fields": [
        {"name": "name", "type": "int"}]}))
    kelp(cluster, "registry", "check", subject, "--schema-file", str(broken), expect=1)
    registered = as_json(cluster, "registry", "register", subject, "--schema-file",
                         str(evolved))
    assert registered[0]["id"] != fetched["id"]
    kelp(cluster, "registry", "config", subject, "--set", "FULL")
    assert as_json(cluster, "registry", "config", subject)["compatibilityLevel"] == "FULL"

    info = as_json(cluster, "cluster", "info")
    assert info["cluster_id"] and len(info["nodes"]) == 1 and info["topics"] >= 1
    assert [c["ok"] for c in as_json(cluster, "cluster", "health")] == [True, True]
    broken_health = subprocess.run(
        [sys.executable, "-m", "kelp", "cluster", "health", "--bootstrap-server",
         "127.0.0.1:9", "--registry", "http://127.0.0.1:9", "-o", "json"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert broken_health.returncode == 1
    script = subprocess.run([sys.executable, "-m", "kelp", "completion", "bash"],
                            capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    assert "complete -o nosort -F _kelp_completion kelp" in script.stdout
    # What the script asks for when the user types "kelp gr<TAB>": the group command.
    completed = subprocess.run(
        [sys.executable, "-m", "kelp"], capture_output=True, text=True, timeout=60, cwd=REPO,
        check=True, env={**os.environ, "_KELP_COMPLETE": "bash_complete",
                         "COMP_WORDS": "kelp gr", "COMP_CWORD": "1"})
    assert "plain,group" in completed.stdout.splitlines()
