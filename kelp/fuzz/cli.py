"""``python -m kelp.fuzz``: corpus, target, run, verdict, exit code.

Exit codes: 0 the run finished and every check held; 1 a check failed (a process died or
logged a Traceback, a client no longer round-trips, RSS stayed high, a stored batch is
invalid); 2 it could not run (no corpus, target unreachable); 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kelp.address import parse_host_port
from kelp.fuzz import corpus, verdict
from kelp.fuzz.capture import TOPICS, capture
from kelp.fuzz.mutate import Mutator
from kelp.fuzz.runner import RunConfig, Runner, Stats
from kelp.fuzz.stack import Stack
from kelp.fuzz.triage import save_frames

DEFAULT_CORPUS = Path(".kelp/fuzz/corpus.bin")
EXIT_FAILED, EXIT_SETUP, EXIT_INTERRUPTED = 1, 2, 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kelp.fuzz",
        description="Structure-aware fuzzer of kelp's Kafka port: mutates real request frames, "
                    "sends them over many connections, then checks kelp survived intact.")
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames to send")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pipeline", type=int, default=4, help="frames in flight per connection")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutation sequence")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="seed corpus file; captured from real clients when missing")
    parser.add_argument("--capture", action="store_true",
                        help="(re)capture the corpus into --corpus and exit")
    parser.add_argument("--bootstrap", help="fuzz a running kelp at HOST:PORT instead of "
                        "starting one (a scratch one: mutants create and delete topics)")
    parser.add_argument("--broker-http", help="the running broker's HTTP address (health)")
    parser.add_argument("--data-dir", type=Path,
                        help="the running broker's data dir (default: from its command line)")
    parser.add_argument("--workdir", type=Path, help="where the own stack lives (default: a "
                        "temp dir, removed after a passing run)")
    parser.add_argument("--rss-limit-mb", type=float, default=verdict.RSS_LIMIT_MB)
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between reports")
    return parser.parse_args(argv)


@dataclass
class Target:
    bootstrap: str
    pids: dict[str, int]
    logs: dict[str, Path] = field(default_factory=dict)
    data_dir: Path | None = None
    broker_http: str | None = None
    keep: Path = Path(".")  # where crash candidates are saved


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGINT even where a shell started us with it ignored) unwind like Ctrl-C,
    # so the ``finally`` below stops the stack's processes. trio takes over SIGINT while the
    # run goes (it needs the default handler in place to do so) and the runner SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("fuzz: interrupted; processes stopped", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    try:  # the capture and the verdict drive real clients
        import aiokafka  # noqa: F401
        import confluent_kafka  # noqa: F401
        import kafka  # noqa: F401
    except ImportError as exc:
        print(f"kelp fuzz needs the test clients ({exc.name}): pip install -e '.[test]'",
              file=sys.stderr)
        return EXIT_SETUP
    if args.capture or not args.corpus.exists():
        print(f"fuzz: capturing the seed corpus into {args.corpus}", flush=True)
        corpus.save(capture(), args.corpus)
        if args.capture:
            return 0
    seeds = corpus.load(args.corpus)
    print(f"fuzz: {len(seeds)} seeds covering {len(corpus.coverage(seeds))} (api, version) "
          f"pairs from {args.corpus}", flush=True)
    if args.bootstrap:
        return fuzz(args, seeds, _external(args))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kelp-fuzz-"))
    stack = Stack(workdir)
    try:
        stack.start()
        target = Target(stack.bootstrap, {c.name: c.pid for c in stack.children if c.pid},
                        {c.name: c.log_path for c in stack.children}, stack.data_dir,
                        stack.broker_http, keep=workdir)
        code = fuzz(args, seeds, target)
    finally:
        stack.stop()
    if code == 0 and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"fuzz: logs, data and crash candidates kept in {workdir}")
    return code


def fuzz(args: argparse.Namespace, seeds: list[corpus.Seed], target: Target) -> int:
    """One run against ``target`` and its verdict; returns the exit code."""
    try:
        _create_topics(target.bootstrap)
    except Exception as exc:
        print(f"fuzz: cannot reach kelp at {target.bootstrap}: {exc}", file=sys.stderr)
        return EXIT_SETUP
    pids = dict(target.pids)
    rss_start = {name: verdict.rss_mb(pid) for name, pid in pids.items()}
    log_starts = {name: (path, path.stat().st_size if path.exists() else 0)
                  for name, path in target.logs.items()}
    host, port = parse_host_port(target.bootstrap)
    config = RunConfig(host, port, args.frames, args.seconds, args.connections,
                       args.pipeline, args.progress)

    runner = Runner(config, Mutator(seeds, args.seed),
                    log=lambda line: print(line, flush=True))
    runner.alive = _Watch(runner, pids, log_starts, target.keep)
    print(f"fuzz: {args.frames} frames (at most {args.seconds:.0f}s) to {target.bootstrap} "
          f"over {args.connections} connections, seed {args.seed}; pids {pids}", flush=True)
    stats = runner.run()
    if stats.died is not None:
        _save_recent(runner, target.keep / "crash-candidates.bin")
    result = verdict.Verdict()
    if stats.died is not None:
        result.fail(f"run stopped early: {stats.died}")
    verdict.check_processes(result, pids, rss_start, args.rss_limit_mb)
    if stats.died is None:
        verdict.check_round_trip(result, target.bootstrap)
    verdict.check_logs(result, log_starts)
    _check_health(result, target.broker_http)
    if target.data_dir is not None:
        verdict.check_data_dir(result, target.data_dir)
    else:
        result.note("data dir: unknown (pass --data-dir), batches not checked")
    print(report(stats, result), flush=True)
    return 0 if result.ok else EXIT_FAILED


def report(stats: Stats, result: verdict.Verdict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in stats.by_how.most_common())
    lines = [
        "fuzz: ---- verdict ----",
        f"  frames sent            {stats.frames} in {stats.elapsed:.1f}s "
        f"({stats.rate:,.0f} frames/s, {stats.bytes / 1e6:.1f} MB)",
        f"  mutations              {kinds}",
        f"  connections            {stats.connections} opened "
        f"({stats.connections / max(stats.elapsed, 1e-9):,.0f}/s), {stats.closed_by_server} closed "
        f"by the server, {stats.abandoned} unanswered and {stats.stalled} stalled (closed by "
        f"us), {stats.refused} refused",
        f"  responses received     {stats.responses}",
        f"  batches checked        {result.batches_checked}",
        *(f"  {line}" for line in result.lines),
        f"  failures               {len(result.failures)}",
        f"fuzz: {'PASS' if result.ok else 'FAIL'}",
    ]
    return "\n".join(lines)


def _create_topics(bootstrap: str) -> None:
    """The topics the Produce seeds aim at (mutated DeleteTopics seeds may remove them; the
    unmutated CreateTopics seeds put them back)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    admin.list_topics(timeout=10)  # raises when kelp cannot be reached
    for future in admin.create_topics([NewTopic(TOPICS[0], 2), NewTopic(TOPICS[1], 1)],
                                      request_timeout=10).values():
        try:
            future.result(timeout=15)
        except Exception as exc:
            if "already exists" not in str(exc).lower():
                raise


def _save_recent(runner: Runner, path: Path) -> None:
    """The frames sent just before trouble: one of them is likely its cause."""
    save_frames(runner.recent_frames(), path)
    print(f"fuzz: the last frames sent are in {path}; find the culprit with "
          f"python -m kelp.fuzz.triage {path}", flush=True)


class _Watch:
    """Called by the runner a few times a second: None while all is well, else what died.
    A Traceback in a log does not stop the run, but the frames sent just before the first one
    of each kind (its final exception line) are saved for triage."""

    MAX_SAVES = 8

    def __init__(self, runner: Runner, pids: dict[str, int],
                 logs: dict[str, tuple[Path, int]], keep: Path) -> None:
        self.runner, self.pids, self.keep = runner, pids, keep
        self.offsets = {name: (path, start) for name, (path, start) in logs.items()}
        self.partial = {name: b"" for name in logs}
        self.kinds: set[str] = set()

    def __call__(self) -> str | None:
        gone = [f"{n} (pid {p})" for n, p in self.pids.items() if not verdict.pid_alive(p)]
        if gone:
            return f"{', '.join(gone)} died"
        for name, (path, start) in list(self.offsets.items()):
            try:
                with open(path, "rb") as handle:
                    handle.seek(start)
                    new = handle.read()
            except OSError:
                continue
            self.offsets[name] = (path, start + len(new))
            *lines, self.partial[name] = (self.partial[name] + new).split(b"\n")
            for line in lines:
                if b"Traceback" in line:
                    self._traceback(name, line.decode("utf-8", "replace"))
        return None

    def _traceback(self, name: str, line: str) -> None:
        kind = f"{name}: {verdict.exception_kind(line)}"
        if kind in self.kinds or len(self.kinds) >= self.MAX_SAVES:
            return
        self.kinds.add(kind)
        print(f"fuzz: a new Traceback: {kind}", flush=True)
        _save_recent(self.runner, self.keep / f"traceback-candidates-{len(self.kinds)}.bin")


def _check_health(result: verdict.Verdict, broker_http: str | None) -> None:
    if broker_http is None:
        return
    try:
        with urllib.request.urlopen(f"http://{broker_http}/health", timeout=5) as response:
            result.note(f"broker /health: HTTP {response.status}")
    except Exception as exc:
        result.fail(f"broker /health: {exc}")


def _external(args: argparse.Namespace) -> Target:
    """PIDs, logs (when stderr goes to a file) and data dir of the kelp serving --bootstrap."""
    from kelp.loadtest.procs import find_kelp, scan

    pids = {k: p for k, p in find_kelp(args.bootstrap).items() if k in ("broker", "gateway")}
    flags = {p.pid: p.flags for p in scan() if p.pid in pids.values()}
    logs: dict[str, Path] = {}
    for kind, pid in pids.items():
        with contextlib.suppress(OSError):
            resolved = Path(f"/proc/{pid}/fd/2").resolve(strict=True)
            if resolved.is_file():  # kelp logs to stderr; `kelp up` pipes it (no log check)
                logs[kind] = resolved
    data_dir = args.data_dir
    if data_dir is None and "broker" in pids:
        flag = flags.get(pids["broker"], {}).get("--data-dir", ".kelp/data")
        data_dir = Path(f"/proc/{pids['broker']}/cwd").resolve() / flag
    return Target(args.bootstrap, pids, logs, data_dir, args.broker_http,
                  keep=args.corpus.parent)
