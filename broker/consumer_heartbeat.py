"""What one KIP-848 ConsumerGroupHeartbeat says, what it is answered, and the checks Kafka
makes of it before looking at any group (``GroupMetadataManager``'s request validation)."""

from __future__ import annotations

from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from broker import consumer_group as cg
from broker.consumer_group import Assignment, HeartbeatError


@dataclass
class Heartbeat:
    """One ConsumerGroupHeartbeat, as the member sent it (None: not sent, unchanged)."""

    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str | None = None
    rack_id: str | None = None
    rebalance_timeout_ms: int = -1
    subscribed_topic_names: list[str] | None = None
    subscribed_topic_regex: str | None = None
    server_assignor: str | None = None
    owned: Assignment | None = None
    client_id: str = ""
    client_host: str = ""


@dataclass
class HeartbeatResult:
    error: ErrorCode = ErrorCode.none
    message: str = ""
    member_id: str = ""
    member_epoch: int = 0
    heartbeat_interval_ms: int = 0
    assignment: Assignment | None = None  # None: unchanged, not sent


MAX_TOPIC_NAME_LENGTH = 249  # Kafka's
MAX_ID_LENGTH = 255  # an instance or rack id, kept for every member and on disk


def check_heartbeat(beat: Heartbeat) -> None:
    """INVALID_REQUEST (or UNSUPPORTED_ASSIGNOR) for what Kafka refuses, with its messages.
    Checked before the group is touched: an invalid join must not convert a classic group."""
    def invalid(message: str) -> HeartbeatError:
        return HeartbeatError(ErrorCode.invalid_request, message)

    if not beat.group_id:
        raise invalid("GroupId can't be empty.")
    if beat.instance_id == "":
        raise invalid("InstanceId can't be empty.")
    if beat.rack_id == "":
        raise invalid("RackId can't be empty.")
    if beat.member_epoch > 0 or beat.member_epoch == cg.LEAVE:
        if not beat.member_id:
            raise invalid("MemberId can't be empty.")
    elif beat.member_epoch == cg.JOIN:
        if beat.rebalance_timeout_ms == -1:
            raise invalid("RebalanceTimeoutMs must be provided in first request.")
        if beat.owned is None or beat.owned:
            raise invalid("TopicPartitions must be empty when (re-)joining.")
        if not beat.subscribed_topic_names and not beat.subscribed_topic_regex:
            raise invalid("SubscribedTopicNames or SubscribedTopicRegex must be set in "
                          "first request.")
    elif beat.member_epoch == cg.LEAVE_STATIC:
        if not beat.member_id:
            raise invalid("MemberId can't be empty.")
        if beat.instance_id is None:
            raise invalid("InstanceId can't be null.")
    else:
        raise invalid("MemberEpoch is invalid.")
    if beat.rebalance_timeout_ms < -1:
        raise invalid("RebalanceTimeoutMs can't be negative.")
    if (beat.subscribed_topic_names is not None
            and len(beat.subscribed_topic_names) > cg.MAX_SUBSCRIBED_TOPICS):
        raise invalid(f"More than {cg.MAX_SUBSCRIBED_TOPICS} SubscribedTopicNames.")
    if any(len(name) > MAX_TOPIC_NAME_LENGTH for name in beat.subscribed_topic_names or ()):
        # No topic can have such a name; kept, it would only cost memory and disk.
        raise invalid(f"A SubscribedTopicNames entry is longer than {MAX_TOPIC_NAME_LENGTH}.")
    if max(len(beat.instance_id or ""), len(beat.rack_id or "")) > MAX_ID_LENGTH:
        raise invalid(f"InstanceId and RackId are at most {MAX_ID_LENGTH} characters.")
    # A topic with no partitions listed counts too: each is kept.
    if beat.owned is not None and (sum(max(1, len(p)) for p in beat.owned.values())
                                   > cg.MAX_ASSIGNED_PARTITIONS):
        raise invalid(f"More than {cg.MAX_ASSIGNED_PARTITIONS} TopicPartitions.")
    if beat.subscribed_topic_regex:
        cg.check_regex(beat.subscribed_topic_regex)
    if beat.server_assignor is not None and beat.server_assignor not in cg.ASSIGNORS:
        raise HeartbeatError(ErrorCode.unsupported_assignor,
                             f"ServerAssignor {beat.server_assignor} is not supported. "
                             f"Supported assignors: {', '.join(cg.ASSIGNORS)}.")
