"""``--debug NAME=VALUE``: the one switch for fault injection, shared by every process.

Tests make a process misbehave on purpose (a broker slow to append, a gateway that drops
produce responses) to prove that clients and kelp recover. Those switches are not product
features, so they do not get flags of their own: each process declares the faults it knows and
``--debug`` accepts only those, repeatable (``--debug append-delay-ms=30``). Unset, every fault
is off. ``--debug help`` lists them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def add_option(parser: argparse.ArgumentParser, faults: Mapping[str, str]) -> None:
    """Add ``--debug`` to ``parser``; ``faults`` maps each fault's name to what it does."""
    listing = "; ".join(f"{name}: {what}" for name, what in sorted(faults.items()))
    parser.add_argument("--debug", action="append", default=[], metavar="FAULT=VALUE",
                        help=f"fault injection for tests, repeatable ({listing})")


def parse(parser: argparse.ArgumentParser, values: list[str],
          faults: Mapping[str, str]) -> dict[str, float]:
    """The faults asked for, by name, as numbers; a clear usage error for anything else."""
    chosen: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if value == "help" or not sep or name not in faults:
            known = ", ".join(sorted(faults)) or "none"
            parser.error(f"--debug expects FAULT=VALUE with FAULT one of: {known}; got {value!r}")
        try:
            chosen[name] = float(number)
        except ValueError:
            parser.error(f"--debug {name}: expected a number, got {number!r}")
    return chosen
