"""Consumer-group scenarios run the same way with confluent-kafka, kafka-python and aiokafka.

Each *member* is one real consumer in its own thread (or, for aiokafka, its own task on a shared
event loop thread). It processes what it polls, then commits synchronously (at-least-once with
commits after processing), and reports every rebalance callback to a shared ``Ledger``. The
ledger is the test's view of the group:

* ``owned`` is what each member's callbacks say it owns right now; handing a partition to a member
  while another still owns it is recorded as a violation (an eager or cooperative rebalance must
  revoke before it assigns).
* ``consumed`` is every record any member processed. A record processed twice is allowed only if
  a commit covering it failed (that is what at-least-once permits); anything else is a bug.

All members of a scenario share the client's default client id, as real deployments do: a
coordinator that tells members apart by client id fails here.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kelp_procs import Cluster

PARTITIONS = 6
# Kafka's default initial rebalance delay is 3 s; tests would spend most of their time in it.
GROUP_BROKER_ARGS = ["--group-initial-rebalance-delay-ms", "200"]
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 1000
WAIT_S = 45.0           # upper bound on any single wait for the group to settle
BATCH = 20              # records per poll
PROCESS_S = 0.01        # "processing" time per batch, so rebalances land mid-stream


# ---------------------------------------------------------------------------------------------
# clusters


def running_group_cluster(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A private broker + gateway with a short initial rebalance delay; logs shown on failure."""
    cluster = Cluster(workdir, broker_args=list(GROUP_BROKER_ARGS))
    try:
        cluster.start()
        yield cluster
    finally:
        dump_logs_if_failed(request, cluster)
        cluster.stop()


class LogMark:
    """Where each log ended when a test began, so a failure shows only that test's lines."""

    def __init__(self, cluster: Cluster, *, from_start: bool = False) -> None:
        self.cluster = cluster
        self.at = {} if from_start else {
            p.name: len(p.log_text()) for p in (cluster.broker, cluster.gateway)}

    def dump(self, limit: int = 6000) -> None:
        for proc in (self.cluster.broker, self.cluster.gateway):
            text = proc.log_text()[self.at.get(proc.name, 0):]
            print(f"----- {proc.name} log since test start ({proc.log_path}) -----\n"
                  f"{text[-limit:]}")


def call_failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


def dump_logs_if_failed(request: pytest.FixtureRequest, cluster: Cluster,
                        mark: LogMark | None = None) -> None:
    if call_failed(request):
        (mark or LogMark(cluster, from_start=True)).dump()


# ---------------------------------------------------------------------------------------------
# topics and records


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=15)


def produce_wave(bootstrap: str, topic: str, wave: str, per_partition: int,
                 partitions: int = PARTITIONS) -> set[bytes]:
    """Keyed records spread over every partition; returns the values, which are unique."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                         "message.send.max.retries": 50, "retry.backoff.ms": 100})
    failures: list[object] = []
    values: set[bytes] = set()
    for i in range(per_partition):
        for p in range(partitions):
            value = f"{wave}-{p}-{i}".encode()
            values.add(value)
            producer.produce(topic, key=f"k{p}-{i}".encode(), value=value, partition=p,
                             on_delivery=lambda err, _m: err and failures.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    assert not failures, failures[:3]
    return values


def committed_offsets(bootstrap: str, group: str, topic: str,
                      partitions: int = PARTITIONS) -> dict[int, int]:
    """OffsetFetch through the admin client (a neutral observer for every client library)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)])
    (future,) = admin.list_consumer_group_offsets([request], request_timeout=15).values()
    result = future.result(timeout=20)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def committed_via_consumer(bootstrap: str, group: str, topic: str,
                           partitions: int = PARTITIONS) -> dict[int, tuple[int, str | None]]:
    """OffsetFetch the way an application asks: Consumer.committed() (offset and metadata)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                   timeout=15)
        return {tp.partition: (tp.offset, tp.metadata) for tp in found}
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------------------
# the ledger


@dataclass
class Event:
    at: float
    member: str
    kind: str  # assign | revoke | lost | close
    partitions: tuple[int, ...]


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    consumed: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    owned: dict[str, set[int]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    commit_failures: list[str] = field(default_factory=list)
    allowed_duplicates: set[tuple[int, int]] = field(default_factory=set)
    cluster: Cluster | None = None  # if set, waits fail at once when a process has exited

    def assigned(self, member: str, partitions: Iterable[int]) -> None:
        parts = tuple(sorted(partitions))
        with self.lock:
            for p in parts:
                holders = [m for m, owned in self.owned.items() if m != member and p in owned]
                if holders:
                    self.violations.append(
                        f"{member} was assigned partition {p} while {holders} still owned it")
            self.owned.setdefault(member, set()).update(parts)
            self.events.append(Event(time.monotonic(), member, "assign", parts))

    def revoked(self, member: str, partitions: Iterable[int], kind: str = "revoke") -> None:
        parts = tuple(sorted(partitions))
        with self.lock:
            self.owned.setdefault(member, set()).difference_update(parts)
            self.events.append(Event(time.monotonic(), member, kind, parts))

    def record(self, member: str, batch: list[tuple[int, int, bytes]]) -> None:
        with self.lock:
            owned = self.owned.get(member, set())
            for p, offset, value in batch:
                if p not in owned:
                    self.violations.append(
                        f"{member} consumed partition {p} offset {offset} without owning it")
                self.consumed.append((p, offset, value, member))

    def snapshot(self) -> dict[str, frozenset[int]]:
        with self.lock:
            return {m: frozenset(o) for m, o in self.owned.items()}

    def consumed_values(self) -> set[bytes]:
        with self.lock:
            return {value for _p, _o, value, _m in self.consumed}

    def events_since(self, since: float) -> list[Event]:
        with self.lock:
            return [e for e in self.events if e.at >= since]

    def fail_fast(self) -> None:
        with self.lock:
            if self.errors:
                raise AssertionError("a consumer thread failed:\n" + "\n".join(self.errors))
        if self.cluster is not None:
            for proc in (self.cluster.broker, self.cluster.gateway):
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise AssertionError(f"the {proc.name} exited unexpectedly with "
                                         f"{proc.popen.returncode}:\n{proc.log_text()[-3000:]}")


# ---------------------------------------------------------------------------------------------
# members


class Member:
    """One consumer of a group. Subclasses supply the client; this class keeps the books."""

    client = "?"

    def __init__(self, name: str, ledger: Ledger, bootstrap: str, group: str, topic: str,
                 **options: object) -> None:
        self.name, self.ledger, self.bootstrap = name, ledger, bootstrap
        self.group, self.topic, self.options = group, topic, options
        self.stopping = threading.Event()
        self.reported: frozenset[int] | None = None  # the client's own assignment()
        self.member_id: str | None = None
        self._books = threading.Lock()
        self._positions: dict[int, int] = {}        # next offset to process, per partition
        self._pending: dict[int, list[int]] = {}    # processed, not yet committed

    # -- bookkeeping shared by every client

    def processed(self, batch: list[tuple[int, int, bytes]]) -> None:
        self.ledger.record(self.name, batch)
        with self._books:
            for p, offset, _value in batch:
                self._positions[p] = offset + 1
                self._pending.setdefault(p, []).append(offset)

    def to_commit(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        wanted = None if partitions is None else set(partitions)
        with self._books:
            return {p: pos for p, pos in self._positions.items()
                    if self._pending.get(p) and (wanted is None or p in wanted)}

    def commit_done(self, offsets: dict[int, int], error: BaseException | None) -> None:
        with self._books:
            if error is None:
                for p, pos in offsets.items():
                    self._pending[p] = [o for o in self._pending.get(p, []) if o >= pos]
                return
            uncertain = {(p, o) for p in offsets for o in self._pending.get(p, [])}
        with self.ledger.lock:
            self.ledger.allowed_duplicates |= uncertain
            self.ledger.commit_failures.append(f"{self.name}: {offsets}: {error!r}")

    def forget(self, partitions: Iterable[int]) -> None:
        with self._books:
            for p in partitions:
                self._positions.pop(p, None)
                self._pending.pop(p, None)

    def failed(self) -> None:
        with self.ledger.lock:
            self.ledger.errors.append(f"{self.client} {self.name}:\n{traceback.format_exc()}")

    # -- lifecycle, per client

    def start(self) -> Member:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what was processed, leave the group (if the client does), close."""
        raise NotImplementedError


class ThreadMember(Member):
    """A member polling in its own thread (confluent-kafka, kafka-python)."""

    def start(self) -> Member:
        self.thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} did not close within {timeout} s"

    def _thread_main(self) -> None:
        try:
            self.run()
        except BaseException:
            self.failed()

    def run(self) -> None:
        raise NotImplementedError


class ConfluentMember(ThreadMember):
    client = "confluent-kafka"

    def run(self) -> None:
        config = {"bootstrap.servers": self.bootstrap, "group.id": self.group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": SESSION_TIMEOUT_MS,
                  "heartbeat.interval.ms": HEARTBEAT_MS,
                  "error_cb": lambda err: self._client_error(err)}
        config.update(self.options)
        consumer = Consumer(config)
        try:
            consumer.subscribe([self.topic], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            while not self.stopping.is_set():
                messages = consumer.consume(BATCH, timeout=0.2)
                batch = []
                for m in messages:
                    if m.error() is None:
                        batch.append((m.partition(), m.offset(), m.value()))
                    else:
                        self._client_error(m.error())
                if batch:
                    self.processed(batch)
                    time.sleep(PROCESS_S)
                    self._commit(consumer, self.to_commit())
                self.reported = frozenset(tp.partition for tp in consumer.assignment())
                self.member_id = consumer.memberid()
            self._commit(consumer, self.to_commit())
            self.ledger.revoked(self.name, self.ledger.snapshot().get(self.name, ()), "close")
        finally:
            consumer.close()

    def _client_error(self, err: object) -> None:
        with self.ledger.lock:
            self.ledger.client_errors.append(f"{self.name}: {err}")

    def _commit(self, consumer: Consumer, offsets: dict[int, int]) -> None:
        if not offsets:
            return
        error: BaseException | None = None
        try:
            result = consumer.commit(offsets=[TopicPartition(self.topic, p, o)
                                              for p, o in offsets.items()],
                                     asynchronous=False)
            bad = [tp for tp in result or () if tp.error is not None]
            if bad:
                error = KafkaException(bad[0].error)
        except KafkaException as exc:
            error = exc
        self.commit_done(offsets, error)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.ledger.assigned(self.name, [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        self._commit(consumer, self.to_commit(parts))
        self.forget(parts)
        self.ledger.revoked(self.name, parts)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        self.forget(parts)
        self.ledger.revoked(self.name, parts, "lost")


class KafkaPythonMember(ThreadMember):
    client = "kafka-python"

    def run(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka import TopicPartition as KTopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        member = self

        class Listener(ConsumerRebalanceListener):
            # Runs on kafka-python 3's IO thread while our thread is inside poll(); it must not
            # block on the consumer (a sync commit here would deadlock), and need not: every
            # batch is committed before the next poll.
            def on_partitions_revoked(self, revoked):
                parts = [tp.partition for tp in revoked]
                member.forget(parts)
                member.ledger.revoked(member.name, parts)

            def on_partitions_assigned(self, assigned):
                member.ledger.assigned(member.name, [tp.partition for tp in assigned])

            def on_partitions_lost(self, lost):
                parts = [tp.partition for tp in lost]
                member.forget(parts)
                member.ledger.revoked(member.name, parts, "lost")

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 session_timeout_ms=SESSION_TIMEOUT_MS,
                                 heartbeat_interval_ms=HEARTBEAT_MS, **self.options)

        def commit(offsets: dict[int, int]) -> None:
            if not offsets:
                return
            error: BaseException | None = None
            try:
                consumer.commit({KTopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                                 for p, o in offsets.items()})
            except KafkaError as exc:
                error = exc
            self.commit_done(offsets, error)

        try:
            consumer.subscribe([self.topic], listener=Listener())
            while not self.stopping.is_set():
                polled = consumer.poll(timeout_ms=200, max_records=BATCH)
                batch = [(r.partition, r.offset, r.value)
                         for records in polled.values() for r in records]
                if batch:
                    self.processed(batch)
                    time.sleep(PROCESS_S)
                    commit(self.to_commit())
                self.reported = frozenset(tp.partition for tp in consumer.assignment())
            commit(self.to_commit())
            self.ledger.revoked(self.name, self.ledger.snapshot().get(self.name, ()), "close")
        finally:
            consumer.close(autocommit=False)


class AsyncioThread:
    """An asyncio event loop in a thread, shared by the aiokafka members of one scenario."""

    def __init__(self) -> None:
        # A plain asyncio loop, whatever policy trio-asyncio (imported by other tests in this
        # process) has installed: its loops cannot run in a thread of their own.
        self.loop = asyncio.SelectorEventLoop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aiokafka-loop",
                                       daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5) if tasks else None

        try:
            self.submit(cancel_rest()).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


class AiokafkaMember(Member):
    client = "aiokafka"

    def __init__(self, *args: object, loop: AsyncioThread, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.runner = loop

    def start(self) -> Member:
        self.future = self.runner.submit(self._main())
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.future.result(timeout)

    async def _main(self) -> None:
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
        from aiokafka import TopicPartition as ATopicPartition
        from aiokafka.errors import KafkaError

        member = self

        async def commit(offsets: dict[int, int]) -> None:
            if not offsets:
                return
            error: BaseException | None = None
            try:
                await consumer.commit({ATopicPartition(self.topic, p): o
                                       for p, o in offsets.items()})
            except KafkaError as exc:
                error = exc
            self.commit_done(offsets, error)

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                parts = [tp.partition for tp in revoked]
                await commit(member.to_commit(parts))  # the rebalance waits for this
                member.forget(parts)
                member.ledger.revoked(member.name, parts)

            async def on_partitions_assigned(self, assigned):
                member.ledger.assigned(member.name, [tp.partition for tp in assigned])

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    session_timeout_ms=SESSION_TIMEOUT_MS,
                                    heartbeat_interval_ms=HEARTBEAT_MS, **self.options)
        try:
            await consumer.start()
            consumer.subscribe([self.topic], listener=Listener())
            while not self.stopping.is_set():
                polled = await consumer.getmany(timeout_ms=200, max_records=BATCH)
                batch = [(r.partition, r.offset, r.value)
                         for records in polled.values() for r in records]
                if batch:
                    self.processed(batch)
                    await asyncio.sleep(PROCESS_S)
                    owned = {tp.partition for tp in consumer.assignment()}
                    await commit(self.to_commit(owned))
                self.reported = frozenset(tp.partition for tp in consumer.assignment())
            owned = {tp.partition for tp in consumer.assignment()}
            await commit(self.to_commit(owned))
            self.ledger.revoked(self.name, self.ledger.snapshot().get(self.name, ()), "close")
        except BaseException:
            self.failed()
            raise
        finally:
            await consumer.stop()


MemberFactory = Callable[..., Member]


def stop_all(members: Iterable[Member], timeout: float = 30.0) -> None:
    """Stop members in parallel (each close may wait for a rebalance of the rest)."""
    members = list(members)
    stoppers = [threading.Thread(target=_stop_quietly, args=(m, timeout)) for m in members]
    for s in stoppers:
        s.start()
    for s in stoppers:
        s.join(timeout + 5)


def _stop_quietly(member: Member, timeout: float) -> None:
    try:
        member.stop(timeout)
    except BaseException:
        member.failed()


# ---------------------------------------------------------------------------------------------
# waiting


def wait_until(condition: Callable[[], bool], what: str, ledger: Ledger | None = None,
               timeout: float = WAIT_S, describe: Callable[[], str] = lambda: "") -> float:
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if ledger is not None:
            ledger.fail_fast()
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}. {describe()}")


def stable_assignment(ledger: Ledger, members: list[Member]) -> dict[str, frozenset[int]] | None:
    """Each named member owns ≥1 partition, owners are disjoint and cover the topic, and every
    client's own assignment() agrees with its callbacks; otherwise None."""
    owned = ledger.snapshot()
    view = {m.name: owned.get(m.name, frozenset()) for m in members}
    if any(not parts for parts in view.values()):
        return None
    everything = [p for parts in view.values() for p in parts]
    if len(everything) != len(set(everything)) or set(everything) != set(range(PARTITIONS)):
        return None
    if any(m.reported != view[m.name] for m in members):
        return None
    others = {m: o for m, o in owned.items() if o and m not in view}
    if others:
        return None
    return view


def wait_stable(ledger: Ledger, members: list[Member], timeout: float = WAIT_S,
                ) -> dict[str, frozenset[int]]:
    found: dict[str, frozenset[int]] = {}

    def ready() -> bool:
        nonlocal found
        found = stable_assignment(ledger, members) or {}
        return bool(found)

    wait_until(ready, f"a stable assignment over {[m.name for m in members]}", ledger, timeout,
               lambda: f"owned={ledger.snapshot()} reported="
                       f"{ {m.name: m.reported for m in members} } "
                       f"recent events={ledger.events[-8:]}")
    return found


def wait_consumed(ledger: Ledger, expected: set[bytes], timeout: float = WAIT_S) -> None:
    def missing() -> set[bytes]:
        return expected - ledger.consumed_values()

    wait_until(lambda: not missing(), f"{len(expected)} records to be consumed", ledger,
               timeout, lambda: f"{len(missing())} missing, e.g. {sorted(missing())[:5]}; "
                                f"owned={ledger.snapshot()}")


def assert_exactly_once(ledger: Ledger, produced: set[bytes]) -> dict[str, int]:
    """Every produced record consumed; twice only where a covering commit failed."""
    ledger.fail_fast()
    with ledger.lock:
        consumed = list(ledger.consumed)
        allowed = set(ledger.allowed_duplicates)
        violations = list(ledger.violations)
    counts = collections.Counter((p, o) for p, o, _v, _m in consumed)
    values = {v for _p, _o, v, _m in consumed}
    duplicates = {key for key, n in counts.items() if n > 1}
    unexplained = sorted(duplicates - allowed)
    assert not violations, violations[:10]
    assert not (produced - values), f"skipped: {sorted(produced - values)[:10]}"
    assert not (values - produced), f"unexpected: {sorted(values - produced)[:10]}"
    who = collections.defaultdict(list)
    for p, o, _v, m in consumed:
        if (p, o) in unexplained:
            who[(p, o)].append(m)
    assert not unexplained, (f"{len(unexplained)} records consumed twice although every commit "
                             f"covering them succeeded, e.g. {dict(list(who.items())[:10])}")
    return {"consumed": len(consumed), "duplicates": len(duplicates),
            "commit_failures": len(ledger.commit_failures),
            "commit_errors": sorted({_error_name(f) for f in ledger.commit_failures})}


def _error_name(failure: str) -> str:
    for name in ("REBALANCE_IN_PROGRESS", "RebalanceInProgress", "ILLEGAL_GENERATION",
                 "IllegalGeneration", "UNKNOWN_MEMBER_ID", "UnknownMemberId", "CommitFailed"):
        if name in failure:
            return name
    return failure.split(": ", 2)[-1][:80]


def assert_unique_owners(assignment: dict[str, frozenset[int]]) -> None:
    parts = sorted(p for owned in assignment.values() for p in owned)
    assert parts == list(range(PARTITIONS)), assignment


# ---------------------------------------------------------------------------------------------
# the scenario every client runs


def leave_join_resume(cluster: Cluster, topic: str, make: MemberFactory,
                      per_partition: int = 60, *, eager: bool = True) -> dict[str, object]:
    """3 members → one leaves → one joins → all stop → two new members resume from commits.

    ``make(name, ledger, group)`` returns an unstarted member. With an eager protocol every
    commit in this scenario comes from a member of the current generation that has not yet
    rejoined (the group is Stable or PreparingRebalance), which Kafka accepts: so for eager
    clients any failed commit is reported as a coordinator problem.
    """
    bootstrap = cluster.bootstrap
    group = f"g-{topic}"
    create_topic(bootstrap, topic)
    ledger = Ledger(cluster=cluster)
    members: list[Member] = []
    produced: set[bytes] = set()
    problems: list[str] = []  # checked at the end, so that one run shows as much as possible
    try:
        # three members: every partition owned by exactly one
        members = [make(f"m{i}", ledger, group).start() for i in range(3)]
        first = wait_stable(ledger, members)
        assert_unique_owners(first)
        assert all(len(parts) == 2 for parts in first.values()), first
        produced |= produce_wave(bootstrap, topic, "a", per_partition)
        wait_consumed(ledger, produced)

        # one leaves while records are waiting: the other two take over all six partitions
        wave_b = produce_wave(bootstrap, topic, "b", per_partition)
        produced |= wave_b
        wait_until(lambda: len(ledger.consumed_values() & wave_b) >= 2 * BATCH,
                   "some of wave b to be consumed", ledger)
        leaving = members.pop(0)
        leaving.stop()
        second = wait_stable(ledger, members)
        assert_unique_owners(second)
        wait_consumed(ledger, produced)

        # a new member joins while records are waiting: partitions spread over three again
        produced |= produce_wave(bootstrap, topic, "c", per_partition)
        members.append(make("m3", ledger, group).start())
        third = wait_stable(ledger, members)
        assert_unique_owners(third)
        wait_consumed(ledger, produced)

        # everyone stops; commits must equal the log end of every partition
        stop_all(members)
        ledger.fail_fast()
        members = []
        ends = {p: 3 * per_partition for p in range(PARTITIONS)}
        committed = committed_offsets(bootstrap, group, topic)
        if committed != ends:
            problems.append(f"after every member stopped, committed {committed} != log ends "
                            f"{ends}")

        # new members resume exactly where the group committed
        produced |= produce_wave(bootstrap, topic, "d", per_partition)
        members = [make(f"r{i}", ledger, group).start() for i in range(2)]
        assert_unique_owners(wait_stable(ledger, members))
        wait_consumed(ledger, produced)
        stop_all(members)
        members = []
        summary = assert_exactly_once(ledger, produced)
        committed = committed_offsets(bootstrap, group, topic)
        if committed != {p: 4 * per_partition for p in range(PARTITIONS)}:
            problems.append(f"at the end, committed {committed}")
        if eager and ledger.commit_failures:
            problems.append(
                f"{len(ledger.commit_failures)} commits failed although each came from a "
                f"current member that had not rejoined yet (Kafka accepts those in Stable and "
                f"PreparingRebalance); they caused {summary['duplicates']} redeliveries: "
                f"{ledger.commit_failures[:4]}")
        assert not problems, "\n".join(problems)
        return summary
    finally:
        stop_all(members)
