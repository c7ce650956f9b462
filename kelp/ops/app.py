"""The click application: global options, output, errors; the command groups register here."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from kelp.admin_cli import DEFAULT_BOOTSTRAP, read_properties

OK, FAILED, USAGE = 0, 1, 2
TIMEOUT_S = 15.0
DEFAULT_REGISTRY = "http://127.0.0.1:8081"
# Command-config keys for the registry (Confluent's names), not passed to librdkafka:
# HTTP Basic credentials "user:password", and the CA to verify an HTTPS registry with (else
# ssl.ca.location, the Kafka listener's, is used: one CA in `kelp up --secure`).
REGISTRY_KEYS = ("basic.auth.user.info", "schema.registry.ssl.ca.location")


@dataclass
class Settings:
    """What every command gets: how to reach the cluster, and how to print."""

    bootstrap: str | None
    command_config: Path | None
    output: str
    registry: str
    admin: Any = None  # the command's AdminClient, made on first use (kelp.ops.topics)

    def properties(self) -> dict[str, str]:
        return read_properties(self.command_config) if self.command_config else {}

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka's settings: the command config's, without the registry's keys."""
        config: dict[str, Any] = {key: value for key, value in self.properties().items()
                                  if key not in REGISTRY_KEYS}
        if self.bootstrap:
            config["bootstrap.servers"] = self.bootstrap
        config.setdefault("bootstrap.servers", DEFAULT_BOOTSTRAP)
        config.update(extra)
        return config

    @property
    def json(self) -> bool:
        return self.output == "json"


class Failed(click.ClickException):
    """The cluster or registry refused or failed: exit 1 with the reason."""

    exit_code = FAILED


def fail(message: str) -> NoReturn:
    raise Failed(message)


def settings() -> Settings:
    return click.get_current_context().find_object(Settings)  # type: ignore[return-value]


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, title: str | None = None,
         json_value: Any = None) -> None:
    """``rows`` as a table (``columns`` in that order), or ``json_value`` (default: the rows)
    as JSON."""
    if settings().json:
        click.echo(json.dumps(rows if json_value is None else json_value, indent=1,
                              default=str))
        return
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


def common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The connection and output options, accepted after any subcommand too."""
    options = [
        click.option("--bootstrap-server", "bootstrap", default=None, metavar="HOST:PORT",
                     help=f"a Kafka listener (default: {DEFAULT_BOOTSTRAP})"),
        click.option("--command-config", type=click.Path(path_type=Path, exists=True),
                     default=None, help="librdkafka settings, key=value per line"),
        click.option("-o", "--output", type=click.Choice(["table", "json"]), default=None),
        click.option("--registry", default=None, metavar="URL",
                     help=f"Schema Registry URL (default: {DEFAULT_REGISTRY})"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.pass_context
def cli(ctx: click.Context, bootstrap: str | None, command_config: Path | None,
        output: str | None, registry: str | None) -> None:
    """Work with a kelp (or any Kafka) cluster: topics, records, groups, schemas."""
    ctx.obj = Settings(bootstrap, command_config, output or "table",
                       registry or DEFAULT_REGISTRY)


def apply_local(bootstrap: str | None, command_config: Path | None, output: str | None,
                registry: str | None) -> None:
    """Options given after the subcommand override the group's."""
    current = settings()
    if bootstrap:
        current.bootstrap = bootstrap
    if command_config:
        current.command_config = command_config
    if output:
        current.output = output
    if registry:
        current.registry = registry


def command(group: click.Group, name: str, **kwargs: Any
            ) -> Callable[[Callable[..., Any]], click.Command]:
    """A subcommand of ``group`` that also takes the common options."""

    def wrap(function: Callable[..., Any]) -> click.Command:
        def run(*args: Any, bootstrap: str | None = None, command_config: Path | None = None,
                output: str | None = None, registry: str | None = None, **rest: Any) -> Any:
            apply_local(bootstrap, command_config, output, registry)
            return function(*args, **rest)

        run.__doc__ = function.__doc__
        run.__name__ = function.__name__
        # The arguments and options declared on ``function`` (click keeps them there).
        run.__click_params__ = list(getattr(function, "__click_params__", []))  # type: ignore[attr-defined]
        return group.command(name, **kwargs)(common_options(run))

    return wrap


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(kelp completion bash)"."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(cli, {}, "kelp", "_KELP_COMPLETE").source())


def main(argv: list[str]) -> None:
    from kelp.ops import cluster, groups, records, registry, topics  # noqa: F401 (registers)

    cli.main(args=argv, prog_name="kelp", standalone_mode=True)

