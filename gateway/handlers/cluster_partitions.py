"""ElectLeaders and the partition reassignment APIs in a cluster (the gateway's ``--etcd``):
asked of the gateway's broker, which writes them to etcd (``broker.partition_admin``)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from gateway.broker_client import BrokerUnavailable
from gateway.context import GatewayContext
from gateway.kafka import apis, messages
from gateway.kafka.connection import Request
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

Results = dict[tuple[str, int], pb.PartitionResult]
UNAVAILABLE = (ErrorCode.request_timed_out, "the broker did not answer")


def _by_partition(results: list[pb.PartitionResult]) -> Results:
    return {(r.partition.topic, r.partition.partition): r for r in results}


async def elect_leaders(ctx: GatewayContext, request: Request, election_type: int,
                        no_time: Any) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ELECT_LEADERS, request.version)
    result_type = messages.nested(response_type, "ReplicaElectionResult")
    partition_type = messages.nested(response_type, "PartitionResult")
    asked = None if body.topic_partitions is None else [
        (entry.topic, index) for entry in body.topic_partitions for index in entry.partitions]
    try:
        reply = await ctx.broker.call(BROKER.elect_leaders, pb.ElectLeadersRequest(
            partitions=[pb.PartitionRef(topic=t, partition=p) for t, p in asked or ()],
            election_type=election_type, all=asked is None))
        results = _by_partition(reply.results)
    except BrokerUnavailable:
        results = {}
    keys = list(results) if asked is None else list(dict.fromkeys(asked))
    by_topic: dict[str, list[Any]] = {}
    for topic, index in keys:
        found = results.get((topic, index))
        code, message = ((ErrorCode(found.error_code), found.error_message or None)
                         if found is not None else UNAVAILABLE)
        by_topic.setdefault(topic, []).append(partition_type(
            partition_id=index, error_code=code, error_message=message))
    return messages.build(response_type, throttle_time=no_time, error_code=ErrorCode.none,
                          replica_election_results=tuple(
                              result_type(topic=topic, partition_result=tuple(parts))
                              for topic, parts in by_topic.items()))


async def alter_reassignments(ctx: GatewayContext, request: Request, no_time: Any) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.ALTER_PARTITION_REASSIGNMENTS,
                                            request.version)
    topic_type = messages.nested(response_type, "ReassignableTopicResponse")
    partition_type = messages.nested(response_type, "ReassignablePartitionResponse")
    targets = [pb.ReassignPartitionsRequestTarget(
        partition=pb.PartitionRef(topic=t.name, partition=p.partition_index),
        replicas=list(p.replicas or ()), cancel=p.replicas is None)
        for t in body.topics for p in t.partitions]
    try:
        reply = await ctx.broker.call(BROKER.reassign_partitions,
                                      pb.ReassignPartitionsRequest(targets=targets))
        results = _by_partition(reply.results)
    except BrokerUnavailable:
        results = {}

    def result(name: str, index: int) -> Any:
        found = results.get((name, index))
        code, message = ((ErrorCode(found.error_code), found.error_message or None)
                         if found is not None else UNAVAILABLE)
        return partition_type(partition_index=index, error_code=code, error_message=message)

    return messages.build(
        response_type, throttle_time=no_time, error_code=ErrorCode.none, error_message=None,
        responses=tuple(topic_type(name=t.name, partitions=tuple(
            result(t.name, p.partition_index) for p in t.partitions)) for t in body.topics))


async def list_reassignments(ctx: GatewayContext, request: Request, no_time: Any) -> Any:
    body = request.body
    response_type = messages.response_type(apis.ApiKey.LIST_PARTITION_REASSIGNMENTS,
                                            request.version)
    topic_type = messages.nested(response_type, "OngoingTopicReassignment")
    partition_type = messages.nested(response_type, "OngoingPartitionReassignment")
    wanted = [] if body.topics is None else [
        pb.PartitionRef(topic=t.name, partition=index) for t in body.topics
        for index in t.partition_indexes]
    try:
        reply = await ctx.broker.call(BROKER.list_reassignments,
                                      pb.ListReassignmentsRequest(partitions=wanted))
    except BrokerUnavailable:
        return messages.build(response_type, throttle_time=no_time,
                              error_code=UNAVAILABLE[0], error_message=UNAVAILABLE[1],
                              topics=())
    by_topic: dict[str, list[Any]] = {}
    for ongoing in reply.reassignments:
        by_topic.setdefault(ongoing.partition.topic, []).append(partition_type(
            partition_index=ongoing.partition.partition, replicas=tuple(ongoing.replicas),
            adding_replicas=tuple(ongoing.adding), removing_replicas=tuple(ongoing.removing)))
    return messages.build(response_type, throttle_time=no_time, error_code=ErrorCode.none,
                          error_message=None, topics=tuple(
                              topic_type(name=name, partitions=tuple(parts))
                              for name, parts in by_topic.items()))
