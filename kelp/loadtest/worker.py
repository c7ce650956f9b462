"""Producer and consumer processes: librdkafka (confluent-kafka), one client per process.

Each worker is started by the coordinator with the spawn start method (a fresh interpreter: no
inherited librdkafka threads or sockets) and talks to it through one multiprocessing queue of
tuples ``(kind, role, index, payload)``:

* ``ready``     producer connected (and, for Avro, found its schema's id); waits for ``start``.
* ``assigned`` / ``revoked``  a consumer's partitions changed: payload is [[topic index, p]...].
* ``stats``     every half second: what happened since the last report (counts, sequences,
                latency histogram buckets). Sequences travel as compact ``array``s.
* ``done``      final totals; the worker exits after this.
* ``fatal``     a traceback; the worker exits.

Producers stamp every record with (run, producer, seq, sent_ns) (see :mod:`records`), pace
themselves to the target rate (or run flat out against a bounded client queue), and measure
produce latency from their delivery callbacks. Consumers form one group over all topics, commit
synchronously when partitions are revoked (so a rebalance hands a partition over exactly where
this consumer stopped) and measure end-to-end latency against ``sent_ns``.

Workers ignore SIGINT: Ctrl-C goes to the coordinator, which stops them in order (producers
first, consumers after the drain) so that an interrupted run still ends with a verdict.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kelp.loadtest.profiles import Profile
from kelp.loadtest.records import (
    Identity,
    headers_for,
    headers_match,
    key_for,
    make_decoder,
    make_encoder,
    schema_id_of,
)
from kelp.loadtest.stats import Histogram

REPORT_S = 0.5
# librdkafka gives up on a record after this long and reports it failed: bounded, so a stuck
# broker shows up as errors within the run instead of the default five minutes later.
MESSAGE_TIMEOUT_MS = 30_000
# Records waiting in the client per producer. Unthrottled, latency is this queue's depth over
# the throughput (Little's law), so it should be as shallow as keeps kelp busy: measured on a
# 2-core machine, 5 000 gave the same throughput as 20 000 at half the latency; 1 000 halved it.
QUEUE_MAX = 5_000
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; pickled to the child by the spawn start method."""

    role: str                  # producer | consumer
    index: int
    run: int                   # the run's nonce, stamped in every record
    profile: Profile
    bootstrap: str
    registry: str | None
    topics: tuple[str, ...]
    group: str
    parent_pid: int


Report = Callable[[str, Any], None]


def main(spec: WorkerSpec, queue: Any, start: Any, stop: Any) -> None:
    """Process entry point (picklable, so spawn can find it by module and name)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def report(kind: str, payload: Any) -> None:
        queue.put((kind, spec.role, spec.index, payload))

    try:
        if spec.role == "producer":
            ProducerWorker(spec, report).run(start, stop)
        else:
            ConsumerWorker(spec, report).run(stop)
    except BaseException:
        report("fatal", traceback.format_exc())
    finally:
        # Let the queue's feeder thread flush before the interpreter exits.
        queue.close()
        queue.join_thread()


def _orphaned(spec: WorkerSpec) -> bool:
    """The coordinator is gone (killed): stop rather than load kelp forever."""
    return os.getppid() != spec.parent_pid


class ProducerWorker:
    def __init__(self, spec: WorkerSpec, report: Report) -> None:
        self.spec = spec
        self.report = report
        self.sent = 0
        self.acked = array("Q")
        self.failed: list[tuple[int, str]] = []
        self.acked_bytes = 0
        self.hist = Histogram()
        self.first_send_ns = 0
        self.last_ack_ns = 0
        self.last_report = time.monotonic()
        # Transactional runs: records delivered in the open transaction count as acknowledged
        # only once it commits; an aborted one's are reported failed ("aborted").
        self.in_txn: list[int] = []
        self.in_txn_bytes = 0
        self.txn_sent = 0
        self.transactions = 0

    def _config(self) -> dict[str, Any]:
        p = self.spec.profile
        transactional = {"transactional.id": f"kelp-loadtest-{self.spec.run}-"
                                             f"{self.spec.index}"} if p.transaction_records else {}
        return {**transactional,
            "bootstrap.servers": self.spec.bootstrap,
            "client.id": f"kelp-loadtest-producer-{self.spec.index}",
            "acks": p.acks,
            "enable.idempotence": p.idempotence,
            "compression.type": p.compression,
            "linger.ms": p.linger_ms,
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
            "queue.buffering.max.messages": QUEUE_MAX,
        }

    def run(self, start: Any, stop: Any) -> None:
        from confluent_kafka import Producer

        spec, profile = self.spec, self.spec.profile
        producer = Producer(self._config())
        if profile.transaction_records:
            producer.init_transactions(30)
            producer.begin_transaction()
        encode = make_encoder(profile.value, profile.size, spec.registry)
        # Warm up outside the measured window: connect, fetch metadata, and (Avro) look up the
        # schema id of every subject, which fails here if the schema was not registered first.
        producer.list_topics(timeout=15)
        for topic in spec.topics:
            encode(topic, Identity(spec.run, spec.index, 0, 0))
        self.report("ready", {"pid": os.getpid()})
        waited = time.monotonic()
        while not start.wait(0.1):
            producer.poll(0)
            if stop.is_set() or _orphaned(spec) or time.monotonic() - waited > READY_TIMEOUT_S:
                self.report("done", self._totals(producer, undelivered=0))
                return
        self._produce(producer, encode, stop)
        undelivered = self._flush(producer)
        self.report("done", self._totals(producer, undelivered))

    def _produce(self, producer: Any, encode: Callable[[str, Identity], bytes],
                 stop: Any) -> None:
        spec, profile = self.spec, self.spec.profile
        topics, rate = spec.topics, profile.rate
        started = time.monotonic()
        deadline = started + profile.duration
        self.first_send_ns = time.time_ns()
        while True:
            now = time.monotonic()
            if now >= deadline or stop.is_set():
                break
            if rate:
                # Pace by the clock, not by sleeps: after a stall the producer catches up in
                # bursts, so the achieved rate shows whether kelp kept up on average.
                due = int((now - started) * rate) - self.sent
                if due <= 0:
                    # librdkafka counts poll timeouts in whole milliseconds (0.9 ms is 0: a busy
                    # loop), so wait at least 2 ms; linger.ms batches at that scale anyway.
                    wait = (self.sent + 1) / rate - (now - started)
                    producer.poll(min(0.05, max(0.002, wait)))
                    self._maybe_report(now)
                    continue
                burst = min(due, 1000)
            else:
                burst = 1000
            for _ in range(burst):
                if len(producer) >= QUEUE_MAX - 1:
                    producer.poll(0.005)  # the client queue is full: wait for deliveries
                    break
                seq = self.sent
                topic = topics[seq % len(topics)]
                sent_ns = time.time_ns()
                ident = Identity(spec.run, spec.index, seq, sent_ns)
                value = encode(topic, ident)
                key = key_for(spec.index, seq) if profile.keys else None
                try:
                    producer.produce(
                        topic, value=value, key=key,
                        headers=headers_for(ident) if profile.headers else None,
                        on_delivery=functools.partial(self._delivered, seq, sent_ns,
                                                      len(value) + (len(key) if key else 0)))
                except BufferError:
                    # Full by bytes (queue.buffering.max.kbytes) rather than by count: the same
                    # sequence number is tried again once deliveries have made room.
                    producer.poll(0.005)
                    break
                self.sent += 1
                self.txn_sent += 1
                if profile.transaction_records and \
                        self.txn_sent >= profile.transaction_records:
                    self._end_transaction(producer)
                    break
            producer.poll(0)
            self._maybe_report(time.monotonic())

    def _end_transaction(self, producer: Any, *, last: bool = False) -> None:
        """Commit (or, every ``abort_every``-th time, abort) the open transaction and begin
        the next; the records in it become acknowledged, or failed as aborted."""
        from confluent_kafka import KafkaException

        profile = self.spec.profile
        self.transactions += 1
        abort = bool(profile.abort_every) and self.transactions % profile.abort_every == 0
        try:
            producer.flush(MESSAGE_TIMEOUT_MS / 1000)
            if abort:
                producer.abort_transaction(60)
            else:
                producer.commit_transaction(60)
        except KafkaException as exc:
            if exc.args[0].txn_requires_abort():
                producer.abort_transaction(60)
            abort = True
        if abort:
            self.failed.extend((seq, "aborted") for seq in self.in_txn)
        else:
            self.acked.extend(self.in_txn)
            self.acked_bytes += self.in_txn_bytes
        self.in_txn, self.in_txn_bytes, self.txn_sent = [], 0, 0
        if not last:
            producer.begin_transaction()

    def _flush(self, producer: Any) -> int:
        """Wait for every outstanding delivery report (bounded by librdkafka's message timeout);
        the count still queued after that is reported as undelivered."""
        if self.spec.profile.transaction_records:
            self._end_transaction(producer, last=True)
        limit = time.monotonic() + MESSAGE_TIMEOUT_MS / 1000 + 10
        while len(producer) and time.monotonic() < limit:
            producer.flush(0.5)
            self._maybe_report(time.monotonic())
        return len(producer)

    def _delivered(self, seq: int, sent_ns: int, nbytes: int, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append((seq, err.name()))
            return
        now = time.time_ns()
        if self.spec.profile.transaction_records:
            self.in_txn.append(seq)
            self.in_txn_bytes += nbytes
        else:
            self.acked.append(seq)
            self.acked_bytes += nbytes
        self.last_ack_ns = now
        self.hist.record((now - sent_ns) // 1000)

    def _maybe_report(self, now: float, *, force: bool = False) -> None:
        if not force and now - self.last_report < REPORT_S:
            return
        self.last_report = now
        buckets, max_us = self.hist.take()
        self.report("stats", {"sent": self.sent, "acked": self.acked, "failed": self.failed,
                              "bytes": self.acked_bytes, "hist": buckets, "hist_max": max_us,
                              "last_ns": self.last_ack_ns})
        self.acked, self.failed, self.acked_bytes = array("Q"), [], 0

    def _totals(self, producer: Any, undelivered: int) -> dict[str, Any]:
        self._maybe_report(time.monotonic(), force=True)
        return {"sent": self.sent, "undelivered": undelivered,
                "first_ns": self.first_send_ns, "last_ns": self.last_ack_ns}


class ConsumerWorker:
    def __init__(self, spec: WorkerSpec, report: Report) -> None:
        self.spec = spec
        self.report = report
        self.topic_index = {topic: i for i, topic in enumerate(spec.topics)}
        self.producers = array("I")
        self.seqs = array("Q")
        self.streams = array("I")
        self.bytes = 0
        self.hist = Histogram()
        self.errors: dict[str, int] = {}
        self.decode_errors = 0
        self.first_decode_error = ""
        self.header_mismatches = 0
        self.foreign = 0
        self.schema_ids: set[int] = set()
        self.last_ns = 0
        self.last_report = time.monotonic()

    def _config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.spec.bootstrap,
            "group.id": self.spec.group,
            "client.id": f"kelp-loadtest-consumer-{self.spec.index}",
            "auto.offset.reset": "earliest",
            # librdkafka stores a record's offset when it hands the record to us and commits
            # the stored offsets every second, on revoke (below) and on close: a partition that
            # moves to another member resumes right after the last record this one processed.
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            # Stated, though it is librdkafka's default: transactional runs rely on it.
            "isolation.level": "read_committed",
        }

    def run(self, stop: Any) -> None:
        from confluent_kafka import Consumer

        spec = self.spec
        decode = make_decoder(spec.profile.value, spec.registry)
        consumer = Consumer(self._config())
        consumer.subscribe(list(spec.topics), on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not stop.is_set() and not _orphaned(spec):
                # consume(n, timeout) waits for all n records or the timeout, which at low
                # rates would add up to the timeout to every latency: wait for the first record,
                # then take whatever else is already fetched without waiting.
                first = consumer.poll(0.2)
                if first is not None:
                    self._handle([first, *consumer.consume(num_messages=999, timeout=0)],
                                 decode)
                self._maybe_report(time.monotonic())
        finally:
            consumer.close()  # commits what was consumed and leaves the group
        self._maybe_report(time.monotonic(), force=True)
        self.report("done", {"last_ns": self.last_ns})

    def _handle(self, batch: list[Any], decode: Callable[[str, bytes], Identity]) -> None:
        now_ns = time.time_ns()   # when the batch reached us: the end of end-to-end
        run, partitions = self.spec.run, self.spec.profile.partitions
        check_headers = self.spec.profile.headers
        for message in batch:
            err = message.error()
            if err is not None:
                self._count_error(err.name())
                continue
            value, topic = message.value(), message.topic()
            try:
                ident = decode(topic, value)
            except Exception as exc:
                self.decode_errors += 1
                self.first_decode_error = self.first_decode_error or f"{type(exc).__name__}: {exc}"
                continue
            if ident.run != run:
                self.foreign += 1   # a record from an earlier run on a reused topic
                continue
            if check_headers and not headers_match(message.headers(), ident):
                self.header_mismatches += 1
            if len(self.schema_ids) < 16:
                schema_id = schema_id_of(value)
                if schema_id is not None:
                    self.schema_ids.add(schema_id)
            self.hist.record(max(0, now_ns - ident.sent_ns) // 1000)
            self.producers.append(ident.producer)
            self.seqs.append(ident.seq)
            self.streams.append(self.topic_index.get(topic, 0) * partitions + message.partition())
            key = message.key()
            self.bytes += len(value) + (len(key) if key else 0)
        self.last_ns = now_ns

    def _count_error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1

    def _partitions(self, partitions: list[Any]) -> list[list[int]]:
        return [[self.topic_index.get(tp.topic, -1), tp.partition] for tp in partitions]

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.report("assigned", self._partitions(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import KafkaError, KafkaException

        # Flush our accounting first, so the coordinator has seen every record we processed
        # before it can see the next owner's.
        self._maybe_report(time.monotonic(), force=True)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            name = error.name() if isinstance(error, KafkaError) else str(exc)
            if name != "_NO_OFFSET":  # _NO_OFFSET: nothing consumed since the last commit
                self._count_error(f"commit:{name}")
        self.report("revoked", self._partitions(partitions))

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._count_error("partitions_lost")
        self.report("revoked", self._partitions(partitions))

    def _maybe_report(self, now: float, *, force: bool = False) -> None:
        if not force and now - self.last_report < REPORT_S:
            return
        self.last_report = now
        buckets, max_us = self.hist.take()
        self.report("stats", {
            "producers": self.producers, "seqs": self.seqs, "streams": self.streams,
            "bytes": self.bytes, "hist": buckets, "hist_max": max_us, "errors": self.errors,
            "decode_errors": self.decode_errors, "first_decode_error": self.first_decode_error,
            "header_mismatches": self.header_mismatches, "foreign": self.foreign,
            "schema_ids": sorted(self.schema_ids), "last_ns": self.last_ns})
        self.producers, self.seqs, self.streams = array("I"), array("Q"), array("I")
        self.bytes, self.errors, self.decode_errors, self.header_mismatches = 0, {}, 0, 0
        self.foreign = 0
