"""The controller's placement and election rules (broker.placement), with properties."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.placement import (
    NO_LEADER,
    PartitionState,
    PlacementError,
    after_brokers_changed,
    assign_replicas,
    preferred_leader,
    rack_alternating,
    reassign,
    reassignment_step,
)

brokers_strategy = st.dictionaries(
    st.integers(0, 40), st.sampled_from([None, "a", "b", "c"]), min_size=1, max_size=12)


def test_rack_alternating_interleaves_racks() -> None:
    brokers = {0: "a", 1: "a", 2: "b", 3: "b", 4: "c"}
    assert rack_alternating(brokers) == [0, 2, 4, 1, 3]


def test_three_brokers_rf3_spread_leaders_evenly() -> None:
    assignment = assign_replicas(range(6), 3, {0: None, 1: None, 2: None})
    assert Counter(r[0] for r in assignment.values()) == {0: 2, 1: 2, 2: 2}
    assert all(sorted(r) == [0, 1, 2] for r in assignment.values())


def test_too_few_brokers_is_an_error() -> None:
    with pytest.raises(PlacementError):
        assign_replicas(range(1), 3, {0: None, 1: None})
    with pytest.raises(PlacementError):
        assign_replicas(range(1), 0, {0: None})


@given(brokers_strategy, st.integers(1, 4), st.integers(1, 30), st.integers(0, 50))
def test_assignment_properties(brokers, rf, partitions, start) -> None:
    if rf > len(brokers):
        with pytest.raises(PlacementError):
            assign_replicas(range(partitions), rf, brokers, start=start)
        return
    assignment = assign_replicas(range(partitions), rf, brokers, start=start)
    assert sorted(assignment) == list(range(partitions))
    racks = {brokers[b] or "" for b in brokers}
    for replicas in assignment.values():
        assert len(replicas) == rf == len(set(replicas))
        assert set(replicas) <= set(brokers)
        # As many racks as the partition can use.
        assert len({brokers[b] or "" for b in replicas}) == min(rf, len(racks))
    leaders = Counter(r[0] for r in assignment.values())
    # Leaders round-robin: no broker leads more than one more partition than another.
    if partitions >= len(brokers):
        assert max(leaders.values()) - min(leaders[b] for b in brokers) <= 1


def test_a_dead_leader_is_replaced_from_the_isr_in_replica_order() -> None:
    state = PartitionState((1, 2, 3), 1, 4, (1, 2, 3))
    after = after_brokers_changed(state, {2, 3})
    assert after == PartitionState((1, 2, 3), 2, 5, (2, 3))
    # A follower that dies only leaves the ISR; the epoch stays (followers truncate by it).
    assert after_brokers_changed(state, {1, 2}) == PartitionState((1, 2, 3), 1, 4, (1, 2))
    assert after_brokers_changed(state, {1, 2, 3}) is state


def test_an_out_of_sync_replica_never_leads_unless_unclean() -> None:
    state = PartitionState((1, 2, 3), 1, 0, (1,))
    offline = after_brokers_changed(state, {2, 3})
    assert offline.leader == NO_LEADER and offline.isr == (1,) and offline.leader_epoch == 1
    assert after_brokers_changed(offline, {2, 3}) is offline  # stays offline
    # The last in-sync replica returns: it leads again.
    assert after_brokers_changed(offline, {1, 2, 3}) == PartitionState((1, 2, 3), 1, 2, (1,))
    unclean = after_brokers_changed(state, {3, 2}, unclean=True)
    assert unclean.leader == 2 and unclean.isr == (2,)


@given(st.lists(st.integers(0, 6), min_size=1, max_size=5, unique=True),
       st.data(), st.sets(st.integers(0, 6)))
def test_election_properties(replicas, data, live) -> None:
    isr = data.draw(st.lists(st.sampled_from(replicas), min_size=1, unique=True))
    leader = data.draw(st.sampled_from(isr))
    state = PartitionState(tuple(replicas), leader, 3, tuple(b for b in replicas if b in isr))
    after = after_brokers_changed(state, live)
    PartitionState.decode(after.encode())  # always a consistent state
    if after.leader != NO_LEADER:
        assert after.leader in live and after.leader in state.isr  # never unclean
        assert set(after.isr) <= set(state.isr) & live
    else:
        assert not set(state.isr) & live
    assert after.leader_epoch == state.leader_epoch + (after.leader != state.leader)


def test_preferred_leader_election() -> None:
    state = PartitionState((1, 2, 3), 2, 5, (1, 2, 3))
    assert preferred_leader(state, {1, 2, 3}) == PartitionState((1, 2, 3), 1, 6, (1, 2, 3))
    assert preferred_leader(state, {2, 3}) is None  # the preferred replica is dead
    assert preferred_leader(PartitionState((1, 2, 3), 2, 5, (2, 3)), {1, 2, 3}) is None
    assert preferred_leader(PartitionState((1, 2, 3), 1, 5, (1, 2, 3)), {1, 2, 3}) is None


def test_states_round_trip_and_refuse_nonsense() -> None:
    state = PartitionState.new([3, 1, 2])
    assert state == PartitionState((3, 1, 2), 3, 0, (3, 1, 2))
    assert PartitionState.decode(state.encode()) == state
    for bad in (b'{"replicas": [], "leader": -1, "leader_epoch": 0, "isr": []}',
                b'{"replicas": [1], "leader": 2, "leader_epoch": 0, "isr": [1]}',
                b'{"replicas": [1], "leader": 1, "leader_epoch": 0, "isr": [1, 5]}',
                b"[]", b"{"):
        with pytest.raises((ValueError, KeyError, TypeError)):
            PartitionState.decode(bad)


def test_a_reassignment_adds_the_new_replicas_then_drops_the_old_once_they_are_in_sync():
    state = PartitionState((0, 1, 2), 0, 4, (0, 1, 2))
    asked = reassign(state, (1, 2, 3))
    assert (asked.target, asked.original, asked.adding, asked.removing) == (
        (1, 2, 3), (0, 1, 2), (3,), (0,))
    live = {0, 1, 2, 3}
    step = reassignment_step(asked, live)
    assert step.replicas == (0, 1, 2, 3) and step.isr == (0, 1, 2) and step.leader == 0
    assert reassignment_step(step, live) == step  # broker 3 not in sync yet: wait
    caught_up = replace(step, isr=(0, 1, 2, 3))
    done = reassignment_step(caught_up, live)
    # The leader was removed: the first in-sync target replica leads, in a new epoch.
    assert (done.replicas, done.isr, done.leader, done.leader_epoch) == ((1, 2, 3),
                                                                        (1, 2, 3), 1, 5)
    assert done.target is None and PartitionState.decode(done.encode()) == done


def test_a_cancelled_reassignment_goes_back_to_the_original_replicas():
    state = reassignment_step(reassign(PartitionState((0, 1), 1, 2, (0, 1)), (2, 3)),
                              {0, 1, 2, 3})
    assert state.replicas == (0, 1, 2, 3)
    back = reassign(state, None)
    assert (back.replicas, back.isr, back.leader, back.leader_epoch, back.target) == (
        (0, 1), (0, 1), 1, 2, None)
    assert PartitionState.decode(state.encode()) == state
    assert reassign(back, None) == back  # nothing in progress: nothing to cancel
