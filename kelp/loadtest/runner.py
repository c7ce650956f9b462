"""The coordinator: sets a run up, starts the workers, keeps the books, tears everything down.

A run, in order:

1. **setup**: reach Kafka, create the topics (fresh names per run unless ``--topic-prefix``),
   register the Avro schema under ``<topic>-value`` for every topic (schema first: producers
   only look the id up), and find the kelp processes to sample.
2. **start**: spawn M consumers and N producers at once (interpreter start-up overlaps); wait
   until every consumer has joined the group and together they own every partition, and every
   producer is connected. Only then does the clock start, so the group's initial rebalance
   delay is not counted as end-to-end latency.
3. **produce** for the duration; every second, sample CPU/RSS, fold the workers' reports into
   the ledger and the histograms, and show progress.
4. **drain**: once every producer has flushed, wait until the consumers have seen every
   acknowledged record, or until none arrived for ``drain_timeout`` seconds.
5. **verdict**: stop the consumers (they commit and leave), join every worker, delete the
   topics, and hand the numbers to :mod:`report`.

Ctrl-C once stops the producers early and still drains and verifies; twice skips the drain.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from kelp.loadtest import procs
from kelp.loadtest.profiles import Options, Profile
from kelp.loadtest.records import AVRO_SCHEMA
from kelp.loadtest.report import Display, Progress
from kelp.loadtest.stats import Histogram
from kelp.loadtest.verify import Ledger
from kelp.loadtest.worker import WorkerSpec
from kelp.loadtest.worker import main as worker_main

TICK_S = 1.0
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
REGISTRY_TIMEOUT_S = 30.0


class SetupError(Exception):
    """The run could not start (Kafka or the registry unreachable, a worker failed to start)."""


@dataclass
class Tally:
    """Running totals and the current one-second interval's share of them."""

    acked: int = 0
    acked_bytes: int = 0
    consumed: int = 0
    consumed_bytes: int = 0
    consumer_errors: dict[str, int] = field(default_factory=dict)
    decode_errors: int = 0
    first_decode_error: str = ""
    header_mismatches: int = 0
    foreign: int = 0
    schema_ids: set[int] = field(default_factory=set)
    produce: Histogram = field(default_factory=Histogram)
    e2e: Histogram = field(default_factory=Histogram)
    # this interval only
    i_acked: int = 0
    i_acked_bytes: int = 0
    i_consumed: int = 0
    i_consumed_bytes: int = 0
    i_produce: Histogram = field(default_factory=Histogram)
    i_e2e: Histogram = field(default_factory=Histogram)

    def next_interval(self) -> None:
        self.i_acked = self.i_acked_bytes = self.i_consumed = self.i_consumed_bytes = 0
        self.i_produce, self.i_e2e = Histogram(), Histogram()


@dataclass
class _Worker:
    spec: WorkerSpec
    process: Any
    done: bool = False
    final: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    last_ns: int = 0


class LoadTest:
    def __init__(self, profile: Profile, options: Options, display: Display) -> None:
        self.profile = profile
        self.options = options
        self.display = display
        self.run_id = secrets.randbits(31) or 1
        prefix = options.topic_prefix or f"loadtest-{profile.name}-{self.run_id:08x}"
        self.topics = tuple(f"{prefix}-{i}" for i in range(profile.topics))
        self.group = f"{prefix}-group"
        self.ledger = Ledger()
        self.tally = Tally()
        self.timeline: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.registry: dict[str, Any] | None = None
        self.kelp: dict[str, procs.Series] = {}
        # The load generators themselves, summed per role: if they approach 100 % per process,
        # the client (not kelp) is the bottleneck.
        self.clients: dict[str, procs.Series] = {}
        self.workers: list[_Worker] = []
        self.assignment: dict[int, set[tuple[int, int]]] = {}
        self.ready: set[int] = set()
        self.phase = "setup"
        self.interrupts = 0
        self.started_wall = time.time()
        self._origin = time.monotonic()
        self.load_start: float | None = None  # run seconds (see ``now``)
        self.produce_end: float | None = None
        self.drain_end: float | None = None
        self._last_tick = 0.0
        self._last_delivery_change = 0.0
        self._topics_created = False

    def now(self) -> float:
        """Seconds since this object was made: the time axis of samples and the timeline."""
        return time.monotonic() - self._origin

    # -----------------------------------------------------------------------------------------
    # setup

    def _admin(self) -> Any:
        from confluent_kafka.admin import AdminClient
        # log_level 2: librdkafka would otherwise log every failed connect of the preflight.
        return AdminClient({"bootstrap.servers": self.options.bootstrap,
                            "client.id": "kelp-loadtest-admin", "log_level": 2})

    def _setup(self) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic

        admin = self._admin()
        try:
            admin.list_topics(timeout=10)
        except KafkaException as exc:
            raise SetupError(f"cannot reach Kafka at {self.options.bootstrap}: {exc}") from exc
        wanted = [NewTopic(t, num_partitions=self.profile.partitions, replication_factor=1)
                  for t in self.topics]
        self._topics_created = True   # (or some of them): delete them whatever happens next
        for topic, future in admin.create_topics(wanted, request_timeout=30).items():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if getattr(error, "name", lambda: "")() != "TOPIC_ALREADY_EXISTS":
                    raise SetupError(f"cannot create topic {topic}: {exc}") from exc
                self.notes.append(f"topic {topic} already existed; records of other runs on it "
                                  "are skipped")
        existing = admin.list_topics(timeout=10).topics
        for topic in self.topics:
            have = len(existing[topic].partitions) if topic in existing else 0
            if have != self.profile.partitions:
                raise SetupError(f"topic {topic} has {have} partitions, "
                                 f"not {self.profile.partitions}")
        if self.profile.value == "avro":
            self._register_schema()
        pids = self.options.kelp_pids or procs.find_kelp(self.options.bootstrap)
        if not pids:
            self.notes.append("no kelp processes found to sample (give --kelp-pids)")
        self.kelp = {name: procs.Series(name, [pid]) for name, pid in sorted(pids.items())}

    def _register_schema(self) -> None:
        """Schema first: register under every topic's value subject before any producer runs,
        retrying while the registry is still reading its log or electing a leader."""
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        url = self.options.registry
        client = SchemaRegistryClient({"url": url})
        deadline = time.monotonic() + REGISTRY_TIMEOUT_S
        ids: dict[str, int] = {}
        for topic in self.topics:
            subject = f"{topic}-value"
            while True:
                try:
                    ids[subject] = client.register_schema(subject, Schema(AVRO_SCHEMA, "AVRO"))
                    break
                except (SchemaRegistryError, OSError, ValueError) as exc:
                    if time.monotonic() > deadline or self.interrupts:
                        raise SetupError(f"cannot register {subject} at {url}: {exc}") from exc
                    time.sleep(0.25)
                except Exception as exc:  # requests/httpx connection errors and the like
                    if time.monotonic() > deadline or self.interrupts:
                        raise SetupError(f"schema registry at {url}: {exc}") from exc
                    time.sleep(0.25)
        self.registry = {"url": url, "subjects": sorted(ids), "schema_ids": sorted(set(
            ids.values())), "registered": ids}

    # -----------------------------------------------------------------------------------------
    # workers

    def _spawn(self, work_queue: Any, start: Any, stop_producers: Any,
               stop_consumers: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        for role, count, stop in (("consumer", self.profile.consumers, stop_consumers),
                                  ("producer", self.profile.producers, stop_producers)):
            for index in range(count):
                spec = WorkerSpec(
                    role=role, index=index, run=self.run_id, profile=self.profile,
                    bootstrap=self.options.bootstrap,
                    registry=self.options.registry if self.profile.value == "avro" else None,
                    topics=self.topics, group=self.group, parent_pid=os.getpid())
                process = ctx.Process(target=worker_main, args=(spec, work_queue, start, stop),
                                      name=f"kelp-loadtest-{role}-{index}", daemon=True)
                process.start()
                self.workers.append(_Worker(spec, process))
        self.clients = {
            f"{role}s": procs.Series(f"{role}s", [w.process.pid for w in self.workers_of(role)])
            for role in ("producer", "consumer")}
        # This process too: the ledger costs CPU on the same machine as kelp.
        self.clients["coordinator"] = procs.Series("coordinator", [os.getpid()])

    def workers_of(self, role: str) -> list[_Worker]:
        return [w for w in self.workers if w.spec.role == role]

    def _worker(self, role: str, index: int) -> _Worker:
        return next(w for w in self.workers if w.spec.role == role and w.spec.index == index)

    def _handle(self, message: tuple[str, str, int, Any]) -> None:
        kind, role, index, payload = message
        worker = self._worker(role, index)
        if kind == "stats":
            if role == "producer":
                self._producer_stats(worker, payload)
            else:
                self._consumer_stats(worker, payload)
        elif kind == "ready":
            self.ready.add(index)
        elif kind == "assigned":
            self.assignment.setdefault(index, set()).update(tuple(p) for p in payload)
        elif kind == "revoked":
            self.assignment.setdefault(index, set()).difference_update(tuple(p) for p in payload)
        elif kind == "done":
            worker.done, worker.final = True, payload
        elif kind == "fatal":
            worker.done = True
            self.failures.append(f"{role} {index} failed: {payload.strip().splitlines()[-1]}")
            self.notes.append(f"{role} {index} traceback:\n{payload}")

    def _producer_stats(self, worker: _Worker, stats: dict[str, Any]) -> None:
        index = worker.spec.index
        self.ledger.acked_many(index, stats["acked"])
        for seq, reason in stats["failed"]:
            self.ledger.failed(index, seq, reason)
        t = self.tally
        acked = len(stats["acked"])
        t.acked += acked
        t.i_acked += acked
        t.acked_bytes += stats["bytes"]
        t.i_acked_bytes += stats["bytes"]
        t.produce.merge(stats["hist"], stats["hist_max"])
        t.i_produce.merge(stats["hist"], stats["hist_max"])
        worker.sent = stats["sent"]
        worker.last_ns = max(worker.last_ns, stats["last_ns"])

    def _consumer_stats(self, worker: _Worker, stats: dict[str, Any]) -> None:
        before = self.ledger.deliveries
        self.ledger.consumed_many(stats["producers"], stats["seqs"], stats["streams"])
        if self.ledger.deliveries != before:
            self._last_delivery_change = self.now()
        t = self.tally
        count = len(stats["seqs"])
        t.consumed += count
        t.i_consumed += count
        t.consumed_bytes += stats["bytes"]
        t.i_consumed_bytes += stats["bytes"]
        t.e2e.merge(stats["hist"], stats["hist_max"])
        t.i_e2e.merge(stats["hist"], stats["hist_max"])
        for name, n in stats["errors"].items():
            t.consumer_errors[name] = t.consumer_errors.get(name, 0) + n
        t.decode_errors += stats["decode_errors"]
        t.first_decode_error = t.first_decode_error or stats["first_decode_error"]
        t.header_mismatches += stats["header_mismatches"]
        t.foreign += stats["foreign"]
        t.schema_ids.update(stats["schema_ids"])
        worker.last_ns = max(worker.last_ns, stats["last_ns"])

    def _pump(self, work_queue: Any, until: float) -> None:
        """Fold in worker reports until ``until`` (run seconds), ticking once a second."""
        while True:
            now = self.now()
            if now - self._last_tick >= TICK_S:
                self._tick()
            wait = min(until, self._last_tick + TICK_S) - now
            if now >= until:
                break
            with contextlib.suppress(queue.Empty):
                self._handle(work_queue.get(timeout=max(0.001, wait)))
        self._check_alive(work_queue)

    def _check_alive(self, work_queue: Any) -> None:
        """A worker that exited without a final report died (segfault, OOM kill)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._handle(work_queue.get_nowait())
        for worker in self.workers:
            code = worker.process.exitcode
            if not worker.done and code is not None:
                worker.done = True
                self.failures.append(f"{worker.spec.role} {worker.spec.index} exited with code "
                                     f"{code} without reporting")

    # -----------------------------------------------------------------------------------------
    # progress

    def _tick(self) -> None:
        now = self.now()
        interval = now - self._last_tick if self._last_tick else TICK_S
        self._last_tick = now
        for _, series in self._series():
            series.take(now)
        t = self.tally
        if self.load_start is not None:
            produce = t.i_produce.summary_ms()
            e2e = t.i_e2e.summary_ms()
            self.timeline.append({
                "t": round(now - self.load_start, 2),
                "acked_per_s": round(t.i_acked / interval, 1),
                "consumed_per_s": round(t.i_consumed / interval, 1),
                "produce_mb_per_s": round(t.i_acked_bytes / interval / 1e6, 3),
                "consume_mb_per_s": round(t.i_consumed_bytes / interval / 1e6, 3),
                "produce_p50_ms": produce["p50"], "produce_p99_ms": produce["p99"],
                "e2e_p50_ms": e2e["p50"], "e2e_p99_ms": e2e["p99"],
                "cpu_percent": {n: _round(s.cpu_percent_last()) for n, s in self._series()},
                "rss_mb": {n: _round(s.rss_mb_last()) for n, s in self._series()},
            })
        self.display.update(self._progress(interval))
        t.next_interval()

    def _series(self) -> list[tuple[str, procs.Series]]:
        return [*self.kelp.items(), *self.clients.items()]

    def _progress(self, interval: float) -> Progress:
        t = self.tally
        elapsed = self.now() - self.load_start if self.load_start is not None else 0.0
        return Progress(
            profile=self.profile.name, phase=self.phase, elapsed=elapsed,
            duration=self.profile.duration,
            sent=sum(w.sent for w in self.workers_of("producer")), acked=t.acked,
            consumed=t.consumed, outstanding=self.ledger.outstanding,
            duplicates=self.ledger.deliveries - self.ledger.unique, errors=self._error_count(),
            acked_per_s=t.i_acked / interval, consumed_per_s=t.i_consumed / interval,
            produce_mb_per_s=t.i_acked_bytes / interval / 1e6,
            consume_mb_per_s=t.i_consumed_bytes / interval / 1e6,
            produce_p99_ms=t.i_produce.summary_ms()["p99"], e2e_p99_ms=t.i_e2e.summary_ms()["p99"],
            processes={n: (s.cpu_percent_last(), s.rss_mb_last()) for n, s in self._series()})

    def _error_count(self) -> int:
        t = self.tally
        return (self.ledger.error_count() + sum(t.consumer_errors.values())
                + t.decode_errors + t.header_mismatches + len(self.failures))

    # -----------------------------------------------------------------------------------------
    # the run

    def execute(self) -> None:
        """Run to the end (or to a second Ctrl-C); the numbers stay on this object."""
        ctx = multiprocessing.get_context("spawn")
        work_queue = ctx.Queue()
        start, stop_producers, stop_consumers = ctx.Event(), ctx.Event(), ctx.Event()
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._setup()
            self._spawn(work_queue, start, stop_producers, stop_consumers)
            self.phase = "starting"
            self._tick()  # the baseline CPU/RSS sample, before any load
            self._wait_ready(work_queue)
            self.load_start = self.now()
            self.phase = "producing"
            start.set()
            while not all(w.done for w in self.workers_of("producer")):
                if self.interrupts:
                    stop_producers.set()
                self._pump(work_queue, self.now() + TICK_S)
            self.produce_end = self.now()
            self.phase = "draining"
            self._last_delivery_change = self.now()
            while (self.ledger.outstanding > 0 and self.interrupts < 2
                   and not all(w.done for w in self.workers_of("consumer"))
                   and self.now() - self._last_delivery_change < self.profile.drain_timeout):
                self._pump(work_queue, self.now() + 0.25)
            self.phase = "stopping"
            stop_consumers.set()
            deadline = self.now() + STOP_TIMEOUT_S
            while not all(w.done for w in self.workers) and self.now() < deadline:
                self._pump(work_queue, min(deadline, self.now() + 0.25))
            self.drain_end = self.now()
            self._tick()
        finally:
            signal.signal(signal.SIGINT, previous)
            stop_producers.set()
            stop_consumers.set()
            self._reap(work_queue)
            self._delete_topics()
            self.phase = "done"

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        self.display.log("interrupted: stopping producers, then draining" if self.interrupts == 1
                         else "interrupted again: skipping the drain")

    def _wait_ready(self, work_queue: Any) -> None:
        """Every producer connected, every consumer in the group, every partition owned."""
        deadline = self.now() + STARTUP_TIMEOUT_S
        everything = {(t, p) for t in range(self.profile.topics)
                      for p in range(self.profile.partitions)}
        while True:
            if self.failures:
                raise SetupError("a worker failed to start: " + "; ".join(self.failures)
                                 + "\n" + "\n".join(self.notes[-1:]))
            owned = set().union(*self.assignment.values()) if self.assignment else set()
            if (len(self.ready) == self.profile.producers
                    and len(self.assignment) == self.profile.consumers
                    and owned >= everything):
                return
            if self.interrupts or self.now() > deadline:
                raise SetupError(
                    f"workers not ready after {STARTUP_TIMEOUT_S:.0f}s: producers ready "
                    f"{len(self.ready)}/{self.profile.producers}, consumers assigned "
                    f"{len(self.assignment)}/{self.profile.consumers}, partitions owned "
                    f"{len(owned & everything)}/{len(everything)}")
            self._pump(work_queue, self.now() + 0.1)

    def _reap(self, work_queue: Any) -> None:
        """Join every worker; whatever lingers is terminated, then killed."""
        deadline = time.monotonic() + 10
        for worker in self.workers:
            while worker.process.is_alive() and time.monotonic() < deadline:
                # Keep reading: a child blocks on exit until its queued reports are taken.
                with contextlib.suppress(queue.Empty):
                    self._handle(work_queue.get(timeout=0.05))
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
        work_queue.close()
        work_queue.cancel_join_thread()

    def _delete_topics(self) -> None:
        if self.options.keep_topics or not self._topics_created:
            return
        try:
            admin = self._admin()  # keep it referenced until the futures resolve
            futures = admin.delete_topics(list(self.topics), request_timeout=30)
            for topic, future in futures.items():
                try:
                    future.result(timeout=30)
                except Exception as exc:
                    self.notes.append(f"could not delete topic {topic}: {exc}")
        except Exception as exc:
            self.notes.append(f"could not delete topics: {exc}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
