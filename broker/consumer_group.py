"""KIP-848 consumer groups, sans-IO: the group and member epochs, server-side assignment and
the reconciliation rules (``broker.consumer_coordinator`` runs it for the broker).

A member heartbeats with its subscription and the partitions it owns; the coordinator answers
with its member epoch and the partitions it may own now. When the members or the metadata of
their topics change, the group epoch rises and the assignor computes a new target assignment.
Each member then moves to its target in steps that never give a partition to two members: it
first revokes what it must give up (its epoch stays until it has), and only then gets
partitions, and only those no other member still owns.
"""

from __future__ import annotations

import functools
import re
import uuid
from dataclasses import dataclass, field
from enum import Enum

# The regex parser, to see a pattern's structure before it is ever matched (sre_parse's
# public name is deprecated; the module is the same).
from re import _constants as re_constants  # type: ignore[attr-defined]
from re import _parser as re_parser  # type: ignore[attr-defined]

from kio.schema.errors import ErrorCode

JOIN, LEAVE, LEAVE_STATIC = 0, -1, -2
UNIFORM, RANGE = "uniform", "range"
ASSIGNORS = (UNIFORM, RANGE)
MAX_MEMBERS = 1000  # per group, as Kafka's group.consumer.max.size default
MAX_SUBSCRIBED_TOPICS = 10_000
MAX_REGEX_LENGTH = 1024
MAX_ASSIGNED_PARTITIONS = 100_000  # owned by, or assigned to, one member

# topic id -> partitions; what a member owns, is assigned or is targeted.
Assignment = dict[uuid.UUID, frozenset[int]]


class MemberState(Enum):
    STABLE = "stable"
    UNREVOKED_PARTITIONS = "unrevoked_partitions"  # must give some back first
    UNRELEASED_PARTITIONS = "unreleased_partitions"  # waits for others to give some up


class HeartbeatError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ConsumerMember:
    member_id: str
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topic_names: tuple[str, ...] = ()
    subscribed_topic_regex: str | None = None
    server_assignor: str | None = None
    rebalance_timeout_ms: int = 300_000
    member_epoch: int = 0
    previous_member_epoch: int = -1
    state: MemberState = MemberState.STABLE
    assigned: Assignment = field(default_factory=dict)  # what it may own now
    revoking: Assignment = field(default_factory=dict)  # what it must give back
    session_deadline: float = 0.0
    revoke_deadline: float | None = None
    last_sent: Assignment | None = None  # the assignment it was last told
    owned: Assignment = field(default_factory=dict)  # what it last said it owns


@dataclass
class ConsumerGroup:
    group_id: str
    group_epoch: int = 0
    assignment_epoch: int = 0
    members: dict[str, ConsumerMember] = field(default_factory=dict)
    target: dict[str, Assignment] = field(default_factory=dict)
    # The subscribed topics' (id, partition count) the target was computed from.
    metadata: dict[str, tuple[uuid.UUID, int]] = field(default_factory=dict)
    empty_since_ms: int = 0  # wall clock, for offset retention; a restart starts it again
    # (group epoch, every topic, the topics its members subscribe to) as last resolved.
    subscribed_cache: tuple[int, dict[str, tuple[uuid.UUID, int]], set[str]] | None = field(
        default=None, compare=False, repr=False)

    @property
    def state(self) -> str:
        """Kafka's consumer group states (as ListGroups and ConsumerGroupDescribe name them)."""
        if not self.members:
            return "Empty"
        if self.assignment_epoch < self.group_epoch:
            return "Assigning"
        if any(m.member_epoch != self.assignment_epoch or m.state != MemberState.STABLE
               for m in self.members.values()):
            return "Reconciling"
        return "Stable"

    def assignor(self) -> str:
        chosen = [m.server_assignor for m in self.members.values() if m.server_assignor]
        return max(set(chosen), key=chosen.count) if chosen else UNIFORM


def subscribed(member: ConsumerMember, topics: dict[str, tuple[uuid.UUID, int]]) -> list[str]:
    """The topics (that exist) a member subscribes to, by name or by its regex (matching the
    whole name, as Kafka's RE2J ``matches``; ``topics`` holds no internal topic)."""
    names = set(member.subscribed_topic_names) & set(topics)
    if member.subscribed_topic_regex:
        names |= _matching(member.subscribed_topic_regex, tuple(topics))
    return sorted(names)


@functools.lru_cache(maxsize=256)
def _matching(regex: str, names: tuple[str, ...]) -> frozenset[str]:
    # Every heartbeat resolves its group's subscriptions: members sharing a regex, and
    # heartbeats while the topics stay the same, match each name once.
    pattern = re.compile(regex)
    return frozenset(t for t in names if pattern.fullmatch(t))


def check_regex(regex: str) -> None:
    """Kafka matches with RE2J, which never backtracks; Python's ``re`` does, so a hostile
    pattern such as ``(a+)+b`` could hold the broker for minutes on one topic name. Patterns
    that can backtrack badly (a repeat inside a repeat, alternatives under a repeat, more
    than three open-ended repeats) and ones RE2 refuses too (back references, look-arounds)
    are INVALID_REGULAR_EXPRESSION."""
    if len(regex) > MAX_REGEX_LENGTH:
        raise HeartbeatError(ErrorCode.invalid_regular_expression,
                             f"SubscribedTopicRegex longer than {MAX_REGEX_LENGTH}")
    try:
        parsed = re_parser.parse(regex)
    except re.error as exc:
        raise HeartbeatError(ErrorCode.invalid_regular_expression,
                             f"SubscribedTopicRegex {regex!r} is not valid: {exc}") from None
    repeats = [0]
    if _may_backtrack(list(parsed), inside_repeat=False, repeats=repeats) or repeats[0] > 3:
        raise HeartbeatError(ErrorCode.invalid_regular_expression,
                             f"SubscribedTopicRegex {regex!r} is not supported: nested or "
                             "alternating repeats, back references and look-arounds are "
                             "refused (they can take exponential time)")


_REPEATS = {re_constants.MAX_REPEAT, re_constants.MIN_REPEAT,
            getattr(re_constants, "POSSESSIVE_REPEAT", re_constants.MAX_REPEAT)}
_REFUSED = {re_constants.GROUPREF, re_constants.GROUPREF_EXISTS, re_constants.ASSERT,
            re_constants.ASSERT_NOT}


def _may_backtrack(items: list, *, inside_repeat: bool, repeats: list[int]) -> bool:
    for op, value in items:
        if op in _REFUSED:
            return True
        if op in _REPEATS:
            _low, high, sub = value
            if high > 1:
                if inside_repeat:
                    return True
                repeats[0] += 1
            if _may_backtrack(list(sub), inside_repeat=inside_repeat or high > 1,
                              repeats=repeats):
                return True
        elif op == re_constants.BRANCH:
            if inside_repeat:
                return True
            if any(_may_backtrack(list(b), inside_repeat=False, repeats=repeats)
                   for b in value[1]):
                return True
        elif op == re_constants.SUBPATTERN and _may_backtrack(
                list(value[-1]), inside_repeat=inside_repeat, repeats=repeats):
            return True
    return False


# -- assignors ------------------------------------------------------------------------------

def assign(assignor: str, members: dict[str, ConsumerMember],
           topics: dict[str, tuple[uuid.UUID, int]],
           current: dict[str, Assignment]) -> dict[str, Assignment]:
    """The target assignment: every partition of a subscribed topic to exactly one of the
    members subscribed to it."""
    wanted: dict[str, list[str]] = {m: subscribed(member, topics)
                                    for m, member in members.items()}
    out: dict[str, dict[uuid.UUID, set[int]]] = {m: {} for m in members}
    if assignor == RANGE:
        for topic, (topic_id, count) in sorted(topics.items()):
            takers = sorted(m for m, names in wanted.items() if topic in names)
            if not takers:
                continue
            per, extra = divmod(count, len(takers))
            start = 0
            for index, member_id in enumerate(takers):
                size = per + (1 if index < extra else 0)
                if size:
                    out[member_id].setdefault(topic_id, set()).update(
                        range(start, start + size))
                start += size
    else:
        _uniform(wanted, topics, current, out)
    return {m: {t: frozenset(p) for t, p in parts.items() if p} for m, parts in out.items()}


def _uniform(wanted: dict[str, list[str]], topics: dict[str, tuple[uuid.UUID, int]],
             current: dict[str, Assignment],
             out: dict[str, dict[uuid.UUID, set[int]]]) -> None:
    """Spread partitions evenly over the members subscribed to them, keeping a partition
    where it is when that does not unbalance (sticky, so a rebalance moves few)."""
    load = dict.fromkeys(wanted, 0)
    takers_of = {topic: [m for m, names in wanted.items() if topic in names] for topic in topics}
    every = [(topic, topics[topic][0], p) for topic in sorted(topics) if takers_of[topic]
             for p in range(topics[topic][1])]
    # Each member's quota: an equal share, one more for the first ``extra`` that reach it.
    # Keeping more than that would leave a newcomer short by two or more.
    subscribers = [m for m in wanted if wanted[m]]
    base, extra = divmod(len(every), max(1, len(subscribers)))
    owner_before = {(t, p): m for m, parts in current.items() if m in wanted
                    for t, ps in parts.items() for p in ps}
    unplaced = []
    for topic, topic_id, p in every:
        previous = owner_before.get((topic_id, p))
        if previous is not None and topic in wanted[previous] and (
                load[previous] < base or (load[previous] == base and extra > 0)):
            if load[previous] == base:
                extra -= 1
            out[previous].setdefault(topic_id, set()).add(p)
            load[previous] += 1
        else:
            unplaced.append((topic, topic_id, p))
    for topic, topic_id, p in unplaced:
        takers = takers_of[topic]
        if not takers:
            continue
        member_id = min(takers, key=lambda m: (load[m], m))
        out[member_id].setdefault(topic_id, set()).add(p)
        load[member_id] += 1


# -- reconciliation -------------------------------------------------------------------------

def owned_elsewhere(group: ConsumerGroup, member_id: str) -> set[tuple[uuid.UUID, int]]:
    """Partitions other members still own (assigned to them, or being revoked by them)."""
    taken = set()
    for other_id, other in group.members.items():
        if other_id == member_id:
            continue
        for parts in (other.assigned, other.revoking):
            taken.update((t, p) for t, ps in parts.items() for p in ps)
    return taken


def reconcile(group: ConsumerGroup, member: ConsumerMember,
              owned: Assignment | None, now: float) -> None:
    """Move ``member`` toward its target as far as is safe now."""
    target = group.target.get(member.member_id, {})
    if member.state == MemberState.UNREVOKED_PARTITIONS:
        still = {(t, p) for t, ps in (owned or {}).items() for p in ps}
        revoking = {(t, p) for t, ps in member.revoking.items() for p in ps}
        if owned is None or still & revoking:
            return  # not yet: it keeps its epoch until it has given them back
        member.revoking = {}
        member.revoke_deadline = None
    keep = {t: ps & target.get(t, frozenset()) for t, ps in member.assigned.items()}
    keep = {t: ps for t, ps in keep.items() if ps}
    revoke = {t: ps - target.get(t, frozenset()) for t, ps in member.assigned.items()}
    revoke = {t: ps for t, ps in revoke.items() if ps}
    if revoke:
        member.assigned, member.revoking = keep, revoke
        member.state = MemberState.UNREVOKED_PARTITIONS
        member.revoke_deadline = now + member.rebalance_timeout_ms / 1000
        return
    taken = owned_elsewhere(group, member.member_id)
    assigned = {t: set(ps) for t, ps in keep.items()}
    waiting = False
    for topic_id, parts in target.items():
        for p in parts:
            if (topic_id, p) in taken:
                waiting = True
            else:
                assigned.setdefault(topic_id, set()).add(p)
    member.assigned = {t: frozenset(ps) for t, ps in assigned.items() if ps}
    if member.member_epoch != group.assignment_epoch:
        member.previous_member_epoch = member.member_epoch
        member.member_epoch = group.assignment_epoch
    member.state = (MemberState.UNRELEASED_PARTITIONS if waiting else MemberState.STABLE)


# -- durable form ---------------------------------------------------------------------------
# The coordinator keeps every group's epochs, members and assignments in a file so that a
# broker restart neither loses them nor gives a partition to a new member while an old one
# still owns it (Kafka keeps the same in its offsets topic).

def _parts_json(assignment: Assignment) -> dict[str, list[int]]:
    return {str(t): sorted(p) for t, p in assignment.items()}


def _parts(value: dict[str, list[int]]) -> Assignment:
    return {uuid.UUID(t): frozenset(int(p) for p in ps) for t, ps in value.items()}


def group_to_json(group: ConsumerGroup) -> dict[str, object]:
    return {
        "group_epoch": group.group_epoch, "assignment_epoch": group.assignment_epoch,
        "metadata": {t: [str(i), n] for t, (i, n) in group.metadata.items()},
        "target": {m: _parts_json(a) for m, a in group.target.items()},
        "members": [{
            "member_id": m.member_id, "instance_id": m.instance_id, "rack_id": m.rack_id,
            "client_id": m.client_id, "client_host": m.client_host,
            "topics": list(m.subscribed_topic_names), "regex": m.subscribed_topic_regex,
            "assignor": m.server_assignor, "rebalance_timeout_ms": m.rebalance_timeout_ms,
            "epoch": m.member_epoch, "previous_epoch": m.previous_member_epoch,
            "state": m.state.value, "assigned": _parts_json(m.assigned),
            "revoking": _parts_json(m.revoking), "owned": _parts_json(m.owned)}
            for m in group.members.values()]}


def group_from_json(group_id: str, value: dict, now: float,  # type: ignore[type-arg]
                    session_s: float) -> ConsumerGroup:
    group = ConsumerGroup(group_id, int(value["group_epoch"]), int(value["assignment_epoch"]))
    group.metadata = {t: (uuid.UUID(i), int(n)) for t, (i, n) in value["metadata"].items()}
    group.target = {m: _parts(a) for m, a in value["target"].items()}
    for m in value["members"]:
        member = ConsumerMember(
            m["member_id"], m["instance_id"], m["rack_id"], m["client_id"], m["client_host"],
            tuple(m["topics"]), m["regex"], m["assignor"], int(m["rebalance_timeout_ms"]),
            int(m["epoch"]), int(m["previous_epoch"]), MemberState(m["state"]),
            _parts(m["assigned"]), _parts(m["revoking"]))
        member.owned = _parts(m["owned"])
        # A member gets a whole session (and revocation) from the restart to come back.
        member.session_deadline = now + session_s
        if member.state == MemberState.UNREVOKED_PARTITIONS:
            member.revoke_deadline = now + member.rebalance_timeout_ms / 1000
        group.members[member.member_id] = member
    return group
