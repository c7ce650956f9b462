"""Where partitions live and who leads them: the controller's rules, with no IO.

* ``assign_replicas``: replicas for new partitions, leaders spread evenly over the brokers and,
  when brokers name racks, each partition's replicas on as many racks as there are (Kafka's
  rack-aware assignment has the same aims; the walk here is kelp's own).
* ``PartitionState``: one partition's replicas, leader, leader epoch and in-sync replicas, as
  kept in etcd (JSON).
* ``after_brokers_changed``: what the controller writes when brokers die or return: a
  partition whose leader is gone gets the first live replica of its ISR (in replica order)
  with the leader epoch bumped; dead replicas leave the ISR; a partition with no live in-sync
  replica goes offline (leader -1) keeping its ISR, so the first of them to return leads again.
  Unclean election (a live replica outside the ISR, which may lack acknowledged records) only
  when asked for, as Kafka's ``unclean.leader.election.enable``.
* ``preferred_leader``: the ElectLeaders API's preferred election (the first replica, if live
  and in sync).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

NO_LEADER = -1


class PlacementError(ValueError):
    """The request cannot be placed (Kafka answers INVALID_REPLICATION_FACTOR)."""


def rack_alternating(brokers: Mapping[int, str | None]) -> list[int]:
    """Broker ids ordered so consecutive ones sit on different racks where possible: one from
    each rack in turn (racks and their brokers in id order); brokers without a rack form one
    rack of their own."""
    by_rack: dict[str, list[int]] = {}
    for broker_id in sorted(brokers):
        by_rack.setdefault(brokers[broker_id] or "", []).append(broker_id)
    queues = [by_rack[rack] for rack in sorted(by_rack)]
    ordered: list[int] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        ordered += [q[depth] for q in queues if depth < len(q)]
    return ordered


def assign_replicas(partitions: Iterable[int], replication_factor: int,
                    brokers: Mapping[int, str | None], *, start: int = 0) -> dict[int, list[int]]:
    """Replicas for each partition number (the first is the preferred leader).

    Leaders go round the brokers from ``start`` (pass the topic's existing partition count
    when adding partitions, so new leaders continue the rotation). Followers walk on from
    the leader, skipping brokers on racks the partition already uses until every rack has
    one, with a shift that grows every full round so that followers spread too.
    """
    ordered = rack_alternating(brokers)
    count = len(ordered)
    if replication_factor < 1:
        raise PlacementError(f"replication factor must be at least 1, got {replication_factor}")
    if replication_factor > count:
        raise PlacementError(f"replication factor {replication_factor} is larger than the "
                             f"{count} live brokers")
    racks = {broker_id: brokers[broker_id] or "" for broker_id in ordered}
    rack_count = len(set(racks.values()))
    assignment: dict[int, list[int]] = {}
    for partition in partitions:
        first = (partition + start) % count
        shift = (partition + start) // count  # followers move one more every full round
        chosen = [ordered[first]]
        used_racks = {racks[ordered[first]]}
        step = 1 + (shift % max(count - 1, 1))
        candidates = [ordered[(first + step + i) % count] for i in range(count)
                      if (first + step + i) % count != first]
        for broker_id in candidates:  # first, brokers on racks not yet used
            if len(chosen) == replication_factor:
                break
            if broker_id not in chosen and (racks[broker_id] not in used_racks
                                            or len(used_racks) == rack_count):
                chosen.append(broker_id)
                used_racks.add(racks[broker_id])
        for broker_id in candidates:  # then any broker, if racks ran out
            if len(chosen) == replication_factor:
                break
            if broker_id not in chosen:
                chosen.append(broker_id)
        assignment[partition] = chosen
    return assignment


@dataclass(frozen=True)
class PartitionState:
    replicas: tuple[int, ...]
    leader: int
    leader_epoch: int
    isr: tuple[int, ...]
    # A reassignment in progress (``reassignment_step``): the replicas asked for, and those
    # the partition had when it was asked (a cancel goes back to them).
    target: tuple[int, ...] | None = None
    original: tuple[int, ...] | None = None

    @classmethod
    def new(cls, replicas: Iterable[int]) -> PartitionState:
        """A new partition: led by its first replica, every replica in sync (all are empty)."""
        replicas = tuple(replicas)
        return cls(replicas, replicas[0], 0, replicas)

    def encode(self) -> bytes:
        value: dict[str, object] = {
            "replicas": list(self.replicas), "leader": self.leader,
            "leader_epoch": self.leader_epoch, "isr": list(self.isr)}
        if self.target is not None and self.original is not None:
            value.update(target=list(self.target), original=list(self.original))
        return json.dumps(value, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> PartitionState:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError(f"partition state is not an object: {value!r}")
        target = value.get("target")
        original = value.get("original")
        state = cls(tuple(int(b) for b in value["replicas"]), int(value["leader"]),
                    int(value["leader_epoch"]), tuple(int(b) for b in value["isr"]),
                    None if target is None else tuple(int(b) for b in target),
                    None if original is None or target is None
                    else tuple(int(b) for b in original))
        if not state.replicas or not set(state.isr) <= set(state.replicas) or (
                state.leader != NO_LEADER and state.leader not in state.isr) or (
                state.target is not None and not state.target):
            raise ValueError(f"inconsistent partition state {value!r}")
        return state

    @property
    def adding(self) -> tuple[int, ...]:
        if self.target is None or self.original is None:
            return ()
        return tuple(b for b in self.target if b not in self.original)

    @property
    def removing(self) -> tuple[int, ...]:
        if self.target is None or self.original is None:
            return ()
        return tuple(b for b in self.original if b not in self.target)

    def with_leader(self, leader: int, isr: Iterable[int]) -> PartitionState:
        """A new leader (or the same one with another ISR): the epoch moves only when the
        leader does, since followers truncate by it."""
        epoch = self.leader_epoch + (1 if leader != self.leader else 0)
        ordered_isr = tuple(b for b in self.replicas if b in set(isr))
        return replace(self, leader=leader, leader_epoch=epoch, isr=ordered_isr)


def after_brokers_changed(state: PartitionState, live: set[int], *,
                          unclean: bool = False) -> PartitionState:
    """The state a controller writes once ``live`` are the live brokers (may be unchanged)."""
    if state.leader != NO_LEADER and state.leader in live:
        survivors = [b for b in state.isr if b in live]
        if len(survivors) == len(state.isr):
            return state
        return state.with_leader(state.leader, survivors)  # dead followers leave the ISR
    in_sync = [b for b in state.replicas if b in state.isr and b in live]
    if in_sync:
        return state.with_leader(in_sync[0], in_sync)
    if unclean:
        live_replicas = [b for b in state.replicas if b in live]
        if live_replicas:  # data loss accepted: the ISR restarts from the new leader
            return state.with_leader(live_replicas[0], live_replicas[:1])
    if state.leader == NO_LEADER:
        return state
    # Offline: the ISR is kept (every member dead) so the first to return may lead again.
    return replace(state, leader=NO_LEADER, leader_epoch=state.leader_epoch + 1)


def preferred_leader(state: PartitionState, live: set[int]) -> PartitionState | None:
    """The state with the preferred (first) replica leading, or None if it cannot lead now
    (dead or out of sync) or already does."""
    preferred = state.replicas[0]
    if state.leader == preferred or preferred not in live or preferred not in state.isr:
        return None
    return state.with_leader(preferred, state.isr)


def reassign(state: PartitionState, target: tuple[int, ...] | None) -> PartitionState:
    """Start a reassignment to ``target`` (None: cancel the one in progress). The replicas
    move in ``reassignment_step``s as the new ones catch up."""
    if target is None:
        if state.original is None:
            return state
        return _settle(state, state.original)
    original = state.original if state.original is not None else state.replicas
    if target == original:
        return _settle(state, original)
    return replace(state, target=target, original=original)


def reassignment_step(state: PartitionState, live: set[int]) -> PartitionState:
    """What the controller writes next for a reassignment in progress (Kafka's order): first
    the new replicas join (as followers, outside the ISR, fetching from the leader); once every
    target replica is in the ISR, the partition becomes the target alone, its leader kept if it
    stays, else the first in-sync target replica (epoch bumped)."""
    if state.target is None:
        return state
    missing = tuple(b for b in state.target if b not in state.replicas)
    if missing:
        return replace(state, replicas=state.replicas + missing)
    if all(b in state.isr and b in live for b in state.target):
        return _settle(state, state.target)
    return state


def _settle(state: PartitionState, replicas: tuple[int, ...]) -> PartitionState:
    """The partition on exactly ``replicas``, nothing in progress."""
    isr = tuple(b for b in replicas if b in state.isr)
    settled = replace(state, replicas=replicas, isr=isr or state.isr, target=None,
                      original=None)
    if state.leader in isr:
        return replace(settled, isr=isr)
    if isr:
        return replace(settled.with_leader(isr[0], isr), replicas=replicas)
    # None of them in sync (a cancel before any caught up): keep serving where it is.
    return replace(state, replicas=tuple(dict.fromkeys(replicas + state.isr)), target=None,
                   original=None)
