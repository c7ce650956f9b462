"""``kelp user`` and ``kelp acl``: manage SCRAM users and ACLs of any kelp or Kafka cluster over
the Kafka protocol (confluent-kafka's admin client), like Kafka's kafka-configs and kafka-acls.

Connection settings come from ``--bootstrap-server`` and ``--command-config`` (a properties
file of librdkafka settings; ``kelp up --secure`` writes one as
``<run dir>/secure/admin.properties``). Tables for people, ``-o json`` for scripts. Exit codes:
0 done, 1 the cluster refused or failed, 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

OK, FAILED, USAGE = 0, 1, 2
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
TIMEOUT_S = 15.0


def read_properties(path: Path) -> dict[str, str]:
    """``key=value`` lines; ``#`` and ``!`` start comments, as in Java properties files."""
    settings = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip()] = value.strip()
    return settings


def client_config(args: argparse.Namespace) -> dict[str, str]:
    config = read_properties(args.command_config) if args.command_config else {}
    if args.bootstrap_server:
        config["bootstrap.servers"] = args.bootstrap_server
    config.setdefault("bootstrap.servers", DEFAULT_BOOTSTRAP)
    return config


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-server", default=None, metavar="HOST:PORT",
                        help=f"a Kafka listener (default: {DEFAULT_BOOTSTRAP} or the "
                        "command config's bootstrap.servers)")
    parser.add_argument("--command-config", type=Path, default=None, metavar="FILE",
                        help="client settings (security.protocol, sasl.*, ssl.*), one "
                        "key=value per line")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kelp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = parser.add_subparsers(dest="group", required=True)

    user = groups.add_parser("user", help="SCRAM users").add_subparsers(dest="action",
                                                                        required=True)
    listing = user.add_parser("list", help="users and their SCRAM mechanisms")
    listing.add_argument("names", nargs="*", help="only these users")
    add = user.add_parser("add", help="create a user or set its password")
    add.add_argument("name")
    add.add_argument("--password", default=None,
                     help="the password (default: asked for, or read from stdin if it is "
                     "not a terminal)")
    add.add_argument("--mechanism", choices=["SCRAM-SHA-256", "SCRAM-SHA-512", "both"],
                     default="both")
    add.add_argument("--iterations", type=int, default=8192)
    delete = user.add_parser("delete", help="delete a user's credentials")
    delete.add_argument("name")
    delete.add_argument("--mechanism", choices=["SCRAM-SHA-256", "SCRAM-SHA-512", "both"],
                        default="both")
    for sub in (listing, add, delete):
        _common(sub)

    acl = groups.add_parser("acl", help="ACLs").add_subparsers(dest="action", required=True)
    for action, text in (("list", "ACLs matching the options"), ("add", "create ACLs"),
                         ("remove", "delete the ACLs matching the options")):
        sub = acl.add_parser(action, help=text)
        _common(sub)
        target = sub.add_mutually_exclusive_group(required=action == "add")
        target.add_argument("--topic")
        target.add_argument("--group")
        target.add_argument("--transactional-id")
        target.add_argument("--cluster", action="store_true")
        sub.add_argument("--resource-pattern-type", default=None,
                         choices=["literal", "prefixed", "match", "any"],
                         help="how the name matches (add: literal or prefixed; default "
                         "literal for add, any otherwise)")
        sub.add_argument("--principal", action="append", default=[], metavar="User:NAME",
                         help="repeatable (add: required; list/remove: filters)")
        sub.add_argument("--host", default=None, help="client host (add: default *)")
        sub.add_argument("--operation", action="append", default=[], type=str.upper,
                         metavar="OP", help="READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, "
                         "DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE, ALL (repeatable)")
        sub.add_argument("--deny", action="store_true", help="DENY instead of ALLOW")
    return parser.parse_args(argv)


def _print(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> None:
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def _fail(message: str, code: int = FAILED) -> int:
    print(f"kelp: {message}", file=sys.stderr)
    return code


def run_user(args: argparse.Namespace, admin: Any) -> int:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )

    mechanisms = {"SCRAM-SHA-256": [ScramMechanism.SCRAM_SHA_256],
                  "SCRAM-SHA-512": [ScramMechanism.SCRAM_SHA_512],
                  "both": [ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512]}
    try:
        if args.action == "list":
            if args.names:
                found = {name: future.result(TIMEOUT_S) for name, future in
                         admin.describe_user_scram_credentials(args.names).items()}
            else:
                found = admin.describe_user_scram_credentials().result(TIMEOUT_S)
            rows = [{"user": name, "mechanisms": ",".join(
                f"{info.mechanism.name.replace('_', '-')}:{info.iterations}"
                for info in description.scram_credential_infos)}
                for name, description in sorted(found.items())]
            _print(args, rows, ["user", "mechanisms"])
            return OK
        if args.action == "add":
            password = args.password
            if password is None:
                password = (getpass.getpass(f"password for {args.name}: ") if sys.stdin.isatty()
                            else sys.stdin.readline().rstrip("\n"))
            if not password:
                return _fail("the password must not be empty", USAGE)
            changes = [UserScramCredentialUpsertion(
                args.name, ScramCredentialInfo(m, args.iterations), password.encode())
                for m in mechanisms[args.mechanism]]
        else:
            changes = [UserScramCredentialDeletion(args.name, m)
                       for m in mechanisms[args.mechanism]]
        for future in admin.alter_user_scram_credentials(changes).values():
            future.result(TIMEOUT_S)
    except KafkaException as exc:
        return _fail(str(exc.args[0]) if exc.args else str(exc))
    _print(args, [{"user": args.name, "result": "ok"}], ["user", "result"])
    return OK


def _acl_options(args: argparse.Namespace) -> tuple[Any, str | None, Any]:
    from confluent_kafka.admin import ResourcePatternType, ResourceType

    if args.topic is not None:
        kind, name = ResourceType.TOPIC, args.topic
    elif args.group is not None:
        kind, name = ResourceType.GROUP, args.group
    elif args.transactional_id is not None:
        kind, name = ResourceType.TRANSACTIONAL_ID, args.transactional_id
    elif args.cluster:
        kind, name = ResourceType.BROKER, "kafka-cluster"
    else:
        kind, name = ResourceType.ANY, None
    default = "literal" if args.action == "add" else "any"
    pattern = ResourcePatternType[(args.resource_pattern_type or default).upper()]
    return kind, name, pattern


def run_acl(args: argparse.Namespace, admin: Any) -> int:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
    )

    try:
        operations = [AclOperation[op] for op in args.operation]
    except KeyError as exc:
        return _fail(f"unknown operation {exc.args[0]}", USAGE)
    kind, name, pattern = _acl_options(args)
    permission = AclPermissionType.DENY if args.deny else AclPermissionType.ALLOW
    try:
        if args.action == "add":
            if not args.principal or not operations:
                return _fail("acl add needs --principal and --operation", USAGE)
            bindings = [AclBinding(kind, name, pattern, principal, args.host or "*", op,
                                   permission)
                        for principal in args.principal for op in operations]
            for future in admin.create_acls(bindings).values():
                future.result(TIMEOUT_S)
            rows = [_binding_row(b) for b in bindings]
        else:
            filters = [AclBindingFilter(
                kind, name, pattern, principal, args.host, op,
                permission if args.deny else AclPermissionType.ANY)
                for principal in (args.principal or [None])
                for op in (operations or [AclOperation.ANY])]
            rows = []
            if args.action == "list":
                for acl_filter in filters:
                    rows += [_binding_row(b)
                             for b in admin.describe_acls(acl_filter).result(TIMEOUT_S)]
            else:
                for future in admin.delete_acls(filters).values():
                    rows += [_binding_row(b) for b in future.result(TIMEOUT_S)]
    except KafkaException as exc:
        return _fail(str(exc.args[0]) if exc.args else str(exc))
    _print(args, rows, ["resource", "name", "pattern", "principal", "host", "operation",
                        "permission"])
    return OK


def _binding_row(binding: Any) -> dict[str, Any]:
    return {"resource": binding.restype.name, "name": binding.name,
            "pattern": binding.resource_pattern_type.name, "principal": binding.principal,
            "host": binding.host, "operation": binding.operation.name,
            "permission": binding.permission_type.name}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return _fail("kelp user/acl need confluent-kafka: pip install confluent-kafka")
    try:
        config = client_config(args)
    except OSError as exc:
        return _fail(f"cannot read {args.command_config}: {exc.strerror}", USAGE)
    admin = AdminClient(config)
    return run_user(args, admin) if args.group == "user" else run_acl(args, admin)
