"""Transactions: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn,
DescribeTransactions and ListTransactions, answered by the broker's transaction coordinator.

Each checks Kafka's ACLs first (WRITE on the transactional id; WRITE on each topic added, READ
on the group and its topics for offsets; DESCRIBE on the ids described or listed) and maps
PRODUCER_FENCED to INVALID_PRODUCER_EPOCH for versions older than KIP-588's, as Kafka does.
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import COORDINATOR_UNREACHABLE, GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp import acl
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

NO_TIME = datetime.timedelta(0)
# AddPartitionsToTxn v4+ batches transactions; each is a broker call, so a request may not
# carry more than this many (INVALID_REQUEST for the whole request).
MAX_BATCHED_TRANSACTIONS = 1000
Op, Res = acl.Operation, acl.ResourceType
# The first version of each API that may answer PRODUCER_FENCED (KIP-588).
FENCED_SINCE = {apis.ApiKey.ADD_PARTITIONS_TO_TXN: 2, apis.ApiKey.ADD_OFFSETS_TO_TXN: 2,
                apis.ApiKey.END_TXN: 2, apis.ApiKey.TXN_OFFSET_COMMIT: 99}


def _code(code: int, request: Request) -> ErrorCode:
    error = ErrorCode(code)
    if error == ErrorCode.producer_fenced and request.version < FENCED_SINCE[request.api_key]:
        return ErrorCode.invalid_producer_epoch
    return error


async def _txn_call(ctx: GatewayContext, request: Request, route: Any, message: Any
                    ) -> ErrorCode:
    """The error of a broker transaction call answering a ``TxnReply``."""
    try:
        reply = await ctx.coordinator().call(route, message)
    except BrokerUnavailable:
        return COORDINATOR_UNREACHABLE
    return _code(reply.error_code, request)


def _may_write_id(ctx: GatewayContext, transactional_id: str) -> bool:
    return ctx.security.allows(Op.WRITE, Res.TRANSACTIONAL_ID, transactional_id)


async def handle_add_partitions(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ADD_PARTITIONS_TO_TXN, request.version)
    topic_type = messages.nested(response_type, "AddPartitionsToTxnTopicResult")
    partition_type = messages.nested(response_type, "AddPartitionsToTxnPartitionResult")

    async def one(transactional_id: str, producer_id: int, epoch: int, topics: Any,
                  verify_only: bool) -> tuple[Any, ...]:
        wanted = [(t.name, p) for t in topics for p in t.partitions]
        results: dict[tuple[str, int], ErrorCode]
        if not _may_write_id(ctx, transactional_id):
            results = dict.fromkeys(wanted, ErrorCode.transactional_id_authorization_failed)
        elif denied := {t.name for t in topics
                        if not ctx.security.allows(Op.WRITE, Res.TOPIC, t.name)}:
            results = {tp: ErrorCode.topic_authorization_failed if tp[0] in denied
                       else ErrorCode.operation_not_attempted for tp in wanted}
        else:
            try:
                reply = await ctx.coordinator().call(BROKER.add_partitions_to_txn,
                                              pb.AddPartitionsToTxnRequest(
                    transactional_id=transactional_id, producer_id=producer_id,
                    producer_epoch=epoch, verify_only=verify_only,
                    topics=[pb.TopicPartitions(topic=t.name, partitions=list(t.partitions))
                            for t in topics]))
                if reply.error_code:
                    results = dict.fromkeys(wanted, _code(reply.error_code, request))
                else:
                    results = {(r.topic, r.partition): ErrorCode(r.error_code)
                               for r in reply.results}
            except BrokerUnavailable:
                results = dict.fromkeys(wanted, COORDINATOR_UNREACHABLE)
        by_topic: dict[str, list[Any]] = {}
        for (topic, partition), code in results.items():
            by_topic.setdefault(topic, []).append(partition_type(
                partition_index=partition, partition_error_code=code))
        return tuple(topic_type(name=name, results_by_partition=tuple(parts))
                     for name, parts in by_topic.items())

    if hasattr(body, "transactions"):  # v4+: a batch of transactions (KIP-890)
        result_type = messages.nested(response_type, "AddPartitionsToTxnResult")
        if len(body.transactions) > MAX_BATCHED_TRANSACTIONS:
            return response_type(throttle_time=NO_TIME, error_code=ErrorCode.invalid_request,
                                 results_by_transaction=())
        results = []
        for t in body.transactions:
            results.append(result_type(transactional_id=t.transactional_id, topic_results=await one(
                t.transactional_id, t.producer_id, t.producer_epoch, t.topics, t.verify_only)))
        return response_type(throttle_time=NO_TIME, error_code=ErrorCode.none,
                             results_by_transaction=tuple(results))
    return response_type(throttle_time=NO_TIME, results_by_topic_v3_and_below=await one(
        body.v3_and_below_transactional_id, body.v3_and_below_producer_id,
        body.v3_and_below_producer_epoch, body.v3_and_below_topics, False))


async def handle_add_offsets(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ADD_OFFSETS_TO_TXN, request.version)
    if not _may_write_id(ctx, body.transactional_id):
        error = ErrorCode.transactional_id_authorization_failed
    elif not ctx.security.allows(Op.READ, Res.GROUP, body.group_id):
        error = ErrorCode.group_authorization_failed
    else:
        error = await _txn_call(ctx, request, BROKER.add_offsets_to_txn,
                                pb.AddOffsetsToTxnRequest(
            transactional_id=body.transactional_id, producer_id=body.producer_id,
            producer_epoch=body.producer_epoch, group_id=body.group_id))
    return response_type(throttle_time=NO_TIME, error_code=error)


async def handle_txn_offset_commit(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.TXN_OFFSET_COMMIT, request.version)
    topic_type = messages.nested(response_type, "TxnOffsetCommitResponseTopic")
    partition_type = messages.nested(response_type, "TxnOffsetCommitResponsePartition")
    wanted = [(t.name, p.partition_index) for t in body.topics for p in t.partitions]
    results: dict[tuple[str, int], ErrorCode] = {}
    if not _may_write_id(ctx, body.transactional_id):
        results = dict.fromkeys(wanted, ErrorCode.transactional_id_authorization_failed)
    elif not ctx.security.allows(Op.READ, Res.GROUP, body.group_id):
        results = dict.fromkeys(wanted, ErrorCode.group_authorization_failed)
    else:
        offsets = []
        for t in body.topics:
            allowed = ctx.security.allows(Op.READ, Res.TOPIC, t.name)
            for p in t.partitions:
                if not allowed:
                    results[(t.name, p.partition_index)] = ErrorCode.topic_authorization_failed
                    continue
                offsets.append(pb.CommittedOffset(
                    topic=t.name, partition=p.partition_index, offset=p.committed_offset,
                    leader_epoch=getattr(p, "committed_leader_epoch", -1),
                    metadata=p.committed_metadata))
        if offsets:
            try:
                reply = await ctx.coordinator().call(
                    BROKER.txn_offset_commit, pb.TxnOffsetCommitRequest(
                        transactional_id=body.transactional_id, group_id=body.group_id,
                        producer_id=body.producer_id, producer_epoch=body.producer_epoch,
                        generation_id=getattr(body, "generation_id", -1),
                        member_id=getattr(body, "member_id", ""),
                        group_instance_id=getattr(body, "group_instance_id", None),
                        offsets=offsets))
                results.update({(r.topic, r.partition): _code(r.error_code, request)
                                for r in reply.results})
            except BrokerUnavailable:
                results.update({(o.topic, o.partition): COORDINATOR_UNREACHABLE
                                for o in offsets})
    by_topic: dict[str, list[Any]] = {}
    for (topic, partition), code in results.items():
        by_topic.setdefault(topic, []).append(partition_type(partition_index=partition,
                                                             error_code=code))
    return response_type(throttle_time=NO_TIME, topics=tuple(
        topic_type(name=name, partitions=tuple(parts)) for name, parts in by_topic.items()))


async def handle_end_txn(ctx: GatewayContext, request: Request) -> Any:
    """EndTxn (WRITE on the id is checked for the whole request in ``gateway.access``)."""
    body = request.body
    response_type = messages.response_type(apis.ApiKey.END_TXN, request.version)
    error = await _txn_call(ctx, request, BROKER.end_txn, pb.EndTxnRequest(
        transactional_id=body.transactional_id, producer_id=body.producer_id,
        producer_epoch=body.producer_epoch, committed=body.committed))
    return response_type(throttle_time=NO_TIME, error_code=error)


def _start_time(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)


async def handle_describe_transactions(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.DESCRIBE_TRANSACTIONS, request.version)
    state_type = messages.nested(response_type, "TransactionState")
    topic_type = messages.nested(response_type, "TopicData")
    ids = list(dict.fromkeys(body.transactional_ids))
    allowed = [tid for tid in ids if ctx.security.allows(Op.DESCRIBE, Res.TRANSACTIONAL_ID, tid)]
    found: dict[str, pb.TransactionState] = {}
    try:
        if allowed:
            reply = await ctx.coordinator().call(BROKER.describe_transactions,
                                          pb.DescribeTransactionsRequest(
                                              transactional_ids=allowed))
            found = {t.transactional_id: t for t in reply.transactions}
    except BrokerUnavailable:
        pass

    def state(tid: str) -> Any:
        got = found.get(tid)
        if got is None:
            code = (ErrorCode.transactional_id_authorization_failed if tid not in allowed
                    else COORDINATOR_UNREACHABLE)
            got = pb.TransactionState(transactional_id=tid, error_code=code, producer_id=-1,
                                      producer_epoch=-1, start_ms=-1)
        # Kafka leaves out the topics the principal may not DESCRIBE.
        return state_type(
            error_code=ErrorCode(got.error_code), transactional_id=tid,
            transaction_state=got.state, transaction_timeout=datetime.timedelta(
                milliseconds=got.timeout_ms), transaction_start_time=_start_time(got.start_ms),
            producer_id=got.producer_id, producer_epoch=got.producer_epoch,
            topics=tuple(topic_type(topic=t.topic, partitions=tuple(t.partitions))
                         for t in got.topics
                         if ctx.security.allows(Op.DESCRIBE, Res.TOPIC, t.topic)))

    return response_type(throttle_time=NO_TIME, transaction_states=tuple(map(state, ids)))


async def handle_list_transactions(ctx: GatewayContext, request: Request) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.LIST_TRANSACTIONS, request.version)
    state_type = messages.nested(response_type, "TransactionState")
    known = {"Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit",
             "CompleteAbort", "Dead", "PrepareEpochFence"}
    unknown = tuple(s for s in body.state_filters if s not in known)
    error, listed = ErrorCode.none, []
    try:
        reply = await ctx.coordinator().call(BROKER.list_transactions, pb.ListTransactionsRequest(
            states=list(body.state_filters), producer_ids=list(body.producer_id_filters),
            min_duration_ms=getattr(body, "duration_filter", -1)))
        listed = [t for t in reply.transactions
                  if ctx.security.allows(Op.DESCRIBE, Res.TRANSACTIONAL_ID, t.transactional_id)]
    except BrokerUnavailable:
        error = COORDINATOR_UNREACHABLE
    return response_type(throttle_time=NO_TIME, error_code=error, unknown_state_filters=unknown,
                         transaction_states=tuple(state_type(
                             transactional_id=t.transactional_id, producer_id=t.producer_id,
                             transaction_state=t.state) for t in listed))
