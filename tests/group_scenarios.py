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

The members live in ``tests.group_members`` and the ledger in ``tests.group_ledger``; this module
holds the clusters, topics, waits, checks and the scenario itself.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.group_ledger import Ledger
from tests.group_members import BATCH, Member, MemberFactory, stop_all
from tests.kelp_procs import Cluster

PARTITIONS = 6
# Kafka's default initial rebalance delay is 3 s; tests would spend most of their time in it.
GROUP_BROKER_ARGS = ["--group-initial-rebalance-delay-ms", "200"]
WAIT_S = 45.0           # upper bound on any single wait for the group to settle


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
