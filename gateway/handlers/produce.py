"""Produce: queue each partition's batches on its broker's append stream, in request order (in
a cluster, the stream of the partition's leader).

``handle`` is deliberately not ``async``: it runs in the connection's read loop, so the appends
of one connection are queued in the order the client sent them (Kafka's ordering guarantee for
``max.in.flight > 1``), and returns an awaitable that collects the broker's replies.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import DropConnection, GatewayContext, current_produce_order
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from gateway.produce_order import Ticket, producer_of
from kelp import acl, recordbatch
from kelp.decompress import ZSTD
from registry import validation

VALID_ACKS = (0, 1, -1)
ZSTD_SINCE_VERSION = 7  # Produce v7 is the first that may carry zstd batches (KIP-110)
# Backpressure: when the broker takes longer than this to take a produce, the client is told
# to back off (throttle_time_ms) for the excess, and its connection is not read meanwhile.
THROTTLE_AFTER_S = 0.1
MAX_THROTTLE_S = 5.0


def throttle_for(waited_s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=min(max(waited_s - THROTTLE_AFTER_S, 0), MAX_THROTTLE_S))


def ready(ctx: GatewayContext, request: Request) -> bool:
    """Whether ``prepare`` has nothing to wait for (the common case: checked first, so a
    produce pays for the waiting machinery only when it must wait)."""
    if not all(broker.append_writable() for broker in ctx.data_brokers()):
        return False
    return ctx.registry_state is None or all(
        ctx.topic_settings.get(t.name) is not None for t in request.body.topic_data)


async def prepare(ctx: GatewayContext, request: Request) -> None:
    """Wait for room on the broker's append stream, and make sure the validation settings of
    every topic written are known (cached ~2 s)."""
    for broker in ctx.data_brokers():
        await broker.wait_append_writable()
    if ctx.registry_state is None:
        return
    stale = [t.name for t in request.body.topic_data if ctx.topic_settings.get(t.name) is None]
    if stale:
        await ctx.topic_settings.refresh(stale)


def _validate(ctx: GatewayContext, topic: str, data: bytes) -> tuple[int, str | None, Any]:
    """(error, message, record errors) for a partition's batches under schema validation."""
    state = ctx.registry_state
    if state is None:
        return ErrorCode.none, None, ()
    settings = ctx.topic_settings.get(topic)
    if settings is None:  # the broker could not tell us: refuse rather than let bad data in
        return (ErrorCode.request_timed_out,
                "schema validation settings of this topic are not known yet", ())
    if not settings.enabled:
        return ErrorCode.none, None, ()

    subject_ids: dict[str, set[int]] = {}  # per request: a batch has many records

    def known(schema_id: int, subject: str | None) -> bool:
        if subject is None:
            return schema_id in state.by_id
        if subject not in subject_ids:
            subject_ids[subject] = {s.id for s in state.versions(subject)}
        return schema_id in subject_ids[subject]

    failures = validation.check_records(topic, data, settings, known)
    if not failures:
        return ErrorCode.none, None, ()
    index, reason = failures[0]
    return (ErrorCode.invalid_record,
            f"record {index} rejected by schema validation: {reason}", failures)


@dataclass
class _Outcome:
    topic: str
    partition: int
    error: int
    message: str | None
    waiter: Any = None          # the broker's reply, when the batch was sent
    record_errors: Any = ()
    ticket: Ticket | None = None  # its place in the connection's produce order


def handle(ctx: GatewayContext, request: Request) -> Awaitable[Any]:
    body = request.body
    acks = body.acks
    outcomes: list[_Outcome] = []
    refused = _refusals(ctx, body)
    for topic in body.topic_data:
        for part in topic.partition_data:
            outcome = _Outcome(topic.name, part.index, ErrorCode.none, None)
            if topic.name in refused:
                outcome.error, outcome.message = refused[topic.name]
            elif acks not in VALID_ACKS:
                outcome.error = ErrorCode.invalid_required_acks
                outcome.message = f"acks must be 0, 1 or -1, not {acks}"
            elif not part.records:
                outcome.error, outcome.message = ErrorCode.corrupt_message, "no record batches"
            elif request.version < ZSTD_SINCE_VERSION and _uses_zstd(part.records):
                # KIP-110: a client that asks for an older version cannot be given zstd back,
                # so Kafka refuses it on the way in.
                outcome.error = ErrorCode.unsupported_compression_type
                outcome.message = (f"Produce requests with version < {ZSTD_SINCE_VERSION} may "
                                   "not use ZStandard compression")
            if outcome.error == ErrorCode.none:
                outcome.error, outcome.message, outcome.record_errors = _validate(
                    ctx, topic.name, part.records)
            if outcome.error == ErrorCode.none:
                _submit(ctx, outcome, part.records, acks)
            outcomes.append(outcome)
    return _collect(ctx, request, acks, outcomes, time.monotonic())


def _submit(ctx: GatewayContext, outcome: _Outcome, records: bytes, acks: int) -> None:
    """Queue the batches on the partition's leader, unless an idempotent producer's earlier
    batches must reach it first (``gateway.produce_order``)."""
    order = current_produce_order.get()
    producer = producer_of(records) if order is not None and acks != 0 else None
    now = time.monotonic()
    try:
        leader = ctx.leader(outcome.topic, outcome.partition)
        if producer is not None:
            admitted = order.admit(outcome.topic, outcome.partition, producer, leader, now)
            if isinstance(admitted, str):
                outcome.error, outcome.message = ErrorCode.not_leader_or_follower, admitted
                return
            outcome.ticket = admitted
        outcome.waiter = leader.submit_append(outcome.topic, outcome.partition, records, acks)
    except BrokerUnavailable as exc:
        outcome.error, outcome.message = ErrorCode.not_leader_or_follower, str(exc)
        if producer is not None:
            order.not_sent(outcome.topic, outcome.partition, producer, outcome.ticket, now)
            outcome.ticket = None


def _refusals(ctx: GatewayContext, body: Any) -> dict[str, tuple[ErrorCode, str]]:
    """Topics this principal may not write, with Kafka's error: WRITE on the topic (and on the
    transactional id, for a transactional produce). An internal topic (the registry's) is
    written only by the principals that own it, whatever the ACLs say."""
    security = ctx.security
    refused: dict[str, tuple[ErrorCode, str]] = {}
    if not security.settings.enabled:  # the hot path without an authorizer: nothing to check
        return refused
    transactional_id = getattr(body, "transactional_id", None)
    if transactional_id is not None and not security.allows(
            acl.Operation.WRITE, acl.ResourceType.TRANSACTIONAL_ID, transactional_id):
        return {t.name: (ErrorCode.transactional_id_authorization_failed,
                         "Transactional Id authorization failed.") for t in body.topic_data}
    for topic in body.topic_data:
        if not security.allows(acl.Operation.WRITE, acl.ResourceType.TOPIC, topic.name):
            refused[topic.name] = (ErrorCode.topic_authorization_failed,
                                   "Topic authorization failed.")
        elif topic.name in ctx.owned_topics and not ctx.owns(topic.name):
            refused[topic.name] = (ErrorCode.topic_authorization_failed,
                                   f"{topic.name} is internal: only its owner writes to it")
    return refused


async def _collect(ctx: GatewayContext, request: Request, acks: int,
                   outcomes: list[_Outcome], started: float) -> Any:
    if acks == 0:
        return None  # the protocol: no response at all
    response_type = messages.response_type(apis.ApiKey.PRODUCE, request.version)
    topic_type = messages.nested(response_type, "TopicProduceResponse")
    partition_type = messages.nested(response_type, "PartitionProduceResponse")
    by_topic: dict[str, list[Any]] = {}
    for outcome in outcomes:
        error, message, failures = outcome.error, outcome.message, outcome.record_errors
        base_offset, log_start, append_time = -1, -1, None
        if outcome.waiter is not None:
            try:
                reply = await outcome.waiter.wait()
                error, message = ErrorCode(reply.error_code), reply.error_message or None
                failures = [(e.batch_index, e.message) for e in reply.record_errors]
                base_offset, log_start = reply.base_offset, reply.log_start_offset
                if reply.log_append_time >= 0:
                    append_time = datetime.datetime.fromtimestamp(
                        reply.log_append_time / 1000, tz=datetime.UTC)
            except BrokerUnavailable as exc:
                error, message = ErrorCode.not_leader_or_follower, str(exc)
        if outcome.ticket is not None:
            order = current_produce_order.get()
            if order is not None:
                told = order.finished(outcome.ticket, error, time.monotonic())
                if told != error:
                    error, message = ErrorCode(told), ("an earlier batch of this producer "
                                                       "failed here: retry in order")
        record_errors = _record_errors(response_type, failures)
        by_topic.setdefault(outcome.topic, []).append(messages.build(
            partition_type, index=outcome.partition, error_code=error,
            base_offset=base_offset, log_append_time=append_time, log_start_offset=log_start,
            record_errors=record_errors, error_message=message))
    ctx.produces_answered += 1
    every = ctx.config.drop_produce_every
    if every and ctx.produces_answered % every == 0:
        ctx.produces_dropped += 1
        raise DropConnection("testing: dropping the connection after the append")
    return messages.build(
        response_type, throttle_time=throttle_for(time.monotonic() - started),
        responses=tuple(topic_type(name=name, partition_responses=tuple(parts))
                        for name, parts in by_topic.items()))


def _uses_zstd(records: bytes) -> bool:
    """Whether a batch in ``records`` is zstd-compressed (unreadable ones are left to the
    batch checks, which name what is wrong with them)."""
    try:
        return any(header.compression == ZSTD
                   for _position, header in recordbatch.iter_batches(records,
                                                                    verify_crc=False))
    except recordbatch.CorruptBatch:
        return False


def _record_errors(response_type: type, failures: Any) -> tuple[Any, ...]:
    if not failures:
        return ()
    try:
        error_type = messages.nested(response_type, "BatchIndexAndErrorMessage")
    except (AttributeError, KeyError):  # versions before 8 have no per-record errors
        return ()
    return tuple(error_type(batch_index=i, batch_index_error_message=m) for i, m in failures)
