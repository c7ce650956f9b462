"""KIP-848 consumer groups, sans-IO: the assignors, the reconciliation that never gives a
partition to two members, and the durable form."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from broker import consumer_group as cg
from broker.consumer_group import ConsumerGroup, ConsumerMember, MemberState

TOPICS = {f"t{i}": (uuid.UUID(int=i + 1), n) for i, n in enumerate([1, 3, 6, 8])}


@settings(max_examples=200, deadline=None)
@given(assignor=st.sampled_from(cg.ASSIGNORS),
       subscriptions=st.lists(st.sets(st.sampled_from(sorted(TOPICS)), min_size=1),
                              min_size=1, max_size=8))
def test_every_subscribed_partition_is_assigned_exactly_once(assignor, subscriptions):
    members = {f"m{i}": ConsumerMember(f"m{i}", subscribed_topic_names=tuple(sorted(s)))
               for i, s in enumerate(subscriptions)}
    target = cg.assign(assignor, members, TOPICS, {})
    owners: dict[tuple[uuid.UUID, int], str] = {}
    for member_id, parts in target.items():
        for topic_id, partitions in parts.items():
            topic = next(t for t, (i, _n) in TOPICS.items() if i == topic_id)
            assert topic in members[member_id].subscribed_topic_names
            for p in partitions:
                assert (topic_id, p) not in owners
                owners[(topic_id, p)] = member_id
    wanted = set().union(*subscriptions)
    assert set(owners) == {(TOPICS[t][0], p) for t in wanted for p in range(TOPICS[t][1])}


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 12))
def test_uniform_balances_within_one_when_all_subscribe_alike(count):
    members = {f"m{i}": ConsumerMember(f"m{i}", subscribed_topic_names=tuple(TOPICS))
               for i in range(count)}
    target = cg.assign(cg.UNIFORM, members, TOPICS, {})
    loads = [sum(len(p) for p in target[m].values()) for m in members]
    assert max(loads) - min(loads) <= 1


@settings(max_examples=200, deadline=None)
@given(before=st.integers(1, 9), after=st.integers(1, 9), seed=st.randoms())
def test_uniform_stays_within_one_and_sticky_after_members_change(before, after, seed):
    old = {f"m{i}": ConsumerMember(f"m{i}", subscribed_topic_names=tuple(TOPICS))
           for i in range(before)}
    current = cg.assign(cg.UNIFORM, old, TOPICS, {})
    # Some members stay, some go, some are new (names shuffled so it is not always a prefix).
    names = [f"m{i}" for i in range(max(before, after) + 3)]
    seed.shuffle(names)
    members = {m: ConsumerMember(m, subscribed_topic_names=tuple(TOPICS))
               for m in names[:after]}
    target = cg.assign(cg.UNIFORM, members, TOPICS, current)
    loads = {m: sum(len(p) for p in target[m].values()) for m in members}
    assert max(loads.values()) - min(loads.values()) <= 1
    assert sum(loads.values()) == sum(n for _i, n in TOPICS.values())
    base = min(loads.values())
    for m in members:  # a member that stays keeps what it can of what it had
        kept = sum(len(ps & target[m].get(t, frozenset()))
                   for t, ps in current.get(m, {}).items())
        had = sum(len(ps) for ps in current.get(m, {}).values())
        assert kept >= min(had, base)


def _group_of_two() -> tuple[ConsumerGroup, ConsumerMember, ConsumerMember]:
    topics = {"t": (uuid.UUID(int=1), 4)}
    group = ConsumerGroup("g", group_epoch=1, assignment_epoch=1, metadata=topics)
    first = group.members["a"] = ConsumerMember("a", subscribed_topic_names=("t",))
    group.target = cg.assign(cg.UNIFORM, group.members, topics, {})
    cg.reconcile(group, first, {}, 0.0)
    assert sum(len(p) for p in first.assigned.values()) == 4
    second = group.members["b"] = ConsumerMember("b", subscribed_topic_names=("t",))
    group.group_epoch = group.assignment_epoch = 2
    group.target = cg.assign(cg.UNIFORM, group.members, topics,
                             {m: x.assigned for m, x in group.members.items()})
    return group, first, second


def test_a_partition_moves_only_after_its_owner_revoked_it():
    group, first, second = _group_of_two()
    cg.reconcile(group, second, {}, 0.0)  # its target is still owned by the first
    assert second.assigned == {} and second.state == MemberState.UNRELEASED_PARTITIONS
    owned_before = dict(first.assigned)
    cg.reconcile(group, first, owned_before, 0.0)
    assert first.state == MemberState.UNREVOKED_PARTITIONS and first.member_epoch == 1
    cg.reconcile(group, second, {}, 0.0)
    assert second.assigned == {}  # the first has not said it gave them up
    cg.reconcile(group, first, first.assigned, 0.0)  # now it owns only what it keeps
    assert first.state == MemberState.STABLE and first.member_epoch == 2
    cg.reconcile(group, second, {}, 0.0)
    assert second.state == MemberState.STABLE and second.member_epoch == 2
    mine = {(t, p) for t, ps in first.assigned.items() for p in ps}
    theirs = {(t, p) for t, ps in second.assigned.items() for p in ps}
    assert not mine & theirs and len(mine | theirs) == 4


def test_the_durable_form_round_trips():
    group, first, _second = _group_of_two()
    cg.reconcile(group, first, first.assigned, 0.0)
    again = cg.group_from_json("g", cg.group_to_json(group), now=10.0, session_s=5.0)
    assert again.group_epoch == group.group_epoch and again.target == group.target
    assert again.members["a"].assigned == first.assigned
    assert again.members["a"].state == first.state
    assert again.members["a"].session_deadline == 15.0
