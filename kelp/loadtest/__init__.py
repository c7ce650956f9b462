"""kelp's load-test tool: N producers and M consumers (librdkafka, one process each) against a
running kelp, verifying that every acknowledged record is consumed exactly once, and measuring
throughput, produce and end-to-end latency, and the CPU and RSS of each kelp process.

Modules, in the order a run uses them: :mod:`profiles` (the knobs), :mod:`records` (what a record
carries), :mod:`worker` (producer and consumer processes), :mod:`runner` (the coordinator),
:mod:`verify` (exactly-once accounting, sans IO), :mod:`stats` (latency histograms),
:mod:`procs` (CPU/RSS from /proc), :mod:`report` (progress, JSON, summary, plot).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run ``kelp loadtest`` with ``argv`` (without the program name); returns the exit code."""
    from kelp.loadtest.cli import main as cli_main

    return cli_main(argv)
