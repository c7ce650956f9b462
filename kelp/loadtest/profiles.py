"""The load-test profiles and the command line that overrides them.

The profiles mirror SeaweedFS's kafka-client-loadtest at 100 times its load: its quick test ran
one producer at 10 msg/s for a minute, its standard test two producers at 50 msg/s each (and
ended at 62 % success). Here ``quick`` runs one producer at 1 000 msg/s, ``standard`` two at
5 000 msg/s each over 5 topics x 3 partitions, both with Avro values through the built-in
registry; ``stress`` runs unthrottled producers, as many as the machine has cores for, for ten
minutes, and fails if any kelp process's RSS grows by more than 64 MB after warm-up;
``transactional`` runs transactional producers committing every 500 records (every tenth
transaction aborted on purpose) and read_committed consumers, and fails if an aborted record
is consumed.

Every knob is a flag; a flag given on the command line replaces the profile's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from kelp.loadtest.records import VALUE_TYPES

COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
ACKS = ("0", "1", "all")


@dataclass(frozen=True)
class Profile:
    """What to run. Rates are per producer, in records per second; 0 means unthrottled."""

    name: str
    description: str
    producers: int
    consumers: int
    topics: int
    partitions: int
    size: int                     # value bytes per record (approximately, for json/avro)
    rate: int                     # records/s per producer, 0 = as fast as the client can
    duration: float               # seconds of producing
    value: str = "avro"           # binary | json | avro
    keys: bool = True
    headers: bool = True
    compression: str = "none"
    acks: str = "all"
    idempotence: bool = True
    linger_ms: int = 5
    drain_timeout: float = 30.0   # give up draining after this long without a new record
    max_errors: int = 0           # produce + consume errors tolerated before the run fails
    rss_growth_limit_mb: float | None = None  # per kelp process, after warm-up; None = no bound
    transaction_records: int = 0  # records per transaction; 0 = not transactional
    abort_every: int = 0          # abort every Nth transaction on purpose; 0 = never

    @property
    def partitions_total(self) -> int:
        return self.topics * self.partitions


def _stress_producers() -> int:
    # One producer per core, at least two: the client processes should not be the bottleneck,
    # and on a small machine more producers only steal CPU from kelp itself.
    return max(2, min(8, os.cpu_count() or 2))


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick", description="smoke test: 1 producer x 1 consumer, Avro, 1 000 msg/s",
        producers=1, consumers=1, topics=1, partitions=3, size=1024, rate=1000, duration=60.0),
    "standard": Profile(
        name="standard",
        description="2 producers x 2 consumers over 5 topics x 3 partitions, Avro, 2 x 5 000 msg/s",
        producers=2, consumers=2, topics=5, partitions=3, size=1024, rate=5000, duration=300.0),
    "stress": Profile(
        name="stress",
        description="unthrottled producers (one per core), binary 1 KiB, lz4, 10 minutes",
        producers=_stress_producers(), consumers=_stress_producers(), topics=4, partitions=6,
        size=1024, rate=0, duration=600.0, value="binary", compression="lz4",
        # Measured on 2 cores: 19 M records in 10 minutes, broker +9 MB after warm-up, gateway
        # flat. 64 MB leaves room for noise and still catches a leak of a few bytes per record.
        drain_timeout=60.0, rss_growth_limit_mb=64.0),
    "transactional": Profile(
        name="transactional",
        description="2 transactional producers (500 records per transaction, every 10th "
                    "aborted) x 2 read_committed consumers, 3 topics x 3 partitions, 2 000 msg/s",
        producers=2, consumers=2, topics=3, partitions=3, size=1024, rate=2000, duration=60.0,
        value="binary", transaction_records=500, abort_every=10),
}


@dataclass
class Options:
    """Where to run and what to write: everything that is not the workload itself."""

    bootstrap: str = "127.0.0.1:9092"
    registry: str = "http://127.0.0.1:8081"
    json_out: Path | None = None
    plot: Path | None = None
    live: bool = True
    interval: float = 2.0                       # seconds between plain progress lines
    kelp_pids: dict[str, int] = field(default_factory=dict)   # empty: auto-detect
    topic_prefix: str | None = None
    keep_topics: bool = False


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _pids(text: str) -> dict[str, int]:
    """``broker=123,gateway=456[,sidecar=789]``, or bare pids named by their command line."""
    out: dict[str, int] = {}
    for i, part in enumerate(p for p in text.split(",") if p.strip()):
        name, _, pid = part.rpartition("=")
        try:
            out[name.strip() or f"pid{i}"] = int(pid)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad pid in {part!r}") from exc
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kelp loadtest",
        description="Drive kelp with N producers and M consumers (librdkafka, one process "
                    "each) and verify that every acknowledged record is consumed exactly once.",
        epilog="Profiles: " + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
    parser.add_argument("profile", choices=sorted(PROFILES), help="starting point for the knobs")
    load = parser.add_argument_group("workload (overrides the profile)")
    load.add_argument("--producers", type=int, help="producer processes")
    load.add_argument("--consumers", type=int, help="consumer processes (one group)")
    load.add_argument("--topics", type=int, help="topics to create")
    load.add_argument("--partitions", type=int, help="partitions per topic")
    load.add_argument("--size", type=int, help="value bytes per record")
    load.add_argument("--rate", type=int, help="records/s per producer; 0 = unthrottled")
    load.add_argument("--duration", type=float, help="seconds of producing")
    load.add_argument("--value", choices=VALUE_TYPES, help="value type")
    load.add_argument("--keys", type=_bool, metavar="BOOL", help="keyed records (true/false)")
    load.add_argument("--headers", type=_bool, metavar="BOOL",
                      help="identity headers on every record, checked by consumers")
    load.add_argument("--compression", choices=COMPRESSIONS)
    load.add_argument("--acks", choices=ACKS)
    load.add_argument("--idempotence", type=_bool, metavar="BOOL")
    load.add_argument("--linger-ms", type=int, help="producer linger.ms")
    load.add_argument("--transaction-records", type=int,
                      help="records per transaction (0: not transactional)")
    load.add_argument("--abort-every", type=int,
                      help="abort every Nth transaction on purpose (0: never)")
    load.add_argument("--drain-timeout", type=float,
                      help="seconds without a new record before the drain gives up")
    load.add_argument("--max-errors", type=int, help="errors tolerated before failing")
    load.add_argument("--rss-growth-limit-mb", type=float,
                      help="fail if a kelp process's RSS grows more than this after warm-up")
    where = parser.add_argument_group("target and output")
    where.add_argument("--bootstrap", default=Options.bootstrap, help="Kafka bootstrap servers")
    where.add_argument("--registry", default=Options.registry, help="Schema Registry URL")
    where.add_argument("--json-out", type=Path, help="write the result as JSON here")
    where.add_argument("--plot", type=Path, metavar="PNG",
                       help="plot throughput, latency and RSS over time (needs matplotlib)")
    where.add_argument("--no-live", action="store_true",
                       help="plain progress lines even on a terminal")
    where.add_argument("--interval", type=float, default=Options.interval,
                       help="seconds between plain progress lines")
    where.add_argument("--kelp-pids", type=_pids, default={}, metavar="broker=PID,gateway=PID",
                       help="kelp processes to sample; default: found in /proc by command line")
    where.add_argument("--topic-prefix", help="topic names (default: loadtest-PROFILE-RUNID)")
    where.add_argument("--keep-topics", action="store_true", help="do not delete the topics")
    return parser


def parse(argv: list[str] | None) -> tuple[Profile, Options]:
    args = build_parser().parse_args(argv)
    base = PROFILES[args.profile]
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Profile)
                 if f.name not in ("name", "description") and getattr(args, f.name, None)
                 is not None}
    profile = dataclasses.replace(base, **overrides)
    if profile.transaction_records and (profile.acks != "all" or not profile.idempotence):
        build_parser().error("transactions need --acks all and --idempotence true")
    if profile.acks != "all" and profile.idempotence:
        # librdkafka refuses idempotence without acks=all; only an explicit request is an error.
        if args.idempotence:
            build_parser().error("--idempotence true needs --acks all")
        profile = dataclasses.replace(profile, idempotence=False)
    problems = [f"--{name} must be at least {low}" for name, low in (
        ("producers", 1), ("consumers", 1), ("topics", 1), ("partitions", 1), ("size", 0),
        ("rate", 0), ("max_errors", 0), ("transaction_records", 0), ("abort_every", 0))
        if getattr(profile, name) < low]
    if profile.duration <= 0:
        problems.append("--duration must be positive")
    if problems:
        build_parser().error("; ".join(problems))
    options = Options(bootstrap=args.bootstrap, registry=args.registry.rstrip("/"),
                      json_out=args.json_out, plot=args.plot, live=not args.no_live,
                      interval=args.interval, kelp_pids=args.kelp_pids,
                      topic_prefix=args.topic_prefix, keep_topics=args.keep_topics)
    return profile, options
