"""``kelp up``'s config file (``kelp.toml``): options for the three processes (sans-IO).

    [broker]                      # broker configs by Kafka's names (python -m broker --config)
    num.partitions = 3
    log.retention.ms = 86400000
    group.min.session.timeout.ms = 1000

    [broker.flags]                # any `python -m broker` flag, without its dashes
    retention-check-ms = 10000

    [gateway.flags]               # any `python -m gateway` flag
    max-connections = 5000

    [sidecar.flags]               # any `python -m rdma` flag
    no-ucx = true

A flag set to ``true`` is passed bare (``--no-ucx``), ``false`` is left out, a list repeats
the flag. Dotted config names may be written bare (``num.partitions = 3``), as TOML reads them
as nested tables, or quoted.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

PROCESSES = ("broker", "gateway", "sidecar")


class UpConfigError(ValueError):
    pass


@dataclass
class UpConfig:
    broker_configs: list[str] = field(default_factory=list)  # NAME=VALUE
    flags: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PROCESSES})


def parse(text: str) -> UpConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UpConfigError(f"not valid TOML: {exc}") from None
    config = UpConfig()
    for process, table in document.items():
        if process not in PROCESSES or not isinstance(table, dict):
            raise UpConfigError(f"unknown table [{process}]: expected one of {PROCESSES}")
        flags = table.pop("flags", {})
        if not isinstance(flags, dict):
            raise UpConfigError(f"[{process}.flags] must be a table")
        config.flags[process] = _flags(process, flags)
        if table and process != "broker":
            raise UpConfigError(f"[{process}] takes only a flags table: "
                                f"{sorted(_flatten(table))}")
        config.broker_configs += [f"{name}={_text(value)}"
                                  for name, value in _flatten(table).items()]
    return config


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_text(item) for item in value)
    return str(value)


def _flags(process: str, flags: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in flags.items():
        if isinstance(value, dict):
            raise UpConfigError(f"[{process}.flags] {name} must be a value, not a table")
        flag = f"--{name}"
        if value is True:
            out.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            for item in value:
                out += [flag, _text(item)]
        else:
            out += [flag, _text(value)]
    return out
