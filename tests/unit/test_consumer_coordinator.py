"""KIP-848 heartbeats through the coordinator's rules (``ConsumerCoordination._heartbeat``,
sans-IO): epochs, fencing, static members, metadata changes, offset epoch checks and
coexistence with classic groups. A random sequence of members coming, going and acknowledging
never has a partition owned by two members, and settles with every partition owned once."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from broker import consumer_group as cg
from broker.consumer_coordinator import ConsumerCoordination
from broker.consumer_group import HeartbeatError, MemberState
from broker.consumer_heartbeat import Heartbeat
from broker.group_file import GroupFile
from broker.group_state import Group, State
from broker.groups import _default_group_config

T1, T2 = uuid.UUID(int=1), uuid.UUID(int=2)


class Coordination(ConsumerCoordination):
    def __init__(self, topics: dict[str, tuple[uuid.UUID, int]]) -> None:
        self.groups = {}
        self.consumer_groups = {}
        self.consumer_file = GroupFile(None)
        self.metadata = topics
        self.topics = lambda: self.metadata
        self.group_config = _default_group_config


def join(c: Coordination, member_id: str = "", *, instance_id: str | None = None,
         topics: tuple[str, ...] = ("t",), assignor: str | None = None, now: float = 0.0):
    return c._heartbeat(Heartbeat("g", member_id, 0, instance_id=instance_id,
                                  rebalance_timeout_ms=60_000,
                                  subscribed_topic_names=list(topics),
                                  server_assignor=assignor, owned={}), now)


def beat(c: Coordination, member_id: str, epoch: int, owned=None, now: float = 0.0,
         instance_id: str | None = None):
    return c._heartbeat(Heartbeat("g", member_id, epoch, owned=owned,
                                  instance_id=instance_id), now)


def count(assignment) -> int:
    return sum(len(p) for p in (assignment or {}).values())


def test_a_second_member_gets_partitions_only_after_the_first_revoked_them():
    c = Coordination({"t": (T1, 4)})
    first = join(c)
    assert first.error == ErrorCode.none and first.member_epoch == 1
    assert first.assignment == {T1: frozenset(range(4))}
    assert first.heartbeat_interval_ms == 5_000
    second = join(c, "b")
    assert second.member_id == "b" and count(second.assignment) == 0
    assert c.consumer_groups["g"].state == "Reconciling"
    # The first is told to give two back; its epoch stays until it has.
    told = beat(c, first.member_id, 1, owned=first.assignment)
    assert told.member_epoch == 1 and count(told.assignment) == 2
    assert count(beat(c, "b", second.member_epoch, owned={}).assignment) == 0
    done = beat(c, first.member_id, 1, owned=told.assignment)
    assert done.member_epoch == 2
    got = beat(c, "b", second.member_epoch, owned={})
    assert got.member_epoch == 2 and count(got.assignment) == 2
    assert not set(got.assignment[T1]) & set(told.assignment[T1])
    beat(c, "b", 2, owned=got.assignment)
    assert c.consumer_groups["g"].state == "Stable"


def test_wrong_epochs_and_unknown_members_are_refused():
    c = Coordination({"t": (T1, 2)})
    first = join(c)
    with pytest.raises(HeartbeatError) as fenced:
        beat(c, first.member_id, 7)
    assert fenced.value.code == ErrorCode.fenced_member_epoch
    with pytest.raises(HeartbeatError) as unknown:
        beat(c, "nobody", 1)
    assert unknown.value.code == ErrorCode.unknown_member_id
    assert c.consumer_commit_error("g", first.member_id, 0) == ErrorCode.stale_member_epoch
    assert c.consumer_commit_error("g", first.member_id, 1) == ErrorCode.none
    assert c.consumer_commit_error("g", "", -1) == ErrorCode.unknown_member_id  # not empty
    assert c.consumer_fetch_error("g", "", -1) == ErrorCode.none  # an admin fetch
    assert c.consumer_fetch_error("g", first.member_id, 0) == ErrorCode.stale_member_epoch
    assert c.consumer_fetch_error("g", "x", 1) == ErrorCode.unknown_member_id
    assert c.consumer_commit_error("classic", "m", 1) is None


@pytest.mark.parametrize("beat_args, code", [
    ({"server_assignor": "sticky"}, ErrorCode.unsupported_assignor),
    ({"subscribed_topic_regex": "(unclosed"}, ErrorCode.invalid_regular_expression),
    # Ones that can backtrack for minutes on a 249-character topic name are refused.
    ({"subscribed_topic_regex": "(a+)+b"}, ErrorCode.invalid_regular_expression),
    ({"subscribed_topic_regex": "(a|aa)*b"}, ErrorCode.invalid_regular_expression),
    ({"subscribed_topic_regex": "(x)\\1"}, ErrorCode.invalid_regular_expression),
    ({"subscribed_topic_regex": "x" * (cg.MAX_REGEX_LENGTH + 1)},
     ErrorCode.invalid_regular_expression),
    ({"rebalance_timeout_ms": -1}, ErrorCode.invalid_request),
    ({"subscribed_topic_names": None}, ErrorCode.invalid_request),
    ({"owned": {T1: frozenset({0})}}, ErrorCode.invalid_request),  # must join owning none
    ({"owned": None}, ErrorCode.invalid_request),
    ({"subscribed_topic_names": []}, ErrorCode.invalid_request),
    ({"instance_id": ""}, ErrorCode.invalid_request),
    ({"instance_id": "i" * 256}, ErrorCode.invalid_request),
    ({"subscribed_topic_names": ["t" * 250]}, ErrorCode.invalid_request),
    ({"subscribed_topic_names": ["t"] * (cg.MAX_SUBSCRIBED_TOPICS + 1)},
     ErrorCode.invalid_request),
    ({"member_epoch": -3}, ErrorCode.invalid_request),
    ({"member_epoch": 4}, ErrorCode.invalid_request),  # no member id
    ({"member_epoch": -2, "member_id": "m"}, ErrorCode.invalid_request),  # no instance id
])
def test_bad_joins_get_kafkas_errors(beat_args, code):
    c = Coordination({"t": (T1, 2)})
    fields = {"member_id": "", "member_epoch": 0, "rebalance_timeout_ms": 1000,
              "subscribed_topic_names": ["t"], "owned": {}, **beat_args}
    c.groups["g"] = Group("g", state=State.EMPTY)
    with pytest.raises(HeartbeatError) as refused:
        c._heartbeat(Heartbeat("g", **fields), 0.0)
    assert refused.value.code == code
    assert "g" in c.groups and "g" not in c.consumer_groups  # nothing converted


def test_owned_partitions_are_bounded():
    c = Coordination({"t": (T1, 2)})
    first = join(c)
    with pytest.raises(HeartbeatError) as refused:
        beat(c, first.member_id, first.member_epoch,
             owned={T1: frozenset(range(cg.MAX_ASSIGNED_PARTITIONS + 1))})
    assert refused.value.code == ErrorCode.invalid_request
    with pytest.raises(HeartbeatError) as topics_refused:  # topics listing no partition
        beat(c, first.member_id, first.member_epoch,
             owned={uuid.UUID(int=i): frozenset()
                    for i in range(cg.MAX_ASSIGNED_PARTITIONS + 1)})
    assert topics_refused.value.code == ErrorCode.invalid_request


def test_a_static_member_keeps_its_partitions_across_a_restart():
    c = Coordination({"t": (T1, 2)})
    first = join(c, instance_id="i1")
    epoch_before = c.consumer_groups["g"].group_epoch
    with pytest.raises(HeartbeatError) as in_use:
        join(c, "other", instance_id="i1")
    assert in_use.value.code == ErrorCode.unreleased_instance_id
    left = beat(c, first.member_id, cg.LEAVE_STATIC, instance_id="i1")
    assert left.member_epoch == cg.LEAVE_STATIC
    back = join(c, "new-id", instance_id="i1")
    assert back.member_id == "new-id" and back.member_epoch == first.member_epoch
    assert back.assignment == first.assignment
    assert c.consumer_groups["g"].group_epoch == epoch_before  # no rebalance


def test_partition_growth_and_regex_subscriptions_reassign():
    c = Coordination({"t": (T1, 2), "other": (T2, 1)})
    first = join(c)
    c.metadata = {"t": (T1, 4), "other": (T2, 1)}
    grown = beat(c, first.member_id, first.member_epoch, owned=first.assignment)
    assert grown.member_epoch == first.member_epoch + 1 and count(grown.assignment) == 4
    regex = c._heartbeat(Heartbeat("g", first.member_id, grown.member_epoch,
                                   subscribed_topic_regex="o.*", owned=grown.assignment), 0.0)
    assert regex.assignment[T2] == frozenset({0})


def test_sessions_expire_and_classic_groups_coexist():
    c = Coordination({"t": (T1, 2)})
    c.groups["classic"] = Group("classic", state=State.EMPTY)
    converted = c._heartbeat(Heartbeat("classic", "", 0, rebalance_timeout_ms=1000,
                                       subscribed_topic_names=["t"], owned={}), 0.0)
    assert converted.error == ErrorCode.none and "classic" not in c.groups
    assert c.join_refused("classic")  # it has a member now
    busy = Group("busy", state=State.STABLE)
    busy.members["m"] = object()  # type: ignore[assignment]
    c.groups["busy"] = busy
    with pytest.raises(HeartbeatError) as refused:
        c._heartbeat(Heartbeat("busy", "", 0, rebalance_timeout_ms=1000,
                               subscribed_topic_names=["t"], owned={}), 0.0)
    assert refused.value.code == ErrorCode.group_id_not_found
    c.groups["empty"] = Group("empty", state=State.EMPTY)
    for epoch in (3, cg.LEAVE):  # only a join converts an empty classic group
        with pytest.raises(HeartbeatError) as not_consumer:
            c._heartbeat(Heartbeat("empty", "m", epoch, owned={}), 0.0)
        assert not_consumer.value.code == ErrorCode.group_id_not_found
    assert "empty" in c.groups and "empty" not in c.consumer_groups
    with pytest.raises(HeartbeatError) as missing:
        c._heartbeat(Heartbeat("missing", "m", 3, owned={}), 0.0)
    assert missing.value.code == ErrorCode.group_id_not_found
    import trio

    async def expire() -> None:
        await c.expire_consumer_members(46.0)  # default session: 45 s
    trio.run(expire)
    assert not c.consumer_groups["classic"].members
    assert not c.join_refused("classic") and "classic" not in c.consumer_groups


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["join", "leave", "ack", "grow"]),
                                st.integers(0, 4)), max_size=30),
       assignor=st.sampled_from(cg.ASSIGNORS))
def test_no_partition_is_ever_owned_twice_and_the_group_settles(steps, assignor):
    c = Coordination({"t": (T1, 3), "u": (T2, 5)})
    # What each live member believes it owns (it acknowledges what it was last told).
    owns: dict[str, dict] = {}
    epochs: dict[str, int] = {}

    def ack(member_id: str) -> None:
        result = beat(c, member_id, epochs[member_id], owned=owns[member_id])
        epochs[member_id] = result.member_epoch
        if result.assignment is not None:
            owns[member_id] = result.assignment

    for action, index in steps:
        member_id = f"m{index}"
        if action == "join" and member_id not in owns:
            result = join(c, member_id, topics=("t", "u"), assignor=assignor)
            owns[member_id], epochs[member_id] = result.assignment or {}, result.member_epoch
        elif action == "leave" and member_id in owns:
            beat(c, member_id, cg.LEAVE)
            del owns[member_id], epochs[member_id]
        elif action == "ack" and member_id in owns:
            ack(member_id)
        elif action == "grow":
            c.metadata = {t: (i, n + 1) for t, (i, n) in c.metadata.items()}
        seen: set = set()
        for parts in owns.values():
            mine = {(t, p) for t, ps in parts.items() for p in ps}
            assert not mine & seen
            seen |= mine
    for _ in range(4):  # every member acknowledging: revoke, then release, then assign
        for member_id in sorted(owns):
            ack(member_id)
    group = c.consumer_groups.get("g")
    if owns:
        owned = [(t, p) for parts in owns.values() for t, ps in parts.items() for p in ps]
        every = [(i, p) for i, n in c.metadata.values() for p in range(n)]
        assert sorted(owned) == sorted(every)
        assert group is not None and group.state == "Stable"
        assert all(m.state == MemberState.STABLE for m in group.members.values())


def test_the_state_file_survives_a_restart_and_damage(tmp_path):
    import trio

    path = tmp_path / "consumer-groups.json"

    async def run() -> None:
        c = Coordination({"t": (T1, 2)})
        c.consumer_file = GroupFile(path)
        first = await c.consumer_heartbeat(Heartbeat(
            "g", "", 0, rebalance_timeout_ms=1000, subscribed_topic_names=["t"], owned={}))
        again = Coordination({"t": (T1, 2)})
        again.consumer_file = GroupFile(path)
        again.load_consumer_groups()
        member = again.consumer_groups["g"].members[first.member_id]
        assert member.member_epoch == first.member_epoch
        assert member.assigned == first.assignment
        path.write_text('{"g": {"group_epoch": "x"}, "h": 1}')
        damaged = Coordination({"t": (T1, 2)})
        damaged.consumer_file = GroupFile(path)
        damaged.load_consumer_groups()  # each damaged group skipped, the broker starts
        assert damaged.consumer_groups == {}
        path.write_text("{not json")
        damaged.load_consumer_groups()
        assert not path.exists() and path.with_name(path.name + ".damaged").exists()

    trio.run(run)


def test_empty_groups_lose_offsets_after_retention_then_go():
    import trio

    class Store:
        def __init__(self) -> None:
            self.groups = {"g": {("t", 0): 5}}

        def get(self, group_id):
            return self.groups.get(group_id, {})

        async def write(self, group_id, changes):
            for where, value in changes.items():
                if value is None:
                    self.groups.get(group_id, {}).pop(where, None)

    c = Coordination({"t": (T1, 1)})
    c.store, c.offsets_retention_ms = Store(), 60_000
    first = join(c)
    beat(c, first.member_id, cg.LEAVE)
    group = c.consumer_groups["g"]
    trio.run(c.expire_empty_consumer_groups)
    assert "g" in c.consumer_groups and c.store.get("g")  # empty, but within retention
    group.empty_since_ms -= 61_000
    trio.run(c.expire_empty_consumer_groups)
    assert "g" in c.consumer_groups and not c.store.get("g")  # offsets gone, group listed
    group.empty_since_ms -= 600_000
    trio.run(c.expire_empty_consumer_groups)
    assert "g" not in c.consumer_groups


def test_a_member_that_never_revokes_is_removed_after_its_rebalance_timeout():
    import trio

    c = Coordination({"t": (T1, 2)})
    first = join(c)  # rebalance timeout 60 s
    second = join(c, "b", now=1.0)
    told = beat(c, first.member_id, first.member_epoch, owned=first.assignment, now=2.0)
    assert count(told.assignment) == 1  # must give one back, and never does
    for now in (30.0, 55.0):  # it keeps heartbeating, so its session never ends
        beat(c, first.member_id, first.member_epoch, owned=first.assignment, now=now)
        beat(c, "b", second.member_epoch, owned={}, now=now)

    async def expire(now: float) -> None:
        await c.expire_consumer_members(now)
    trio.run(expire, 61.0)
    assert c.consumer_groups["g"].members.get(first.member_id) is not None
    trio.run(expire, 62.5)  # 60 s after it was told to revoke
    assert first.member_id not in c.consumer_groups["g"].members
    got = beat(c, "b", second.member_epoch, owned={}, now=63.0)
    assert count(got.assignment) == 2
