"""Request handlers, one module per API family.

A handler is ``handle(ctx, request) -> Awaitable[response entity | None]``. It is *called* in
the connection's read loop, in request order, and may do synchronous work there (Produce queues
its appends, so a connection's appends reach the broker in the order they were sent); what it
returns is awaited in a task of its own, so slow requests (a long-poll fetch) never hold up the
others. ``None`` means no response (Produce with acks=0).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.context import GatewayContext
from gateway.handlers import (
    admin,
    api_versions,
    configs,
    consumer_groups,
    coordinator,
    fetch,
    groups,
    logs,
    metadata,
    partitions,
    produce,
    producers,
    quotas,
    security,
    transactions,
)
from gateway.kafka import apis
from gateway.kafka.apis import ApiKey
from gateway.kafka.connection import Request

Handler = Callable[[GatewayContext, Request], Awaitable[Any]]

HANDLERS: dict[int, Handler] = {
    ApiKey.API_VERSIONS: api_versions.handle,
    ApiKey.METADATA: metadata.handle,
    ApiKey.PRODUCE: produce.handle,
    ApiKey.FETCH: fetch.handle,
    ApiKey.LIST_OFFSETS: fetch.handle_list_offsets,
    ApiKey.CREATE_TOPICS: admin.handle_create_topics,
    ApiKey.DELETE_TOPICS: admin.handle_delete_topics,
    ApiKey.CREATE_PARTITIONS: admin.handle_create_partitions,
    ApiKey.DESCRIBE_CLUSTER: admin.handle_describe_cluster,
    ApiKey.OFFSET_FOR_LEADER_EPOCH: logs.handle_offset_for_leader_epoch,
    ApiKey.DESCRIBE_LOG_DIRS: logs.handle_describe_log_dirs,
    ApiKey.FIND_COORDINATOR: coordinator.handle,
    ApiKey.JOIN_GROUP: groups.handle_join,
    ApiKey.SYNC_GROUP: groups.handle_sync,
    ApiKey.HEARTBEAT: groups.handle_heartbeat,
    ApiKey.LEAVE_GROUP: groups.handle_leave,
    ApiKey.OFFSET_COMMIT: groups.handle_offset_commit,
    ApiKey.OFFSET_FETCH: groups.handle_offset_fetch,
    ApiKey.LIST_GROUPS: groups.handle_list_groups,
    ApiKey.DESCRIBE_GROUPS: groups.handle_describe_groups,
    ApiKey.DELETE_GROUPS: groups.handle_delete_groups,
    ApiKey.OFFSET_DELETE: groups.handle_offset_delete,
    ApiKey.DELETE_RECORDS: admin.handle_delete_records,
    ApiKey.INIT_PRODUCER_ID: producers.handle_init_producer_id,
    ApiKey.DESCRIBE_PRODUCERS: producers.handle_describe_producers,
    ApiKey.ADD_PARTITIONS_TO_TXN: transactions.handle_add_partitions,
    ApiKey.ADD_OFFSETS_TO_TXN: transactions.handle_add_offsets,
    ApiKey.TXN_OFFSET_COMMIT: transactions.handle_txn_offset_commit,
    ApiKey.END_TXN: transactions.handle_end_txn,
    ApiKey.DESCRIBE_TRANSACTIONS: transactions.handle_describe_transactions,
    ApiKey.LIST_TRANSACTIONS: transactions.handle_list_transactions,
    ApiKey.DESCRIBE_CONFIGS: configs.handle_describe,
    ApiKey.ALTER_CONFIGS: configs.handle_alter,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: configs.handle_incremental_alter,
    ApiKey.DESCRIBE_TOPIC_PARTITIONS: partitions.handle_describe_topic_partitions,
    ApiKey.ELECT_LEADERS: partitions.handle_elect_leaders,
    ApiKey.LIST_PARTITION_REASSIGNMENTS: partitions.handle_list_partition_reassignments,
    ApiKey.ALTER_PARTITION_REASSIGNMENTS: partitions.handle_alter_partition_reassignments,
    ApiKey.ALTER_REPLICA_LOG_DIRS: partitions.handle_alter_replica_log_dirs,
    ApiKey.DESCRIBE_QUORUM: partitions.handle_describe_quorum,
    ApiKey.DESCRIBE_CLIENT_QUOTAS: quotas.handle_describe,
    ApiKey.ALTER_CLIENT_QUOTAS: quotas.handle_alter,
    ApiKey.CONSUMER_GROUP_HEARTBEAT: consumer_groups.handle_heartbeat,
    ApiKey.CONSUMER_GROUP_DESCRIBE: consumer_groups.handle_describe,
    ApiKey.SASL_HANDSHAKE: security.handle_handshake,
    ApiKey.SASL_AUTHENTICATE: security.handle_authenticate,
    ApiKey.DESCRIBE_ACLS: security.handle_describe_acls,
    ApiKey.CREATE_ACLS: security.handle_create_acls,
    ApiKey.DELETE_ACLS: security.handle_delete_acls,
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: security.handle_describe_scram,
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: security.handle_alter_scram,
}
apis.require_handlers(HANDLERS)  # the table of served APIs says what must be here

# Work that must finish before a handler is called, still in the read loop so request order
# holds; it may wait (e.g. for a topic's schema-validation settings, usually cached).
# ``ready`` says (synchronously) whether there is anything to wait for.
@dataclass(frozen=True)
class Prepare:
    ready: Callable[[GatewayContext, Request], bool]
    wait: Callable[[GatewayContext, Request], Awaitable[None]]


PREPARE: dict[int, Prepare] = {
    ApiKey.PRODUCE: Prepare(produce.ready, produce.prepare),
}
