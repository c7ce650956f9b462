"""Transaction calls: protobuf in, ``TransactionCoordinator`` calls, protobuf out.

A mixin of ``broker.service.BrokerService``; the methods take the generated service's names.
A broker built without a coordinator (unit tests) answers them UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Awaitable

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from kio.schema.errors import ErrorCode

from broker.coordination import coordinated
from broker.log import now_ms
from broker.offsets import Committed
from broker.transactions import Txn, TxnError
from broker.txn_coordinator import TransactionCoordinator
from kelp.rpc.broker import v1 as pb


class TxnCalls:
    transactions: TransactionCoordinator | None

    @property
    def _txns(self) -> TransactionCoordinator:
        if self.transactions is None:
            raise GRPCError(Status.UNIMPLEMENTED, "this broker runs no transaction coordinator")
        return self.transactions

    @coordinated
    async def add_partitions_to_txn(self, r: pb.AddPartitionsToTxnRequest
                                    ) -> pb.AddPartitionsToTxnReply:
        wanted = [(t.topic, p) for t in r.topics for p in t.partitions]
        try:
            results = await self._txns.add_partitions(
                r.transactional_id, r.producer_id, r.producer_epoch, wanted,
                verify_only=r.verify_only)
        except TxnError as exc:
            return pb.AddPartitionsToTxnReply(error_code=exc.code)
        return pb.AddPartitionsToTxnReply(results=_results(results))

    @coordinated
    async def add_offsets_to_txn(self, r: pb.AddOffsetsToTxnRequest) -> pb.TxnReply:
        return await _reply(self._txns.add_offsets(r.transactional_id, r.producer_id,
                                                   r.producer_epoch, r.group_id))

    @coordinated
    async def txn_offset_commit(self, r: pb.TxnOffsetCommitRequest
                                ) -> pb.TxnOffsetCommitReply:
        now = now_ms()
        offsets = {(o.topic, o.partition): Committed(o.offset, o.leader_epoch, o.metadata, now)
                   for o in r.offsets}
        try:
            results = await self._txns.commit_offsets(
                r.transactional_id, r.group_id, r.producer_id, r.producer_epoch,
                r.generation_id, r.member_id, r.group_instance_id, offsets)
        except TxnError as exc:
            results = dict.fromkeys(offsets, exc.code)
        return pb.TxnOffsetCommitReply(results=_results(results))

    @coordinated
    async def end_txn(self, r: pb.EndTxnRequest) -> pb.TxnReply:
        return await _reply(self._txns.end_txn(r.transactional_id, r.producer_id,
                                               r.producer_epoch, r.committed))

    @coordinated
    async def describe_transactions(self, r: pb.DescribeTransactionsRequest
                                    ) -> pb.DescribeTransactionsReply:
        states = []
        for tid in r.transactional_ids:
            txn = self._txns.describe(tid)
            states.append(pb.TransactionState(
                transactional_id=tid, error_code=ErrorCode.transactional_id_not_found,
                producer_id=-1, producer_epoch=-1, start_ms=-1)
                if txn is None else _state(txn))
        return pb.DescribeTransactionsReply(transactions=states)

    @coordinated
    async def list_transactions(self, r: pb.ListTransactionsRequest
                                ) -> pb.ListTransactionsReply:
        listed = self._txns.list(set(r.states), set(r.producer_ids), r.min_duration_ms)
        return pb.ListTransactionsReply(transactions=[_state(txn) for txn in listed])


async def _reply(call: Awaitable[None]) -> pb.TxnReply:
    try:
        await call
    except TxnError as exc:
        return pb.TxnReply(error_code=exc.code, error_message=str(exc))
    return pb.TxnReply()


def _results(results: dict[tuple[str, int], ErrorCode]) -> list[pb.CommittedOffset]:
    return [pb.CommittedOffset(topic=t, partition=p, error_code=code)
            for (t, p), code in results.items()]


def _state(txn: Txn) -> pb.TransactionState:
    topics: dict[str, list[int]] = {}
    for topic, partition in sorted(txn.partitions):
        topics.setdefault(topic, []).append(partition)
    return pb.TransactionState(
        transactional_id=txn.transactional_id, state=txn.state.value,
        producer_id=txn.producer_id, producer_epoch=txn.producer_epoch,
        timeout_ms=txn.timeout_ms, start_ms=txn.start_ms,
        topics=[pb.TopicPartitions(topic=t, partitions=ps) for t, ps in topics.items()])
