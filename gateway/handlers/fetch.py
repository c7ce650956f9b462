"""Fetch (long-poll on the broker) and ListOffsets.

Record batches come back from the broker byte for byte as stored and go to the client as they
are: never decoded, never rebuilt. When the broker shares the gateway's host, it answers with
where they lie in its segment files instead, and the response writer sends them from there
(``os.sendfile``, see gateway.segment_files). The response is framed by hand around them
(gateway.kafka.fetch_response). Fetch sessions are not kept: every response carries session
id 0, which tells clients to send full fetch requests (KIP-227's sessionless mode).
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from typing import Any

import trio
from kio.schema.errors import ErrorCode

from gateway import metrics, segment_files
from gateway.broker_client import BrokerClient, BrokerUnavailable
from gateway.context import GatewayContext, current_holds, current_output
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from gateway.memory import MIN_FETCH_GRANT, Output
from kelp import acl
from kelp.records import DEFAULT_FETCH_MAX_BYTES
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

READ, DESCRIBE, TOPIC = acl.Operation.READ, acl.Operation.DESCRIBE, acl.ResourceType.TOPIC
READ_COMMITTED = 1  # isolation_level


async def handle(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    by_id = messages.has_field(type(body.topics[0]) if body.topics else type(body), "topic_id")
    wanted: list[tuple[str, uuid.UUID | None, Any]] = []  # (name, id, partitions)
    unknown_ids: list[tuple[uuid.UUID, Any]] = []
    for topic in body.topics:
        if by_id:
            meta = await ctx.topic_by_id(topic.topic_id)
            if meta is None:
                unknown_ids.append((topic.topic_id, topic.partitions))
                continue
            wanted.append((meta.name, topic.topic_id, topic.partitions))
        else:
            wanted.append((topic.topic, None, topic.partitions))
    # Kafka: READ on the topic, else TOPIC_AUTHORIZATION_FAILED for its partitions.
    denied = [w for w in wanted if not ctx.security.allows(READ, TOPIC, w[0])]
    if denied:
        wanted = [w for w in wanted if w not in denied]

    results: dict[tuple[str, int], pb.FetchedPartition] = {}
    if any(parts for _name, _id, parts in wanted):
        output = current_output.get()
        async with output.fetch_turn if output is not None else contextlib.nullcontext():
            results = await _fetch_records(ctx, body, wanted, output)

    response_type = messages.response_type(apis.ApiKey.FETCH, request.version)
    topic_type = messages.nested(response_type, "FetchableTopicResponse")
    partition_type = messages.nested(response_type, "PartitionData")
    aborted_type = messages.nested(response_type, "AbortedTransaction")
    committed_only = int(getattr(body, "isolation_level", 0)) == READ_COMMITTED

    def partition_data(index: int, found: pb.FetchedPartition | None,
                       missing_error: ErrorCode) -> Any:
        if found is None:
            # Empty records, not null: Kafka sends empty ones, and librdkafka refuses a
            # null record set as a malformed response.
            return messages.build(partition_type, partition_index=index, error_code=missing_error,
                                  high_watermark=-1, aborted_transactions=None, records=b"")
        return messages.build(
            partition_type, partition_index=index, error_code=ErrorCode(found.error_code),
            high_watermark=found.high_watermark, last_stable_offset=found.last_stable_offset,
            log_start_offset=found.log_start_offset, aborted_transactions=tuple(
                aborted_type(producer_id=txn.producer_id, first_offset=txn.first_offset)
                for txn in found.aborted) if committed_only else None,
            preferred_read_replica=-1, records=found.records)

    topics = [
        messages.build(topic_type, topic=name, topic_id=topic_id, partitions=tuple(
            partition_data(p.partition, results.get((name, p.partition)),
                           ErrorCode.not_leader_or_follower) for p in parts))
        for name, topic_id, parts in wanted
    ]
    topics += [
        messages.build(topic_type, topic=name, topic_id=topic_id, partitions=tuple(
            partition_data(p.partition, None, ErrorCode.topic_authorization_failed)
            for p in parts))
        for name, topic_id, parts in denied
    ]
    topics += [
        messages.build(topic_type, topic_id=topic_id, partitions=tuple(
            partition_data(p.partition, None, ErrorCode.unknown_topic_id) for p in parts))
        for topic_id, parts in unknown_ids
    ]
    return messages.build(response_type, throttle_time=datetime.timedelta(0),
                          error_code=ErrorCode.none, session_id=0, responses=tuple(topics))


async def _fetch_records(ctx: GatewayContext, body: Any,
                         wanted: list[tuple[str, uuid.UUID | None, Any]],
                         output: Output | None) -> dict[tuple[str, int], pb.FetchedPartition]:
    """Ask the broker for records, within this connection's and the gateway's memory bounds.

    A connection whose earlier responses are still unwritten is not served until they are
    (its client stopped reading); the bytes asked for come out of the gateway-wide fetch pool
    and stay taken until this response is written (see gateway.memory).
    """
    if output is not None:
        await output.wait_drained()
    wanted_bytes = body.max_bytes if body.max_bytes > 0 else DEFAULT_FETCH_MAX_BYTES
    request = pb.FetchRequest(
        partitions=[pb.FetchPartition(topic=name, partition=p.partition, offset=p.fetch_offset,
                                      max_bytes=p.partition_max_bytes)
                    for name, _id, parts in wanted for p in parts],
        max_wait_ms=int(body.max_wait.total_seconds() * 1000),
        min_bytes=body.min_bytes, max_bytes=wanted_bytes,
        isolation_level=int(getattr(body, "isolation_level", 0)),
        # One broker on this host: records may come as segment-file ranges (os.sendfile).
        file_ranges=ctx.router is None and ctx.broker.reads_files)
    if ctx.router is None:
        # A consumer that has read everything waits here, not on the broker
        # (gateway.idle_polls), and takes no fetch memory for it: its answer is empty.
        idle = await ctx.idle_polls.answer(request)
        if idle is not None:
            return idle
    granted = ctx.fetch_pool.grant(wanted_bytes, MIN_FETCH_GRANT)
    holds = current_holds.get()
    if holds is not None:
        holds.append((ctx.fetch_pool, granted))
    request.max_bytes = granted
    for part in request.partitions:
        part.max_bytes = min(part.max_bytes, granted)
    try:
        if ctx.router is not None:
            return await _fetch_from_leaders(ctx, request)
        reply = await ctx.broker.fetch(request)
        results = {(r.topic, r.partition): r for r in reply.partitions}
        ctx.idle_polls.note(request, results)
        if request.file_ranges:
            await _open_files(ctx, request, results)
        return results
    except BrokerUnavailable:
        return {}  # every partition answers NOT_LEADER_OR_FOLLOWER; clients retry
    finally:
        if holds is None:
            ctx.fetch_pool.release(granted)


async def _open_files(ctx: GatewayContext, request: pb.FetchRequest,
                      results: dict[tuple[str, int], pb.FetchedPartition]) -> None:
    """Open the segment-file range each partition's records came as; the records are then
    that open range (``segment_files.FileSlice``, or bytes when small), which the response
    writer sends with os.sendfile. Ranges that cannot be opened as the broker named them
    are fetched again as bytes, without waiting."""
    missed: set[tuple[str, int]] = set()
    opened = kept = 0
    for key, found in results.items():
        if found.file is None:
            continue
        keep_open = kept < segment_files.MAX_OPEN_PER_RESPONSE
        piece = segment_files.open_range(found.file, keep_open=keep_open)
        kept += isinstance(piece, segment_files.FileSlice)
        if piece is None:
            missed.add(key)
            continue
        # From here these records are gateway-private: bytes or an open file range.
        found.records = piece
        found.file = None
        opened += len(piece)
    if opened or missed:
        ctx.broker.note_file_ranges(opened=not missed)
        metrics.FETCH_FILE_BYTES.inc(opened)
    if not missed:
        return
    retry = pb.FetchRequest(
        partitions=[p for p in request.partitions if (p.topic, p.partition) in missed],
        max_wait_ms=0, min_bytes=0, max_bytes=max(request.max_bytes - opened, 1),
        isolation_level=request.isolation_level)
    reply = await ctx.broker.fetch(retry)
    results.update({(r.topic, r.partition): r for r in reply.partitions})


async def _fetch_from_leaders(ctx: GatewayContext, request: pb.FetchRequest
                              ) -> dict[tuple[str, int], pb.FetchedPartition]:
    """A cluster's fetch: one per leader broker, in parallel, sharing the byte budget. The
    first to come back with records (or an error) ends the others' long polls, which are then
    asked again without waiting, so the client gets what every leader has now."""
    groups: dict[BrokerClient, list[pb.FetchPartition]] = {}
    for part in request.partitions:
        try:
            groups.setdefault(ctx.leader(part.topic, part.partition), []).append(part)
        except BrokerUnavailable:
            continue  # answered NOT_LEADER_OR_FOLLOWER: the client refreshes its metadata
    if not groups:
        return {}
    share = max(request.max_bytes // len(groups), 1)
    results: dict[tuple[str, int], pb.FetchedPartition] = {}

    async def fetch_one(broker: BrokerClient, parts: list[pb.FetchPartition], wait_ms: int,
                        done: trio.CancelScope | None) -> None:
        try:
            # Never waiting for a dead leader to come back: its partitions are answered
            # NOT_LEADER_OR_FOLLOWER now, so the client looks for the new leader, and the
            # other leaders' records go out (a leader lost while this fetch was in flight
            # held the whole response for the reconnection wait, 10 s).
            reply = await broker.fetch(pb.FetchRequest(
                partitions=parts, max_wait_ms=wait_ms, min_bytes=request.min_bytes,
                max_bytes=share, isolation_level=request.isolation_level),
                wait_connected=False)
        except BrokerUnavailable:
            return
        for found in reply.partitions:
            results[(found.topic, found.partition)] = found
        if done is not None and any(f.records or f.error_code for f in reply.partitions):
            done.cancel()

    async with trio.open_nursery() as nursery:
        for broker, parts in groups.items():
            nursery.start_soon(fetch_one, broker, parts, request.max_wait_ms,
                               nursery.cancel_scope)
    unanswered = {broker: [p for p in parts if (p.topic, p.partition) not in results]
                  for broker, parts in groups.items()}
    async with trio.open_nursery() as nursery:
        for broker, parts in unanswered.items():
            if parts and len(parts) < len(request.partitions):
                nursery.start_soon(fetch_one, broker, parts, 0, None)
    return results


async def handle_list_offsets(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    allowed = {t.name for t in body.topics if ctx.security.allows(DESCRIBE, TOPIC, t.name)}
    isolation = int(getattr(body, "isolation_level", 0))  # v2+
    queries = [pb.ListOffsetsRequestQuery(
        partition=pb.PartitionRef(topic=t.name, partition=p.partition_index),
        timestamp=p.timestamp, isolation_level=isolation)
        for t in body.topics if t.name in allowed for p in t.partitions]
    answers: dict[tuple[str, int], pb.ListOffsetsReplyAnswer] = {}
    by_broker: dict[BrokerClient, list[pb.ListOffsetsRequestQuery]] = {}
    for query in queries:
        with contextlib.suppress(BrokerUnavailable):  # no leader: NOT_LEADER_OR_FOLLOWER
            by_broker.setdefault(ctx.leader(query.partition.topic, query.partition.partition),
                                 []).append(query)

    async def ask(broker: BrokerClient, asked: list[pb.ListOffsetsRequestQuery]) -> None:
        with contextlib.suppress(BrokerUnavailable):
            reply = await broker.call(BROKER.list_offsets, pb.ListOffsetsRequest(queries=asked))
            answers.update({(a.partition.topic, a.partition.partition): a
                            for a in reply.answers})

    async with trio.open_nursery() as nursery:
        for broker, asked in by_broker.items():
            nursery.start_soon(ask, broker, asked)

    response_type = messages.response_type(apis.ApiKey.LIST_OFFSETS, request.version)
    topic_type = messages.nested(response_type, "ListOffsetsTopicResponse")
    partition_type = messages.nested(response_type, "ListOffsetsPartitionResponse")

    def answer(name: str, index: int) -> Any:
        if name not in allowed:
            return messages.build(partition_type, partition_index=index,
                                  error_code=ErrorCode.topic_authorization_failed)
        found = answers.get((name, index))
        if found is None:
            return messages.build(partition_type, partition_index=index,
                                  error_code=ErrorCode.not_leader_or_follower)
        return messages.build(partition_type, partition_index=index,
                              error_code=ErrorCode(found.error_code), timestamp=found.timestamp,
                              offset=found.offset, leader_epoch=0)

    return messages.build(
        response_type, throttle_time=datetime.timedelta(0),
        topics=tuple(topic_type(name=t.name, partitions=tuple(
            answer(t.name, p.partition_index) for p in t.partitions)) for t in body.topics))
