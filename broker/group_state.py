"""The classic group protocol's state: groups, members, and what a JoinGroup returns.

Plain data plus the pure rules over it (protocol choice, a consumer group's subscribed topics);
the `broker.groups.Coordinator` moves groups through their states. See ``broker.groups`` for
the state machine.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import trio
from kio.schema.errors import ErrorCode

MIN_SESSION_TIMEOUT_MS = 6_000
MAX_SESSION_TIMEOUT_MS = 1_800_000
MAX_METADATA_BYTES = 4096
# Kafka bounds group ids only by the protocol's int16 string length; kelp keeps each group in
# memory and in the offsets log's keys, so it refuses longer ones with INVALID_GROUP_ID.
MAX_GROUP_ID_LENGTH = 1024
# Kafka's classic groups are unbounded by default (group.max.size); kelp keeps every member's
# metadata in memory and in the group file, so it caps them as KIP-848 groups are capped.
MAX_MEMBERS = 1000


def valid_group_id(group_id: str) -> bool:
    return 0 < len(group_id) <= MAX_GROUP_ID_LENGTH


class State(Enum):
    EMPTY = "Empty"
    PREPARING = "PreparingRebalance"
    COMPLETING = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


class GroupError(Exception):
    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.name)
        self.code = code


@dataclass
class JoinResult:
    error: ErrorCode
    generation: int = -1
    protocol_type: str = ""
    protocol_name: str = ""
    leader: str = ""
    member_id: str = ""
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)


class Parked:
    """A JoinGroup or SyncGroup waiting for the rebalance to reach it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: object = None

    def finish(self, result: object) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_s: float
    rebalance_timeout_s: float
    protocols: list[tuple[str, bytes]]
    deadline: float = 0.0
    assignment: bytes = b""
    joined: bool = False
    join: Parked | None = None
    sync: Parked | None = None

    def metadata_for(self, protocol: str) -> bytes:
        return next((meta for name, meta in self.protocols if name == protocol), b"")


@dataclass
class Group:
    group_id: str
    state: State = State.EMPTY
    protocol_type: str = ""
    protocol_name: str = ""
    generation: int = 0
    leader: str = ""
    members: dict[str, Member] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)  # member ids handed out (v4+)
    static: dict[str, str] = field(default_factory=dict)  # group.instance.id -> member id
    rebalance_deadline: float = 0.0
    initial_delay_until: float = 0.0
    empty_since_ms: int = 0


def common_protocols(group: Group, protocols: Iterable[tuple[str, bytes]]) -> set[str]:
    """The protocol names ``protocols`` shares with every member of ``group``."""
    common = {name for name, _ in protocols}
    for member in group.members.values():
        common &= {name for name, _ in member.protocols}
    return common


def choose_protocol(group: Group) -> str:
    """The protocol every member supports that most members prefer (Kafka's vote)."""
    common = set.intersection(*({n for n, _ in m.protocols} for m in group.members.values()))
    votes: dict[str, int] = {}
    for member in group.members.values():
        choice = next(n for n, _ in member.protocols if n in common)
        votes[choice] = votes.get(choice, 0) + 1
    return max(votes, key=lambda name: votes[name])


def subscribed_topics(group: Group) -> set[str]:
    """Topics named in consumer-protocol subscriptions (version, [topic], ...)."""
    if group.protocol_type != "consumer" or group.state == State.EMPTY:
        return set()
    topics: set[str] = set()
    for member in group.members.values():
        data = member.metadata_for(group.protocol_name)
        try:
            (count,) = struct.unpack_from(">i", data, 2)
            position = 6
            for _ in range(count):
                (length,) = struct.unpack_from(">h", data, position)
                topics.add(data[position + 2 : position + 2 + length].decode())
                position += 2 + length
        except (struct.error, UnicodeDecodeError):
            continue
    return topics


def group_to_json(group: Group) -> dict[str, object] | None:
    """What a restart keeps of a classic group: its last stable generation, as Kafka's
    GroupMetadata record (None when there is no member to keep). A rebalance in progress is
    not kept: its members learn of the lost generation by ILLEGAL_GENERATION and rejoin."""
    if group.state != State.STABLE or not group.members:
        return None
    return {
        "protocol_type": group.protocol_type, "protocol_name": group.protocol_name,
        "generation": group.generation, "leader": group.leader,
        "members": [{
            "member_id": m.member_id, "instance_id": m.instance_id, "client_id": m.client_id,
            "client_host": m.client_host, "session_timeout_s": m.session_timeout_s,
            "rebalance_timeout_s": m.rebalance_timeout_s,
            "protocols": [[name, _b64(meta)] for name, meta in m.protocols],
            "assignment": _b64(m.assignment)} for m in group.members.values()],
    }


def group_from_json(group_id: str, value: object, now: float) -> Group:
    """A group as ``group_to_json`` kept it: Stable, every member given a whole session from
    ``now`` to heartbeat again (raises KeyError, ValueError or TypeError if damaged)."""
    if not isinstance(value, dict):
        raise TypeError("not an object")
    group = Group(group_id, State.STABLE, str(value["protocol_type"]),
                  str(value["protocol_name"]), int(value["generation"]), str(value["leader"]))
    for m in value["members"]:
        instance_id = None if m["instance_id"] is None else str(m["instance_id"])
        member = Member(str(m["member_id"]), instance_id, str(m["client_id"]),
                        str(m["client_host"]), float(m["session_timeout_s"]),
                        float(m["rebalance_timeout_s"]),
                        [(str(name), base64.b64decode(meta, validate=True))
                         for name, meta in m["protocols"]],
                        assignment=base64.b64decode(m["assignment"], validate=True))
        member.deadline = now + member.session_timeout_s
        group.members[member.member_id] = member
        if instance_id is not None:
            group.static[instance_id] = member.member_id
    if group.leader not in group.members or not group.protocol_name:
        raise ValueError("leader or protocol missing")
    return group


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
