"""The one table of the Kafka APIs kelp serves, and every per-version fact derived from it.

``_SERVED`` below is the only place a version range is written down. ApiVersions advertises
it, the connection refuses what it does not list, dispatch checks it has a handler for each
entry (``require_handlers``) and the codec picks kio's schema or a ``legacy`` codec by it.
Everything else comes from kio, which carries Kafka's message definitions: API names, the
versions it has schemas for, whether a version is flexible, and which request and response
header version it uses (ApiVersions answers with header v0 even when flexible; kio says so).

Advertise only what is implemented, in ranges that start low: librdkafka 2.0 enables features
only when an advertised range overlaps an old one (Produce 3 and Fetch 4 for v2 record batches,
ListOffsets 1 for offsets-for-times; see shared/CLIENTS.md). librdkafka also compresses with
gzip/snappy only when Produce overlaps v0, and with lz4 only when FindCoordinator v0 is served:
so Produce starts at 0 and FindCoordinator at 0. Versions below kio's first schema (Produce
v0-v2) are served by ``legacy``. Other floors are where kio's schemas start (Fetch 4,
ListOffsets 1, CreateTopics 2).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from enum import IntEnum

from kio.index import load_request_schema
from kio.schema.index import api_key_map, schema_name_map


class ApiKey(IntEnum):
    """The served APIs by name (a unit test checks the names are kio's)."""

    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    SASL_HANDSHAKE = 17
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    DELETE_RECORDS = 21
    INIT_PRODUCER_ID = 22
    OFFSET_FOR_LEADER_EPOCH = 23
    ADD_PARTITIONS_TO_TXN = 24
    ADD_OFFSETS_TO_TXN = 25
    END_TXN = 26
    TXN_OFFSET_COMMIT = 28
    DESCRIBE_ACLS = 29
    CREATE_ACLS = 30
    DELETE_ACLS = 31
    DESCRIBE_CONFIGS = 32
    ALTER_CONFIGS = 33
    ALTER_REPLICA_LOG_DIRS = 34
    DESCRIBE_LOG_DIRS = 35
    SASL_AUTHENTICATE = 36
    CREATE_PARTITIONS = 37
    DELETE_GROUPS = 42
    ELECT_LEADERS = 43
    INCREMENTAL_ALTER_CONFIGS = 44
    ALTER_PARTITION_REASSIGNMENTS = 45
    LIST_PARTITION_REASSIGNMENTS = 46
    OFFSET_DELETE = 47
    DESCRIBE_CLIENT_QUOTAS = 48
    ALTER_CLIENT_QUOTAS = 49
    DESCRIBE_USER_SCRAM_CREDENTIALS = 50
    ALTER_USER_SCRAM_CREDENTIALS = 51
    DESCRIBE_QUORUM = 55
    DESCRIBE_CLUSTER = 60
    DESCRIBE_PRODUCERS = 61
    DESCRIBE_TRANSACTIONS = 65
    LIST_TRANSACTIONS = 66
    CONSUMER_GROUP_HEARTBEAT = 68
    CONSUMER_GROUP_DESCRIBE = 69
    DESCRIBE_TOPIC_PARTITIONS = 75


# The versions kelp serves of each API, lowest to highest (inclusive).
_SERVED: dict[int, tuple[int, int]] = {
    ApiKey.PRODUCE: (0, 11),
    ApiKey.FETCH: (4, 17),
    ApiKey.LIST_OFFSETS: (1, 11),
    ApiKey.METADATA: (0, 13),
    ApiKey.OFFSET_COMMIT: (2, 9),
    ApiKey.OFFSET_FETCH: (1, 9),
    ApiKey.FIND_COORDINATOR: (0, 6),
    ApiKey.JOIN_GROUP: (0, 9),
    ApiKey.HEARTBEAT: (0, 4),
    ApiKey.LEAVE_GROUP: (0, 5),
    ApiKey.SYNC_GROUP: (0, 5),
    ApiKey.DESCRIBE_GROUPS: (0, 5),
    ApiKey.LIST_GROUPS: (0, 5),
    ApiKey.API_VERSIONS: (0, 4),
    ApiKey.SASL_HANDSHAKE: (0, 1),
    ApiKey.SASL_AUTHENTICATE: (0, 2),
    ApiKey.DESCRIBE_ACLS: (1, 3),
    ApiKey.CREATE_ACLS: (1, 3),
    ApiKey.DELETE_ACLS: (1, 3),
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: (0, 0),
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: (0, 0),
    ApiKey.CREATE_TOPICS: (2, 7),
    ApiKey.DELETE_TOPICS: (1, 6),
    ApiKey.DELETE_RECORDS: (0, 2),
    ApiKey.INIT_PRODUCER_ID: (0, 5),
    ApiKey.OFFSET_FOR_LEADER_EPOCH: (2, 4),
    # Transactions up to the KIP-890 part 1 versions: v5 of EndTxn/AddPartitionsToTxn/
    # TxnOffsetCommit and v4 of AddOffsetsToTxn mean part 2 (an epoch bump per transaction
    # with Produce v12), which kelp does not serve.
    ApiKey.ADD_PARTITIONS_TO_TXN: (0, 4),
    ApiKey.ADD_OFFSETS_TO_TXN: (0, 3),
    ApiKey.END_TXN: (0, 4),
    ApiKey.TXN_OFFSET_COMMIT: (0, 4),
    ApiKey.DESCRIBE_CONFIGS: (1, 4),
    ApiKey.ALTER_CONFIGS: (0, 2),
    ApiKey.ALTER_REPLICA_LOG_DIRS: (1, 2),
    ApiKey.DESCRIBE_LOG_DIRS: (1, 4),
    ApiKey.CREATE_PARTITIONS: (0, 3),
    ApiKey.DELETE_GROUPS: (0, 2),
    ApiKey.ELECT_LEADERS: (0, 2),
    ApiKey.INCREMENTAL_ALTER_CONFIGS: (0, 1),
    ApiKey.ALTER_PARTITION_REASSIGNMENTS: (0, 1),
    ApiKey.LIST_PARTITION_REASSIGNMENTS: (0, 0),
    ApiKey.OFFSET_DELETE: (0, 0),
    ApiKey.DESCRIBE_CLIENT_QUOTAS: (0, 1),
    ApiKey.ALTER_CLIENT_QUOTAS: (0, 1),
    ApiKey.DESCRIBE_QUORUM: (0, 2),
    ApiKey.DESCRIBE_CLUSTER: (0, 1),
    ApiKey.DESCRIBE_PRODUCERS: (0, 0),
    ApiKey.DESCRIBE_TRANSACTIONS: (0, 0),
    ApiKey.LIST_TRANSACTIONS: (0, 1),
    ApiKey.DESCRIBE_TOPIC_PARTITIONS: (0, 0),
    ApiKey.CONSUMER_GROUP_HEARTBEAT: (0, 1),
    ApiKey.CONSUMER_GROUP_DESCRIBE: (0, 1),
}

# Read-only view for ApiVersions, the fuzzer and tests: ``{api_key: (min, max)}``.
SUPPORTED: Mapping[int, tuple[int, int]] = _SERVED


def supports(api_key: int, version: int) -> bool:
    span = _SERVED.get(api_key)
    return span is not None and span[0] <= version <= span[1]


def api_name(api_key: int) -> str:
    """Kafka's name for any API key kio knows (served or not), for logs and errors."""
    name = api_key_map.get(api_key)
    return name.upper() if name is not None else f"api_key_{api_key}"


def _first_kio_version(api_key: int) -> int:
    return min(schema_name_map[api_key_map[api_key]])


def is_legacy(api_key: int, version: int) -> bool:
    """A served version older than kio's schemas: ``legacy`` encodes and decodes it."""
    return supports(api_key, version) and version < _first_kio_version(api_key)


def kio_version(api_key: int, version: int) -> int:
    """The kio schema version that carries ``version``: itself, or for a legacy version kio's
    first (its layout is a superset; ``legacy`` maps between the two)."""
    return max(version, _first_kio_version(api_key))


@functools.cache
def request_header_version(api_key: int, version: int) -> int:
    """1, or 2 (with tagged fields) for flexible versions, as kio's schema declares."""
    request_type = load_request_schema(api_key, kio_version(api_key, version))
    return int(request_type.__header_schema__.__version__)


def require_handlers(handlers: Mapping[int, object]) -> None:
    """Fail at import if dispatch and the table disagree: an advertised API without a
    handler would close connections at random; a handler for an unlisted one is dead."""
    missing = sorted(api_name(key) for key in _SERVED if key not in handlers)
    extra = sorted(api_name(key) for key in handlers if key not in _SERVED)
    if missing or extra:
        raise RuntimeError(f"API table and handlers disagree: no handler for {missing}, "
                           f"handlers for unserved {extra}")
